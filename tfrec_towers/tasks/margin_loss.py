"""Margin (hinge) loss over the retrieval logits: a pairwise ranking loss, the positive must beat each
negative by a margin (as in margin-based two-tower / triplet training, e.g. Huang et al., "Embedding-based
Retrieval in Facebook Search", KDD 2020):

    L_i = mean_{j valid negative} max(0, margin - z_ip + z_ij)
"""
import tensorflow as tf

from tfrec_towers.tasks.masks import is_masked
from tfrec_towers.tasks.reduction import check_reduction, reduce_rows


__all__ = ["HingeLoss"]


class HingeLoss:
    """``(y_true, y_pred, sample_weight=None) -> scalar``, a ``loss`` of the Retrieval task.

    Row i's positive is its column with y_true == 1; its valid negatives are the columns with y_true == 0
    and a logit not masked (> MIN_LOGIT / 2: accidental hits, same-entity pairs stay out). A row with no
    valid negative, or no positive (an event with label 0), gives 0. The mean over negatives (not the
    sum) keeps the loss's scale independent of the batch size.

    Run the task without a temperature (the default for hinge): the logits are then the towers' cosines
    and ``margin`` is in cosine units (0.1 of the range [-1, 1]). With a temperature tau the margin is in
    units of cosine / tau.

    Args:
      margin: 0.1 in cosine units: wide enough to keep separating positives that already win, small
        enough for most negatives to be satisfied (0 gradient) once trained.
      reduction: "sum" over rows (the scale of the TFRS task's summed cross-entropy) or "mean"
        (weighted mean over rows).

    Example (two rows, three columns; row i's positive is column i; ``Retrieval(loss=...)`` takes it):

    >>> import tensorflow as tf
    >>> from tfrec_towers.tasks import HingeLoss
    >>> y_true = tf.constant([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> y_pred = tf.constant([[0.9, 0.2, -0.1], [0.3, 0.8, 0.7]])
    >>> round(float(HingeLoss(margin=0.2)(y_true, y_pred)), 4)
    0.05
    """

    def __init__(self, margin: float = 0.1, reduction: str = "sum"):
        self.margin, self.reduction = margin, check_reduction(reduction)

    def __call__(self, y_true, y_pred, sample_weight=None):
        y_true = tf.cast(y_true, y_pred.dtype)
        positive = tf.equal(y_true, 1.0)
        z_positive = tf.reduce_sum(tf.where(positive, y_pred, 0.0), 1, keepdims=True)
        valid = tf.equal(y_true, 0.0) & ~is_masked(y_pred)
        hinge = tf.where(valid, tf.nn.relu(self.margin - z_positive + y_pred), 0.0)
        per_row = tf.math.divide_no_nan(tf.reduce_sum(hinge, 1), tf.reduce_sum(tf.cast(valid, hinge.dtype), 1))
        per_row *= tf.cast(tf.reduce_any(positive, 1), per_row.dtype)
        return reduce_rows(per_row, sample_weight, self.reduction)
