"""Generative interaction in the item tower (the idea of III-Retriever: Dong et al., "I^3 Retriever:
Incorporating Implicit Interaction in Pre-trained Language Models for Passage Retrieval", CIKM 2023).

A two-tower model lets the query and the item interact only in the final dot product. Here a light
generator G inside the item tower maps the item's encoded features x_v to a pseudo query-side vector
g_v = G(x_v), trained to reconstruct the real query side t_u (the encodings of chosen query features,
e.g. the bag of history items) on positive pairs only:

    L_rec = mean_{i: label_i = 1} || G(x_v(i)) - sg(t_u(i)) ||^2

g_v joins x_v at the item tower's input, so the item tower reasons about "the kind of user who takes
this item" below the dot product: concatenated ([x_v, g_v], ``combine: concat``, the towers need layers
of their own after it) or added (x_v + g_v, ``combine: add``: G's last layer starts at zero, so the
tower starts exactly where it would without G; this keeps a shared or lexical start, e.g. SciFact's
trigram projection, and fits every sharing shape, SDE included). G reads item features alone, so item
embeddings are still precomputed offline and serving cost is unchanged. sg keeps the query encoders from being pulled
towards the generator (both would otherwise be free to shrink towards a trivial common value).
"""
from typing import Callable, Sequence

import tensorflow as tf
import tf_keras as keras

from tfrec_towers.tasks.chain import AuxiliaryLoss, RetrievalContext, Untracked


__all__ = ["PseudoQueryGenerator", "ReconstructionLoss"]


class PseudoQueryGenerator(keras.layers.Layer):
    """x_v (item encodings) -> g_v (pseudo query-side encodings of ``target_dim``): an MLP.

    ``additive``: made to be added to x_v (the tower is given it as an additive ``ExtraInput``) instead of
    concatenated: the last layer's kernel starts at zero so that g_v = 0 before training."""

    def __init__(self, target_dim: int, hidden: Sequence[int] = (128,), additive: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.additive = additive
        last = keras.layers.Dense(target_dim, kernel_initializer="zeros" if additive else "glorot_uniform")
        self.mlp = keras.Sequential([keras.layers.Dense(w, activation="relu") for w in hidden] + [last])

    def call(self, features, x):
        return self.mlp(x)


class ReconstructionLoss(AuxiliaryLoss):
    """mean over positive pairs of ||G(x_v) - sg(t_u)||^2.

    Args:
      generator: G, the candidate tower's ``PseudoQueryGenerator``.
      target: features -> t_u, the query tower's encodings of the chosen features (``Encodings.select``).
      source: features -> x_v, the candidate tower's encodings (``Encodings``), G's input in the tower.
    The three are owned by the towers (referenced here, not tracked: one path in checkpoints)."""

    def __init__(self, generator: PseudoQueryGenerator, target: Callable, source: Callable, weight: float = 1.0,
                 **kwargs):
        super().__init__(weight=weight, **kwargs)
        self.refs = Untracked(generator=generator, target=target, source=source)

    def call(self, context: RetrievalContext):
        r = self.refs
        target = tf.stop_gradient(r.target(context.features))
        generated = r.generator(context.features, r.source(context.features))
        return context.positive_mean(tf.reduce_sum(tf.square(generated - target), -1))
