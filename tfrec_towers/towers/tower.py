"""DSSM-style towers: per-feature encoders -> concat -> MLP -> (shared) projection -> L2 normalise.

Sharing between the two towers (``sharing``):
* ``none``: independent towers (the usual user/item case);
* ``projection`` (ADE-SPL): the last Dense layer is one layer used by both towers, which puts the
  two sides' outputs in one space while their encoders and hidden layers stay asymmetric;
* ``full`` (SDE): one tower for both sides, possible only when their features pair up with equal
  encoders (e.g. query text / document text); a candidate ``item_id`` left unpaired is not a tower
  input (it still identifies items for the catalog and accidental hits).

An ``id`` feature with ``embedding_dim: 0`` is never a tower input (see ``IdFeature``).

Extensions (dual augmented towers, generative interaction) are built into the towers, not added
afterwards: ``build_towers(..., extensions=f)`` calls ``f(query_encodings, candidate_encodings)`` once
the encoders exist and puts the ``ExtraInput`` layers of the ``TowerExtensions`` it returns into each
tower as it creates it. A built tower is not changed from outside.
"""
import dataclasses
from typing import Callable, List, Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras as keras

from tfrec_towers.config import SHARING
from tfrec_towers.features import spec as S
from tfrec_towers.features.encoders import EncoderFactory
from tfrec_towers.towers.user_gate import UserGate


__all__ = ["Encodings", "ExtensionsFn", "ExtraInput", "Tower", "TowerExtensions", "build_towers", "mlp"]


class Encodings:
    """A tower's feature encoders as one function: features -> the concatenation of their encodings, of
    every input of the tower or of ``names`` among them (``encodings(features, names)``).

    A plain holder, not a layer: the tower owns (tracks) the encoders; an extension or auxiliary loss that
    needs a side's encodings (the reconstruction target) is given this object. The encodings of
    ``constants`` are read as constants (``tf.stop_gradient``): their encoders get no gradient from here."""

    def __init__(self, inputs: Sequence[Tuple[str, keras.layers.Layer]], owner: str, constants: Sequence[str] = ()):
        self.names = [name for name, _ in inputs]
        self.encoders = [encoder for _, encoder in inputs]
        self.owner = owner
        self.constants = frozenset(constants)

    def __call__(self, features, names: Optional[Sequence[str]] = None):
        missing = [n for n in self.names if n not in features and (names is None or n in names)]
        if missing:
            raise KeyError(f"{self.owner}: missing input feature(s) {missing}")
        return tf.concat([tf.stop_gradient(enc(features[n])) if n in self.constants else enc(features[n])
                          for n, enc in zip(self.names, self.encoders) if names is None or n in names], axis=-1)

    def select(self, names: Sequence[str]) -> "Encodings":
        """The encodings of ``names`` (tower inputs) alone, in the tower's order."""
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise KeyError(f"{self.owner}: not an input feature: {unknown}")
        return Encodings([(n, e) for n, e in zip(self.names, self.encoders) if n in names], self.owner,
                         self.constants & set(names))

    def width(self, features, names: Optional[Sequence[str]] = None) -> int:
        """The encodings' width on a (dummy) batch ``features``."""
        return int(self(features, names).shape[-1])


@dataclasses.dataclass(frozen=True)
class ExtraInput:
    """A layer called as ``layer(features, x)`` on a tower's concatenated encodings x; its output joins the
    MLP's input, concatenated to x, or added to it (``additive``: then of x's width)."""

    layer: keras.layers.Layer
    additive: bool = False


@dataclasses.dataclass(frozen=True)
class TowerExtensions:
    """The extra inputs of each tower, in the order they are applied."""

    query: Sequence[ExtraInput] = ()
    candidate: Sequence[ExtraInput] = ()


#: ``extensions(query_encodings, candidate_encodings) -> TowerExtensions``, called by ``build_towers``.
ExtensionsFn = Callable[[Encodings, Encodings], TowerExtensions]


class Tower(keras.Model):
    """Features dict (extra keys ignored) -> [batch, output_dim] embedding.

    ``extra_inputs`` (``ExtraInput``) are layers called as ``layer(features, x)`` on the concatenated
    encodings x whose outputs join the MLP's input: the augmented vectors of dual augmented towers, the
    pseudo query vector of generative interaction. They are concatenated to x, or added to it where
    the ``ExtraInput`` is additive. All are given here: a tower is complete when it is created.
    ``constant_inputs``: features whose encodings the tower reads as constants (``Encodings``).
    """

    def __init__(self, inputs: Sequence[Tuple[str, keras.layers.Layer]], hidden: keras.Sequential,
                 projection: keras.layers.Layer, normalize: bool = True,
                 extra_inputs: Sequence[ExtraInput] = (), constant_inputs: Sequence[str] = (), **kwargs):
        super().__init__(**kwargs)
        # Attributes in this order: checkpoints and warm starts rely on the towers' variables' paths and order.
        self.input_names_ = [name for name, _ in inputs]
        self.encoders = [encoder for _, encoder in inputs]
        self.hidden = hidden
        self.projection = projection
        self.normalize = normalize
        self.extra_inputs = [extra.layer for extra in extra_inputs]
        self._additive = frozenset(n for n, extra in enumerate(extra_inputs) if extra.additive)
        self.constant_inputs = frozenset(constant_inputs)

    @property
    def encodings(self) -> Encodings:
        """The tower's encoders as one function (``Encodings``)."""
        return Encodings(list(zip(self.input_names_, self.encoders)), self.name, self.constant_inputs)

    @property
    def feature_names(self) -> List[str]:
        """The tower's input features, in the order of their encodings."""
        return list(self.input_names_)

    def encode(self, features, names: Optional[Sequence[str]] = None):
        """Concatenated encoder outputs of the tower's features (or of ``names`` among them)."""
        return self.encodings(features, names)

    def call(self, features, training=False):
        x = self.encode(features)
        if self.extra_inputs:
            extra = [(n in self._additive, layer(features, x)) for n, layer in enumerate(self.extra_inputs)]
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
                 sharing: str = "none", user_gate=None, embedding_l2: float = 0.0,
                 extensions: Optional[ExtensionsFn] = None) -> Tuple[Tower, Tower]:
    """Query and candidate towers from the spec. ``output_dim`` 0 means no projection layer.

    ``user_gate`` (``config.UserGateConfig``) makes the query tower SimpleX's (``UserGate`` in place of
    its hidden layers and projection); ``embedding_l2`` adds l2 * sum of squares of every looked-up
    embedding row, per example, to the model's losses (only the batch's rows get its gradient).
    ``extensions(query_encodings, candidate_encodings)`` (``Encodings``), called once every encoder,
    hidden layer and projection exists, returns the ``TowerExtensions`` each tower is created with."""
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
        parts = {"query": (list(zip([f.name for f in spec.query], encoders)), body, head),
                 "candidate": (list(zip([f.name for f in candidate], encoders)), body, head)}
        return _assemble(parts, normalize, extensions)

    shared_head: Optional[keras.layers.Layer] = projection("shared_projection") if sharing == "projection" else None
    parts, constants = {}, []
    for side in S.SIDES:
        features = [f for f in spec.side(side) if f.tower_input]
        inputs = [(f.name, factory.build(f)) for f in features]
        if not inputs:
            raise ValueError(f"the {side} tower has no input: every {side} feature is an identifier only "
                             "(id with embedding_dim 0)")
        if side == "query" and user_gate is not None:
            body, head = keras.Sequential([], name="query_mlp"), _user_gate(spec, inputs, user_gate, output_dim)
            constants = [] if user_gate.history_gradient else _shared_histories(spec, features)
        else:
            body, head = mlp(hidden, activation, dropout, f"{side}_mlp"), shared_head or projection(f"{side}_projection")
        parts[side] = (inputs, body, head)
    return _assemble(parts, normalize, extensions, {"query": constants})


def _shared_histories(spec: "S.FeatureSpec", features) -> List[str]:
    """The query's histories that ``model.user_gate.history_gradient: false`` reads as constants: each must
    share a candidate feature's table, which the item side trains (else its own would never train)."""
    candidates = {f.name for f in spec.candidate}
    histories = [f for f in features if isinstance(f, S.SequenceFeature)]
    alone = [f.name for f in histories if not (f.share_embedding and f.vocab_source in candidates)]
    if alone or not histories:
        raise ValueError("model.user_gate.history_gradient false reads the query's histories as constants, so "
                         "each must share a candidate feature's embedding (vocab_from it, share_embedding "
                         f"true); {alone or 'none is a history'}")
    return [f.name for f in histories]


def _assemble(parts, normalize: bool, extensions: Optional[ExtensionsFn],
              constants: Optional[dict] = None) -> Tuple[Tower, Tower]:
    """The two towers from each side's (inputs, hidden, projection), with the extensions' extra inputs
    and ``constants[side]``, the inputs it reads as constants."""
    extra, constants = TowerExtensions(), constants or {}
    if extensions is not None:
        extra = extensions(*(Encodings(parts[side][0], f"{side}_tower") for side in S.SIDES))
    query, candidate = (Tower(*parts[side], normalize, extra_inputs=getattr(extra, side),
                              constant_inputs=constants.get(side, ()), name=f"{side}_tower") for side in S.SIDES)
    return query, candidate


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
