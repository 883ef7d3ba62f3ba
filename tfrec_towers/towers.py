"""DSSM-style towers: per-feature encoders -> concat -> MLP -> (shared) projection -> L2 normalise.

Sharing between the two towers (``sharing``):
* ``none``: independent towers (the usual user/item case);
* ``projection`` (ADE-SPL): the last Dense layer is one layer used by both towers, which puts the
  two sides' outputs in one space while their encoders and hidden layers stay asymmetric;
* ``full`` (SDE): one tower for both sides, possible only when their features pair up with equal
  encoders (e.g. query text / document text); a candidate ``item_id`` left unpaired is not a tower
  input (it still identifies items for the catalog and accidental hits).

An ``id`` feature with ``embedding_dim: 0`` is never a tower input (see ``IdFeature``).
"""
from typing import List, Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras as keras

from tfrec_towers.config import SHARING
from tfrec_towers.features import spec as S
from tfrec_towers.features.encoders import EncoderFactory
from tfrec_towers.user_gate import UserGate



class Tower(keras.Model):
    """Features dict (extra keys ignored) -> [batch, output_dim] embedding.

    ``extra_inputs`` are layers called as ``layer(features, x)`` on the concatenated encodings x whose
    outputs join the MLP's input: the augmented vectors of dual augmented towers, the pseudo query
    vector of generative interaction. They are concatenated to x, or added to it where the layer's
    ``additive`` attribute is true.
    """

    def __init__(self, inputs: Sequence[Tuple[str, keras.layers.Layer]], hidden: keras.Sequential,
                 projection: keras.layers.Layer, normalize: bool = True,
                 extra_inputs: Sequence[keras.layers.Layer] = (), **kwargs):
        super().__init__(**kwargs)
        self.input_names_ = [name for name, _ in inputs]
        self.encoders = [encoder for _, encoder in inputs]
        self.hidden = hidden
        self.projection = projection
        self.normalize = normalize
        self.extra_inputs = list(extra_inputs)

    def encode(self, features, names: Optional[Sequence[str]] = None):
        """Concatenated encoder outputs of the tower's features (or of ``names`` among them)."""
        missing = [n for n in self.input_names_ if n not in features and (names is None or n in names)]
        if missing:
            raise KeyError(f"{self.name}: missing input feature(s) {missing}")
        return tf.concat([enc(features[n]) for n, enc in zip(self.input_names_, self.encoders)
                          if names is None or n in names], axis=-1)

    def call(self, features, training=False):
        x = self.encode(features)
        if self.extra_inputs:
            extra = [(getattr(layer, "additive", False), layer(features, x)) for layer in self.extra_inputs]
            x = tf.concat([tf.add_n([x] + [v for additive, v in extra if additive])]
                          + [v for additive, v in extra if not additive], axis=-1)
        x = self.projection(self.hidden(x, training=training), training=training)
        return tf.math.l2_normalize(x, axis=-1) if self.normalize else x


def mlp(hidden: Sequence[int], activation: str, dropout: float, name: str) -> keras.Sequential:
    layers: List[keras.layers.Layer] = []
    for width in hidden:
        layers.append(keras.layers.Dense(width, activation=activation))
        if dropout:
            layers.append(keras.layers.Dropout(dropout))
    return keras.Sequential(layers, name=name)


def build_towers(spec: "S.FeatureSpec", stats, hidden: Sequence[int] = (128,), output_dim: int = 64,
                 activation: str = "relu", dropout: float = 0.0, normalize: bool = True,
                 sharing: str = "none", user_gate=None, embedding_l2: float = 0.0) -> Tuple[Tower, Tower]:
    """Query and candidate towers from the spec. ``output_dim`` 0 means no projection layer.

    ``user_gate`` (``config.UserGateConfig``) makes the query tower SimpleX's (``UserGate`` in place of
    its hidden layers and projection); ``embedding_l2`` adds l2 * sum of squares of every looked-up
    embedding row, per example, to the model's losses (only the batch's rows get its gradient)."""
    if sharing not in SHARING:
        raise ValueError(f"sharing must be one of {SHARING}, got {sharing!r}")
    if user_gate is not None and sharing != "none":
        raise ValueError(f"model.user_gate builds the query tower on its own: it needs sharing 'none', got {sharing!r}")
    factory = EncoderFactory(spec, stats, embedding_l2)

    def projection(name: str) -> keras.layers.Layer:
        return keras.layers.Dense(output_dim, name=name) if output_dim else keras.layers.Lambda(lambda x: x, name=name)

    if sharing == "full":
        candidate = [f for f in spec.candidate if f.tower_input]
        if len(candidate) == len(spec.query) + 1:  # an unpaired item ID only identifies items
            candidate = [f for f in candidate if f.name != spec.item_id]
        S.check_shareable(spec.query, candidate)
        encoders = [factory.build(f) for f in spec.query]
        body, head = mlp(hidden, activation, dropout, "shared_mlp"), projection("shared_projection")
        return (Tower(list(zip([f.name for f in spec.query], encoders)), body, head, normalize, name="query_tower"),
                Tower(list(zip([f.name for f in candidate], encoders)), body, head, normalize,
                      name="candidate_tower"))

    shared_head: Optional[keras.layers.Layer] = projection("shared_projection") if sharing == "projection" else None
    towers = []
    for side in S.SIDES:
        features = [f for f in spec.side(side) if f.tower_input]
        inputs = [(f.name, factory.build(f)) for f in features]
        if not inputs:
            raise ValueError(f"the {side} tower has no input: every {side} feature is an identifier only "
                             "(id with embedding_dim 0)")
        if side == "query" and user_gate is not None:
            body, head = keras.Sequential([], name="query_mlp"), _user_gate(spec, inputs, user_gate, output_dim)
        else:
            body, head = mlp(hidden, activation, dropout, f"{side}_mlp"), shared_head or projection(f"{side}_projection")
        towers.append(Tower(inputs, body, head, normalize, name=f"{side}_tower"))
    return towers[0], towers[1]


def _user_gate(spec: "S.FeatureSpec", inputs, gate, output_dim: int) -> UserGate:
    """The ``UserGate`` over the query encodings, ``gate.id``'s columns found from the encoders' widths."""
    dummy = spec.dummy_batch()
    widths = [int(encoder(dummy[name]).shape[-1]) for name, encoder in inputs]
    names = [name for name, _ in inputs]
    if gate.id not in names or len(names) < 2:
        raise ValueError(f"model.user_gate.id must name a query feature used as a tower input beside at least one "
                         f"other (the history); query inputs: {names}, got {gate.id!r}")
    start = sum(widths[:names.index(gate.id)])
    stop = start + widths[names.index(gate.id)]
    candidate_width = output_dim or sum(f.embedding_dim for f in spec.candidate if f.tower_input)
    if candidate_width != stop - start:
        raise ValueError(f"model.user_gate: the user vector has the width of '{gate.id}''s embedding ({stop - start}), "
                         f"the candidate tower's output is {candidate_width}-d; they must be equal")
    return UserGate((start, stop), gate.weight, gate.learned, gate.dropout, name="user_gate")
