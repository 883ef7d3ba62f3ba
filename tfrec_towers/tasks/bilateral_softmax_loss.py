"""Bilateral softmax loss (BSL, Wu et al., "BSL: Understanding and Improving Softmax Loss for
Recommendation", ICDE 2024), with one positive per row:

    L_i = -z_ip + tau2 * log sum_{j valid negative} exp(z_ij)

with z the chain's logits (cosine / tau, after logQ and masking). tau2 = 1 is the sampled softmax over the
negatives (the positive left out of the denominator). The paper reads softmax as distributionally robust
optimisation over the negatives; raising their log-sum-exp to tau2 > 1 weighs that side more, which makes
the loss robust to noisy negatives as well as positives (hence "bilateral"): on Gowalla, MF with this loss
reached 0.188 Recall@20 against 0.176 with plain softmax in the paper's code (tau 0.08, tau2 1.22).
"""
import tensorflow as tf

from tfrec_towers.tasks.chain import MIN_LOGIT
from tfrec_towers.tasks.masks import is_masked
from tfrec_towers.tasks.reduction import check_reduction, reduce_rows


__all__ = ["BilateralSoftmaxLoss"]


class BilateralSoftmaxLoss:
    """``(y_true, y_pred, sample_weight=None) -> scalar``, a ``loss`` of the Retrieval task.

    Valid negatives are the columns with y_true == 0 and a logit not masked; a row without a positive
    (event label 0) or without a valid negative gives 0.

    Args:
      tau2: the exponent of the negatives' sum, 1.2: near the paper's Gowalla value (1.22), a mild
        weighting that leaves the loss close to softmax where the data does not reward more.
      reduction: "sum" over rows (the scale of TFRS's summed cross-entropy) or "mean".

    Example (two rows, three columns; row i's positive is column i; ``Retrieval(loss=...)`` takes it):

    >>> import tensorflow as tf
    >>> from tfrec_towers.tasks import BilateralSoftmaxLoss
    >>> y_true = tf.constant([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> y_pred = tf.constant([[0.9, 0.2, -0.1], [0.3, 0.8, 0.7]])
    >>> round(float(BilateralSoftmaxLoss(tau2=1.2)(y_true, y_pred)), 4)
    0.6608
    """

    def __init__(self, tau2: float = 1.2, reduction: str = "sum"):
        if tau2 <= 0:
            raise ValueError(f"bsl tau2 must be > 0, got {tau2}")
        self.tau2, self.reduction = float(tau2), check_reduction(reduction)

    def __call__(self, y_true, y_pred, sample_weight=None):
        y_true = tf.cast(y_true, y_pred.dtype)
        positive = tf.equal(y_true, 1.0)
        z_positive = tf.reduce_sum(tf.where(positive, y_pred, 0.0), 1)
        valid = tf.equal(y_true, 0.0) & ~is_masked(y_pred)
        negative = tf.reduce_logsumexp(tf.where(valid, y_pred, tf.cast(MIN_LOGIT, y_pred.dtype)), 1)
        keep = tf.reduce_any(positive, 1) & tf.reduce_any(valid, 1)
        per_row = tf.where(keep, self.tau2 * negative - z_positive, 0.0)
        return reduce_rows(per_row, sample_weight, self.reduction)
