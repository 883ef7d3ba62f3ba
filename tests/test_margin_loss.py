"""HingeLoss against a NumPy loop written from its formula."""
import tfrec_towers  # noqa: F401  (must precede tensorflow: selects Keras 2)

import numpy as np
import pytest
import tensorflow as tf

from tfrec_towers.tasks.margin_loss import HingeLoss
from tfrec_towers.tasks.chain import MIN_LOGIT, RemoveAccidentalHits
from tfrec_towers.tasks.retrieval import Retrieval

ITEM_IDS = ["a", "b", "c", "a", "d", "e", "b", "f"]


def reference(y_true, y_pred, margin, w, reduction):
    rows = []
    for i in range(y_true.shape[0]):
        positives = [j for j in range(y_true.shape[1]) if y_true[i, j] == 1]
        negatives = [j for j in range(y_true.shape[1]) if y_true[i, j] == 0 and y_pred[i, j] > MIN_LOGIT / 2]
        if not positives or not negatives:
            rows.append(0.0)
            continue
        z_p = y_pred[i, positives[0]]
        rows.append(np.mean([max(0.0, margin - z_p + y_pred[i, j]) for j in negatives]))
    rows = np.array(rows)
    w = np.ones_like(rows) if w is None else w
    return (w * rows).sum() if reduction == "sum" else (w * rows).sum() / w.sum()


def random_case(seed=0, b=6, n=9):
    rng = np.random.default_rng(seed)
    y_pred = rng.uniform(-1, 1, size=(b, n)).astype(np.float32)
    y_true = np.eye(b, n, dtype=np.float32)
    y_pred[0, 3] = y_pred[2, 5] = MIN_LOGIT               # masked accidental hits
    y_pred[4, [j for j in range(n) if j != 4]] = MIN_LOGIT  # row 4: no valid negative
    y_true[5] = 0.0                                        # row 5: event label 0, no positive
    return y_true, y_pred, rng.uniform(0.2, 2.0, size=b).astype(np.float32)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("margin", [0.1, 0.5])
def test_matches_numpy(reduction, weighted, margin):
    y_true, y_pred, w = random_case()
    value = float(HingeLoss(margin, reduction)(y_true, y_pred, w if weighted else None))
    expected = reference(y_true, y_pred, margin, w if weighted else None, reduction)
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-4)
    assert expected > 0


def test_masked_entries_get_no_gradient():
    y_true, y_pred, w = random_case(seed=1)
    logits = tf.Variable(y_pred)
    with tf.GradientTape() as tape:
        loss = HingeLoss(2.0)(y_true, logits, w)   # margin 2: every valid negative is active
    gradient = tape.gradient(loss, logits).numpy()
    assert np.all(np.isfinite(gradient))
    assert gradient[0, 3] == 0 and gradient[2, 5] == 0 and np.all(gradient[4] == 0) and np.all(gradient[5] == 0)
    assert gradient[0, 1] > 0 and gradient[0, 0] < 0


def test_in_retrieval_task_without_temperature_matches_numpy():
    rng = np.random.default_rng(2)
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    q, c = unit(rng.normal(size=(6, 5))), unit(rng.normal(size=(8, 5)))
    w = rng.uniform(0.2, 2.0, size=6).astype(np.float32)
    task = Retrieval(transforms=[RemoveAccidentalHits()], loss=HingeLoss(0.1, "mean"))
    loss = float(task(q, c, sample_weight=w, candidate_ids=tf.constant(ITEM_IDS)))
    cosines = np.array([[np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)) for b in c] for a in q])
    for i in range(6):
        for j in range(8):
            if j != i and ITEM_IDS[j] == ITEM_IDS[i]:
                cosines[i, j] = MIN_LOGIT
    np.testing.assert_allclose(loss, reference(np.eye(6, 8), cosines, 0.1, w, "mean"), rtol=1e-5, atol=1e-4)
