"""Which pairs are the same entity and which logits are masked: what the objective layers share about
masks (cosines are in ``similarity.py``, per-row losses and their reduction in ``reduction.py``).

A pair of the same entity (same ID, or identical embeddings = identical features, e.g. a duplicated item
or the same query issued twice) is not a negative of each other: pushing it apart would push an entity
away from itself. Such pairs get ``MIN_LOGIT`` (finite, as TFRS: 0 * logit stays 0, no NaN gradient).
"""
from typing import Optional

import tensorflow as tf

from tfrec_towers.tasks.chain import MIN_LOGIT, equal_ids

__all__ = ["is_masked", "same_entity"]


#: Two embeddings are identical when no coordinate differs by more than this.
IDENTICAL_TOLERANCE = 1e-6


def is_masked(logits: tf.Tensor) -> tf.Tensor:
    """True where an earlier step took the entry out of the loss (set to ``MIN_LOGIT``)."""
    return logits <= MIN_LOGIT / 2


def same_entity(embeddings: tf.Tensor, ids: Optional[tf.Tensor] = None,
                tolerance: float = IDENTICAL_TOLERANCE) -> tf.Tensor:
    """[B, B] bool: rows i and j are the same entity (always on the diagonal): equal ``ids`` (when given)
    or identical embeddings, max_k |x_ik - x_jk| <= tolerance.

    The exact test needs a [B, B, d] difference (4 GB at B=4096, d=64). A pair can pass it only when its
    squared distance, from one matmul, is ~0, so only those pairs (the diagonal and the duplicates) are
    gathered and tested exactly. The threshold leaves room for the matmul's rounding.
    """
    x = tf.stop_gradient(embeddings)
    norms = tf.reduce_sum(tf.square(x), -1)
    scale = norms[:, None] + norms[None, :]
    distance = scale - 2.0 * tf.linalg.matmul(x, x, transpose_b=True)
    dim = tf.cast(tf.shape(x)[1], x.dtype)
    near = distance <= dim * tolerance ** 2 + 1e-4 * scale
    pairs = tf.where(near)
    differ = tf.reduce_max(tf.abs(tf.gather(x, pairs[:, 0]) - tf.gather(x, pairs[:, 1])), -1)
    same = tf.tensor_scatter_nd_update(near, pairs, differ <= tolerance)
    same |= tf.cast(tf.eye(tf.shape(x)[0]), tf.bool)
    if ids is not None:
        same |= equal_ids(ids, ids)
    return same
