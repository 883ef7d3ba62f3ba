"""Pointwise losses (DSSM-style training on production logs): each entry (i, j) of the [B, N] logits is an
independent binary example with target y_true[i, j]. The diagonal carries the event's label (1 click,
0 exposure without click); off-diagonal columns are sampled negatives (target 0). Entries masked by an
earlier step (<= MIN_LOGIT / 2: accidental hits, same-entity pairs) are not examples.

    L_i = sum_{j valid} l(y_ij, z_ij),  rows weighted by sample_weight, reduced by "sum" or "mean"
"""
import tensorflow as tf

from tfrec_towers.tasks.masks import is_masked
from tfrec_towers.tasks.reduction import check_reduction, reduce_rows


__all__ = ["FocalLoss", "WeightedBinaryCrossEntropy"]


class _Pointwise:
    """Sums ``entry_loss`` over each row's valid entries, then reduces the rows."""

    def __init__(self, reduction: str):
        self.reduction = check_reduction(reduction)

    def entry_loss(self, y, z):
        raise NotImplementedError

    def __call__(self, y_true, y_pred, sample_weight=None):
        valid = ~is_masked(y_pred)
        z = tf.where(valid, y_pred, 0.0)  # a masked logit never enters the arithmetic (no inf, no NaN grad)
        per_entry = self.entry_loss(tf.cast(y_true, y_pred.dtype), z)
        per_row = tf.reduce_sum(tf.where(valid, per_entry, 0.0), 1)
        return reduce_rows(per_row, sample_weight, self.reduction)


def _minus_log_sigmoid(z):
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.ones_like(z), logits=z)      # -log p, stable


def _minus_log_one_minus_sigmoid(z):
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.zeros_like(z), logits=z)     # -log(1 - p)


class WeightedBinaryCrossEntropy(_Pointwise):
    """l = -(w+ y log sigmoid(z) + w- (1 - y) log(1 - sigmoid(z))), computed from logits (stable).

    Args:
      positive_weight, negative_weight: w+ and w-; 1 and 1 is plain DSSM cross-entropy. With B - 1 sampled
        negatives per positive, raise w+ (or lower w-) to rebalance when calibration is not needed.
      reduction: "sum" over rows (TFRS's scale) or "mean" (weighted mean over rows).

    Example (two rows, three columns; row i's positive is column i; ``Retrieval(loss=...)`` takes it):

    >>> import tensorflow as tf
    >>> from tfrec_towers.tasks import WeightedBinaryCrossEntropy
    >>> y_true = tf.constant([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> y_pred = tf.constant([[0.9, 0.2, -0.1], [0.3, 0.8, 0.7]])
    >>> round(float(WeightedBinaryCrossEntropy()(y_true, y_pred)), 4)
    4.1123
    """

    def __init__(self, positive_weight: float = 1.0, negative_weight: float = 1.0, reduction: str = "sum"):
        super().__init__(reduction)
        self.positive_weight, self.negative_weight = positive_weight, negative_weight

    def entry_loss(self, y, z):
        return (self.positive_weight * y * _minus_log_sigmoid(z)
                + self.negative_weight * (1.0 - y) * _minus_log_one_minus_sigmoid(z))


class FocalLoss(_Pointwise):
    """Focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017), p = sigmoid(z):

        l = -(alpha y (1 - p)^gamma log p + (1 - alpha) (1 - y) p^gamma log(1 - p))

    (1 - p)^gamma / p^gamma down-weight the many easy examples (mostly easy sampled negatives), so the
    loss is spent on the hard ones.

    Args:
      gamma: 2, the paper's best value.
      alpha: 0.25, the paper's value paired with gamma = 2 (with the easy negatives already down-weighted
        by gamma, the positives need less weight, not more).
      reduction: "sum" over rows or "mean" (weighted mean over rows).

    Example (two rows, three columns; row i's positive is column i; ``Retrieval(loss=...)`` takes it):

    >>> import tensorflow as tf
    >>> from tfrec_towers.tasks import FocalLoss
    >>> y_true = tf.constant([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> y_pred = tf.constant([[0.9, 0.2, -0.1], [0.3, 0.8, 0.7]])
    >>> round(float(FocalLoss(gamma=2.0, alpha=0.25)(y_true, y_pred)), 4)
    0.8869
    """

    def __init__(self, gamma: float = 2.0, alpha: float = 0.25, reduction: str = "sum"):
        super().__init__(reduction)
        self.gamma, self.alpha = gamma, alpha

    def entry_loss(self, y, z):
        p = tf.sigmoid(z)
        return (self.alpha * y * tf.pow(1.0 - p, self.gamma) * _minus_log_sigmoid(z)
                + (1.0 - self.alpha) * (1.0 - y) * tf.pow(p, self.gamma) * _minus_log_one_minus_sigmoid(z))
