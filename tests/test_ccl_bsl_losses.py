"""CosineContrastiveLoss (SimpleX) and BilateralSoftmaxLoss (BSL) against NumPy loops written from their
formulas, with masked entries, rows without a positive, weights and both reductions."""
import tfrec_towers  # noqa: F401  (must precede tensorflow: selects Keras 2)

import numpy as np
import pytest
import tensorflow as tf

from tfrec_towers.config import Config, packaged
from tfrec_towers.model import build_task
from tfrec_towers.tasks.bilateral_softmax_loss import BilateralSoftmaxLoss
from tfrec_towers.tasks.chain import MIN_LOGIT
from tfrec_towers.tasks.cosine_contrastive_loss import CosineContrastiveLoss


def random_case(seed=0, b=6, n=11):
    rng = np.random.default_rng(seed)
    y_pred = rng.uniform(-1, 1, size=(b, n)).astype(np.float32)
    y_true = np.eye(b, n, dtype=np.float32)
    y_pred[0, 3] = y_pred[2, 5] = MIN_LOGIT                # masked accidental hits
    y_pred[4, [j for j in range(n) if j != 4]] = MIN_LOGIT   # row 4: no valid negative
    y_true[5] = 0.0                                         # row 5: event label 0, no positive
    return y_true, y_pred, rng.uniform(0.2, 2.0, size=b).astype(np.float32)


def split(y_true, y_pred, i):
    positives = [j for j in range(y_true.shape[1]) if y_true[i, j] == 1]
    negatives = [j for j in range(y_true.shape[1]) if y_true[i, j] == 0 and y_pred[i, j] > MIN_LOGIT / 2]
    return positives, negatives


def reduce(rows, w, reduction):
    rows = np.array(rows)
    w = np.ones_like(rows) if w is None else w
    return (w * rows).sum() if reduction == "sum" else (w * rows).sum() / w.sum()


def ccl_reference(y_true, y_pred, margin, weight, w, reduction):
    rows = []
    for i in range(y_true.shape[0]):
        positives, negatives = split(y_true, y_pred, i)
        pos = (1.0 - y_pred[i, positives[0]]) if positives else 0.0
        neg = np.mean([max(0.0, y_pred[i, j] - margin) for j in negatives]) if negatives else 0.0
        rows.append(pos + weight * neg)
    return reduce(rows, w, reduction)


def bsl_reference(y_true, y_pred, tau2, w, reduction):
    rows = []
    for i in range(y_true.shape[0]):
        positives, negatives = split(y_true, y_pred, i)
        if not positives or not negatives:
            rows.append(0.0)
            continue
        z = y_pred[i].astype(np.float64)
        rows.append(-z[positives[0]] + tau2 * np.log(np.sum(np.exp(z[negatives]))))
    return reduce(rows, w, reduction)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("margin,weight", [(0.9, 150.0), (0.2, 3.0)])
def test_ccl_matches_numpy(reduction, weighted, margin, weight):
    y_true, y_pred, w = random_case()
    value = float(CosineContrastiveLoss(margin, weight, reduction)(y_true, y_pred, w if weighted else None))
    expected = ccl_reference(y_true, y_pred, margin, weight, w if weighted else None, reduction)
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-4)
    assert expected > 0


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("tau2", [1.0, 1.22, 0.7])
def test_bsl_matches_numpy(reduction, weighted, tau2):
    y_true, y_pred, w = random_case(seed=1)
    y_pred = np.where(y_pred > MIN_LOGIT / 2, y_pred / 0.08, y_pred)  # logits after a temperature
    value = float(BilateralSoftmaxLoss(tau2, reduction)(y_true, y_pred, w if weighted else None))
    expected = bsl_reference(y_true, y_pred, tau2, w if weighted else None, reduction)
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-3)


def test_bsl_at_tau2_one_is_softmax_without_the_positive_in_the_denominator():
    y_true, y_pred, _ = random_case(seed=2)
    y_true, y_pred = y_true[:4], y_pred[:4]
    value = float(BilateralSoftmaxLoss(1.0, "sum")(y_true, y_pred))
    expected = 0.0
    for i in range(4):
        z = np.where(y_pred[i] > MIN_LOGIT / 2, y_pred[i], -np.inf).astype(np.float64)
        negatives = np.delete(z, i)
        expected += -z[i] + np.log(np.exp(negatives[np.isfinite(negatives)]).sum()) if np.isfinite(negatives).any() else 0.0
    np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_masked_entries_get_no_gradient():
    y_true, y_pred, w = random_case(seed=3)
    for loss in (CosineContrastiveLoss(-1.0, 5.0), BilateralSoftmaxLoss(1.22)):
        logits = tf.Variable(y_pred)
        with tf.GradientTape() as tape:
            value = loss(y_true, logits, w)
        gradient = tape.gradient(value, logits).numpy()
        assert np.all(np.isfinite(gradient))
        assert gradient[0, 3] == 0 and gradient[2, 5] == 0
        assert gradient[0, 0] < 0 and gradient[0, 1] > 0


def test_ccl_refuses_a_temperature_or_logq():
    config = Config.load(packaged("default")).with_overrides(["task.loss=ccl"])
    with pytest.raises(ValueError, match="task.temperature to null and task.logq to false"):
        build_task(config)
    config = config.with_overrides(["task.temperature=null", "task.logq=false"])
    assert isinstance(build_task(config)._loss, CosineContrastiveLoss)
