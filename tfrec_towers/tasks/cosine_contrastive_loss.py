"""Cosine contrastive loss (CCL) of SimpleX (Mao et al., "SimpleX: A Simple and Strong Baseline for
Collaborative Filtering", CIKM 2021, eq. 2):

    L_i = (1 - s_ip) + w * mean_{j valid negative} max(0, s_ij - m)

with s the towers' cosines. The positive is pulled to cosine 1; a negative is pushed only while its cosine
exceeds the margin m, so most of many (hundreds to thousands of) uniform negatives stop contributing once
they are far enough, and the weight w balances their mean against the single positive term.
"""
import tensorflow as tf

from tfrec_towers.tasks.masks import is_masked
from tfrec_towers.tasks.reduction import check_reduction, reduce_rows


__all__ = ["CosineContrastiveLoss"]


class CosineContrastiveLoss:
    """``(y_true, y_pred, sample_weight=None) -> scalar``, a ``loss`` of the Retrieval task.

    ``y_pred`` must be cosines: run the chain without a temperature and without logQ (the margin is in
    cosine units). Valid negatives are the columns with y_true == 0 and a logit not masked (accidental
    hits, same-entity pairs); a row without a positive (event label 0) contributes only its negative term.

    Args:
      margin: m = 0.9, SimpleX's value on Gowalla/Yelp/Amazon: only negatives already nearly as close as
        a positive are pushed, which filters the many easy uniform negatives.
      negative_weight: w = 150, the middle of SimpleX's tuned range (its Gowalla run used 250 with
        2,000 negatives); it scales the mean over negatives, so it does not depend on their number.
      reduction: "sum" or "mean" over rows, as the other losses.

    Example (two rows, three columns; row i's positive is column i; ``Retrieval(loss=...)`` takes it):

    >>> import tensorflow as tf
    >>> from tfrec_towers.tasks import CosineContrastiveLoss
    >>> y_true = tf.constant([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> y_pred = tf.constant([[0.9, 0.2, -0.1], [0.3, 0.8, 0.7]])
    >>> round(float(CosineContrastiveLoss(margin=0.9, negative_weight=150.0)(y_true, y_pred)), 4)
    0.3
    """

    def __init__(self, margin: float = 0.9, negative_weight: float = 150.0, reduction: str = "sum"):
        self.margin, self.negative_weight = float(margin), float(negative_weight)
        self.reduction = check_reduction(reduction)

    def __call__(self, y_true, y_pred, sample_weight=None):
        y_true = tf.cast(y_true, y_pred.dtype)
        positive = tf.equal(y_true, 1.0)
        has_positive = tf.cast(tf.reduce_any(positive, 1), y_pred.dtype)
        s_positive = tf.reduce_sum(tf.where(positive, y_pred, 0.0), 1)
        valid = tf.equal(y_true, 0.0) & ~is_masked(y_pred)
        push = tf.where(valid, tf.nn.relu(y_pred - self.margin), 0.0)
        negative = tf.math.divide_no_nan(tf.reduce_sum(push, 1), tf.reduce_sum(tf.cast(valid, push.dtype), 1))
        per_row = has_positive * (1.0 - s_positive) + self.negative_weight * negative
        return reduce_rows(per_row, sample_weight, self.reduction)
