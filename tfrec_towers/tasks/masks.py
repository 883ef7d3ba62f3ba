"""What the objective layers share: which pairs are the same entity, which logits are masked, cosines,
the anchor softmax, and the row-weighted reduction of per-row losses.

A pair of the same entity (same ID, or identical embeddings = identical features, e.g. a duplicated item
or the same query issued twice) is not a negative of each other: pushing it apart would push an entity
away from itself. Such pairs get ``MIN_LOGIT`` (finite, as TFRS: 0 * logit stays 0, no NaN gradient).
"""
from typing import Optional

import tensorflow as tf

from tfrec_towers.config import REDUCTIONS
from tfrec_towers.tasks.chain import MIN_LOGIT, RetrievalContext

#: Two embeddings are identical when no coordinate differs by more than this.
IDENTICAL_TOLERANCE = 1e-6


def is_masked(logits: tf.Tensor) -> tf.Tensor:
    """True where an earlier step took the entry out of the loss (set to ``MIN_LOGIT``)."""
    return logits <= MIN_LOGIT / 2


def cosine(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """[A, B] cosine similarities of the rows of ``a`` and ``b``."""
    return tf.linalg.matmul(tf.math.l2_normalize(a, -1), tf.math.l2_normalize(b, -1), transpose_b=True)


def row_cosine(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """[B] cosine of row i of ``a`` with row i of ``b``."""
    return tf.reduce_sum(tf.math.l2_normalize(a, -1) * tf.math.l2_normalize(b, -1), -1)


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
        ids = tf.reshape(ids, [-1])
        same |= tf.equal(ids[:, None], ids[None, :])
    return same


def anchor_softmax_loss(positive: tf.Tensor, negatives: tf.Tensor, excluded: tf.Tensor) -> tf.Tensor:
    """[B] -log(e^{positive_i} / (e^{positive_i} + sum_{j not excluded} e^{negatives_ij})) from logits."""
    negatives = tf.where(excluded, tf.cast(MIN_LOGIT, negatives.dtype), negatives)
    return tf.reduce_logsumexp(tf.concat([positive[:, None], negatives], 1), 1) - positive


def row_weights(context: RetrievalContext) -> Optional[tf.Tensor]:
    """[B] weight of each row in an auxiliary term: ``sample_weight``, times 0 for rows whose event label
    is 0 (an exposure without click has no positive pair); None when neither is given."""
    weights = None if context.sample_weight is None else tf.reshape(tf.cast(context.sample_weight, tf.float32), [-1])
    if context.labels is not None:
        positive = tf.cast(tf.reshape(context.labels, [-1]) > 0, tf.float32)
        weights = positive if weights is None else weights * positive
    return weights


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def reduce_rows(per_row: tf.Tensor, weights: Optional[tf.Tensor], reduction: str) -> tf.Tensor:
    """"sum": sum_i w_i L_i; "mean": sum_i w_i L_i / sum_i w_i (0 when all weights are 0). Without
    weights, w_i = 1 (so "mean" divides by B)."""
    if weights is None:
        return tf.reduce_sum(per_row) if reduction == "sum" else tf.reduce_mean(per_row)
    weights = tf.reshape(tf.cast(weights, per_row.dtype), [-1])
    total = tf.reduce_sum(weights * per_row)
    return total if reduction == "sum" else tf.math.divide_no_nan(total, tf.reduce_sum(weights))
