"""PAIR's passage-centric term against a NumPy loop written from the paper's formula."""
import tfrec_towers  # noqa: F401  (must precede tensorflow: selects Keras 2)

import math

import numpy as np
import pytest
import tensorflow as tf

from tfrec_towers.tasks.pair import PassageCentricLoss
from tfrec_towers.tasks.chain import RemoveAccidentalHits, RetrievalContext, Temperature
from tfrec_towers.tasks.retrieval import Retrieval

from loss_reference import cos, random_batch, reduce

ITEM_IDS = ["a", "b", "c", "a", "d", "e", "b", "f"]   # positives 0/3 same item; 6 (extra) is 1's item
TAU = 0.2


def reference_rows(q, c, ids, tau):
    """L_p,i for each row: anchor p_i, positive q_i, negatives p_j (j != i, not the same item)."""
    b = len(q)
    rows = []
    for i in range(b):
        positive = math.exp(cos(c[i], q[i]) / tau)
        negatives = sum(math.exp(cos(c[i], c[j]) / tau) for j in range(b)
                        if j != i and (ids is None or ids[j] != ids[i]) and np.max(np.abs(c[i] - c[j])) > 1e-6)
        rows.append(-math.log(positive / (positive + negatives)))
    return np.array(rows)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("with_ids", [False, True])
def test_matches_numpy(reduction, weighted, with_ids):
    q, c, w = random_batch(seed=1)
    context = RetrievalContext(q, c, candidate_ids=tf.constant(ITEM_IDS) if with_ids else None,
                               sample_weight=w if weighted else None)
    value = float(PassageCentricLoss(TAU, reduction=reduction)(context))
    expected = reduce(reference_rows(q, c, ITEM_IDS if with_ids else None, TAU), w if weighted else None, reduction)
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-4)


def test_rows_with_event_label_zero_have_no_positive_pair():
    q, c, w = random_batch(seed=2)
    labels = np.array([1, 0, 1, 1, 0, 1], np.float32)
    context = RetrievalContext(q, c, candidate_ids=tf.constant(ITEM_IDS), sample_weight=w, labels=labels)
    value = float(PassageCentricLoss(TAU, reduction="mean")(context))
    np.testing.assert_allclose(value, reduce(reference_rows(q, c, ITEM_IDS, TAU), w * labels, "mean"), rtol=1e-5)


def test_same_item_duplicates_get_no_gradient_as_negatives():
    """L_p,i does not depend on a same-ID (0/3) or identical (2/5) item; it does on the other items."""
    q, c, _ = random_batch(seed=3)
    for i, duplicate in [(0, 3), (2, 5)]:
        items = tf.Variable(c)
        with tf.GradientTape() as tape:
            loss = PassageCentricLoss(TAU)(RetrievalContext(q, items, candidate_ids=tf.constant(ITEM_IDS),
                                                            sample_weight=np.eye(6, dtype=np.float32)[i]))
        gradient = tape.gradient(loss, items).numpy()
        np.testing.assert_array_equal(gradient[duplicate], 0.0)
        np.testing.assert_array_equal(gradient[6:], 0.0)        # extra negatives are not same-tower negatives
        others = [j for j in range(6) if j not in (i, duplicate)]
        assert np.all(np.abs(gradient[others]).sum(axis=1) > 1e-6)


def test_in_retrieval_task_matches_numpy():
    q, c, w = random_batch(seed=4)
    alpha = 0.1
    task = Retrieval(transforms=[Temperature(TAU), RemoveAccidentalHits()], query_weight=1 - alpha,
                     auxiliary_losses=[PassageCentricLoss(TAU, weight=alpha)])
    loss = float(task(q, c, sample_weight=w, candidate_ids=tf.constant(ITEM_IDS)))
    query_centric = 0.0
    for i in range(6):
        denominator = sum(math.exp(cos(q[i], c[j]) / TAU) for j in range(8) if j == i or ITEM_IDS[j] != ITEM_IDS[i])
        query_centric += w[i] * (-cos(q[i], c[i]) / TAU + math.log(denominator))
    expected = (1 - alpha) * query_centric + alpha * reduce(reference_rows(q, c, ITEM_IDS, TAU), w, "sum")
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-4)
