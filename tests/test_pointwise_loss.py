"""Pointwise weighted BCE and focal loss against NumPy loops written from their formulas."""
import tfrec_towers  # noqa: F401  (must precede tensorflow: selects Keras 2)

import math

import numpy as np
import pytest
import tensorflow as tf

from tfrec_towers.tasks.pointwise_loss import FocalLoss, WeightedBinaryCrossEntropy
from tfrec_towers.tasks.chain import MIN_LOGIT, RemoveAccidentalHits, Temperature
from tfrec_towers.tasks.retrieval import Retrieval

ITEM_IDS = ["a", "b", "c", "a", "d", "e", "b", "f"]


def sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


def bce(y, z, w_pos=1.0, w_neg=1.0):
    p = sigmoid(z)
    return -(w_pos * y * math.log(p) + w_neg * (1 - y) * math.log(1 - p))


def focal(y, z, gamma=2.0, alpha=0.25):
    p = sigmoid(z)
    return -(alpha * y * (1 - p) ** gamma * math.log(p) + (1 - alpha) * (1 - y) * p ** gamma * math.log(1 - p))


def reference(entry, y_true, y_pred, w, reduction):
    rows = np.array([sum(entry(y_true[i, j], y_pred[i, j]) for j in range(y_true.shape[1])
                         if y_pred[i, j] > MIN_LOGIT / 2) for i in range(y_true.shape[0])])
    w = np.ones_like(rows) if w is None else w
    return (w * rows).sum() if reduction == "sum" else (w * rows).sum() / w.sum()


def random_case(seed=0, b=6, n=9):
    rng = np.random.default_rng(seed)
    y_pred = rng.uniform(-6, 6, size=(b, n)).astype(np.float32)
    y_true = np.eye(b, n, dtype=np.float32) * np.array([1, 0, 1, 1, 0, 1], np.float32)[:, None]  # event labels
    y_pred[0, 3] = y_pred[2, 5] = y_pred[1, 1] = MIN_LOGIT     # masked entries (one on a diagonal)
    return y_true, y_pred, rng.uniform(0.2, 2.0, size=b).astype(np.float32)


LOSSES = [
    (WeightedBinaryCrossEntropy, {}, bce),
    (WeightedBinaryCrossEntropy, dict(positive_weight=3.0, negative_weight=0.5), lambda y, z: bce(y, z, 3.0, 0.5)),
    (FocalLoss, {}, focal),
    (FocalLoss, dict(gamma=1.5, alpha=0.6), lambda y, z: focal(y, z, 1.5, 0.6)),
]


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("cls,kwargs,entry", LOSSES)
def test_matches_numpy(cls, kwargs, entry, reduction, weighted):
    y_true, y_pred, w = random_case()
    value = float(cls(reduction=reduction, **kwargs)(y_true, y_pred, w if weighted else None))
    expected = reference(entry, y_true, y_pred, w if weighted else None, reduction)
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("cls", [WeightedBinaryCrossEntropy, FocalLoss])
def test_stable_and_masked_entries_get_no_gradient(cls):
    y_true, y_pred, w = random_case(seed=1)
    y_pred[3, 0], y_pred[0, 0] = 80.0, -80.0        # saturated: a naive log(sigmoid) overflows
    logits = tf.Variable(y_pred)
    with tf.GradientTape() as tape:
        loss = cls()(y_true, logits, w)
    gradient = tape.gradient(loss, logits).numpy()
    assert np.isfinite(float(loss)) and np.all(np.isfinite(gradient))
    assert gradient[0, 3] == 0 and gradient[2, 5] == 0 and gradient[1, 1] == 0
    saturated = float(cls()(y_true[:1, :1], y_pred[:1, :1]))     # -log sigmoid(-80) = 80 (focal: alpha * 80)
    np.testing.assert_allclose(saturated, 80.0 * (0.25 if cls is FocalLoss else 1.0), rtol=1e-4)


@pytest.mark.parametrize("loss,entry", [
    (WeightedBinaryCrossEntropy(2.0, 0.5, "mean"), lambda y, z: bce(y, z, 2.0, 0.5)),
    (FocalLoss(reduction="mean"), focal),
])
def test_in_retrieval_task_with_event_labels_matches_numpy(loss, entry):
    rng = np.random.default_rng(2)
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    q, c = unit(rng.normal(size=(6, 5))), unit(rng.normal(size=(8, 5)))
    w = rng.uniform(0.2, 2.0, size=6).astype(np.float32)
    labels = np.array([1, 0, 1, 1, 0, 1], np.float32)
    task = Retrieval(transforms=[Temperature(0.1), RemoveAccidentalHits()], loss=loss)
    value = float(task(q, c, sample_weight=w, candidate_ids=tf.constant(ITEM_IDS), labels=labels))
    logits = np.array([[np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)) / 0.1 for b in c] for a in q])
    for i in range(6):
        for j in range(8):
            if j != i and ITEM_IDS[j] == ITEM_IDS[i]:
                logits[i, j] = MIN_LOGIT
    expected = reference(entry, np.eye(6, 8) * labels[:, None], logits, w, "mean")
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-4)
