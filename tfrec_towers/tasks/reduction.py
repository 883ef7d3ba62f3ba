"""Per-row losses of the auxiliary objectives and their row-weighted reduction to one scalar.

``REDUCTIONS``: the registry of ``task.loss_reduction`` (``tfrec_towers.choices`` reads its names): each name ->
Keras's equivalent reduction, for Keras's own losses (softmax cross-entropy); the package's losses
reduce their rows with ``reduce_rows``.
"""
from typing import Optional

import tensorflow as tf
import tf_keras as keras

from tfrec_towers.tasks.chain import MIN_LOGIT, RetrievalContext

__all__ = ["REDUCTIONS", "anchor_softmax_loss", "check_reduction", "reduce_rows", "row_weights"]


#: ``task.loss_reduction`` -> the Keras reduction of Keras's own losses: "sum" of the rows, or their
#: "mean" (SUM_OVER_BATCH_SIZE); ``reduce_rows`` is the same reduction with row weights.
REDUCTIONS = {"sum": keras.losses.Reduction.SUM, "mean": keras.losses.Reduction.SUM_OVER_BATCH_SIZE}


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
        raise ValueError(f"reduction must be one of {tuple(REDUCTIONS)}, got {reduction!r}")
    return reduction


def reduce_rows(per_row: tf.Tensor, weights: Optional[tf.Tensor], reduction: str) -> tf.Tensor:
    """"sum": sum_i w_i L_i; "mean": sum_i w_i L_i / sum_i w_i (0 when all weights are 0). Without
    weights, w_i = 1 (so "mean" divides by B)."""
    if weights is None:
        return tf.reduce_sum(per_row) if reduction == "sum" else tf.reduce_mean(per_row)
    weights = tf.reshape(tf.cast(weights, per_row.dtype), [-1])
    total = tf.reduce_sum(weights * per_row)
    return total if reduction == "sum" else tf.math.divide_no_nan(total, tf.reduce_sum(weights))
