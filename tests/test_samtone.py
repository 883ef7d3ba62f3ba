"""SameTowerNegatives (SamToNe) against a NumPy loop written from the paper's formula."""
import tfrec_towers  # noqa: F401  (must precede tensorflow: selects Keras 2)

import math

import numpy as np
import pytest
import tensorflow as tf

from tfrec_towers.tasks.chain import MIN_LOGIT, RemoveAccidentalHits, RetrievalContext, Temperature
from tfrec_towers.tasks.retrieval import Retrieval
from tfrec_towers.tasks.samtone import SameTowerNegatives

from loss_reference import cos, random_batch

QUERY_IDS = ["u0", "u1", "u2", "u3", "u0", "u5"]              # rows 0 and 4: same user
ITEM_IDS = ["a", "b", "c", "a", "d", "e", "b", "f"]           # 0/3 same item; 6 (extra) is 1's item
TAU = 0.2


def same(x, ids, i, j):
    return i == j or ids[i] == ids[j] or np.max(np.abs(x[i] - x[j])) <= 1e-6


def reference_direction(anchors, columns, anchor_ids, column_ids, tau, w):
    """sum_i w_i L_i: anchors vs all columns (accidental hits removed) + same-tower anchors (same entity
    masked), straight from the SamToNe formula."""
    total = 0.0
    for i in range(len(anchors)):
        denominator = 0.0
        for j in range(len(columns)):
            if j != i and column_ids[j] == column_ids[i]:
                continue
            denominator += math.exp(cos(anchors[i], columns[j]) / tau)
        for j in range(len(anchors)):
            if not same(anchors, anchor_ids, i, j):
                denominator += math.exp(cos(anchors[i], anchors[j]) / tau)
        total += w[i] * (-cos(anchors[i], columns[i]) / tau + math.log(denominator))
    return total


def test_appends_masked_same_tower_columns_and_keeps_incoming_logits():
    q, c, _ = random_batch(same_queries=True)
    logits = tf.constant(np.random.default_rng(1).normal(size=(6, 8)), tf.float32)
    logits = tf.tensor_scatter_nd_update(logits, [[0, 3], [1, 6]], [MIN_LOGIT, MIN_LOGIT])  # accidental hits
    labels = tf.eye(6, 8)
    out, out_labels = SameTowerNegatives(TAU)(logits, labels, context=RetrievalContext(
        q, c, candidate_ids=tf.constant(ITEM_IDS), query_ids=tf.constant(QUERY_IDS)))
    assert out.shape == (6, 14) and out_labels.shape == (6, 14)
    np.testing.assert_array_equal(out[:, :8], logits)                  # accidental hits stay masked
    np.testing.assert_array_equal(out_labels[:, :8], labels)
    np.testing.assert_array_equal(out_labels[:, 8:], np.zeros((6, 6)))
    for i in range(6):
        for j in range(6):
            if same(q, QUERY_IDS, i, j):
                assert out[i, 8 + j] == MIN_LOGIT, (i, j)
            else:
                np.testing.assert_allclose(out[i, 8 + j], cos(q[i], q[j]) / TAU, atol=1e-5)
    masked = {(i, j) for i in range(6) for j in range(6) if out[i, 8 + j] == MIN_LOGIT}
    assert {(0, 4), (4, 0), (1, 3), (3, 1)} <= masked and len(masked) == 10  # diagonal + ID pair + identical pair


def test_without_query_ids_only_identical_embeddings_are_masked():
    q, c, _ = random_batch(same_queries=True)
    out, _ = SameTowerNegatives(TAU)(tf.zeros([6, 8]), tf.eye(6, 8), context=RetrievalContext(q, c))
    extra = out[:, 8:].numpy()
    assert extra[1, 3] == MIN_LOGIT and extra[0, 4] != MIN_LOGIT


@pytest.mark.parametrize("weighted", [False, True])
def test_retrieval_both_towers_matches_numpy(weighted):
    q, c, w = random_batch(seed=2, same_queries=True)
    weights = w if weighted else np.ones(6, np.float32)
    task = Retrieval(transforms=[Temperature(TAU), RemoveAccidentalHits(), SameTowerNegatives(TAU)],
                     reverse_transforms=[Temperature(TAU), RemoveAccidentalHits(optional=True),
                                         SameTowerNegatives(TAU)])
    loss = float(task(q, c, sample_weight=w if weighted else None, candidate_ids=tf.constant(ITEM_IDS),
                      query_ids=tf.constant(QUERY_IDS)))
    query_side = reference_direction(q, c, QUERY_IDS, ITEM_IDS, TAU, weights)
    item_side = reference_direction(c[:6], q, ITEM_IDS[:6], QUERY_IDS, TAU, weights)  # s(p_i, p_j) terms
    np.testing.assert_allclose(loss, query_side + item_side, rtol=1e-5, atol=1e-4)
    plain = float(Retrieval(transforms=[Temperature(TAU), RemoveAccidentalHits()])(
        q, c, sample_weight=w if weighted else None, candidate_ids=tf.constant(ITEM_IDS)))
    assert loss > plain + 1e-3   # the same-tower terms matter


def test_same_entity_duplicates_get_no_gradient_as_negatives():
    """Row i's loss does not depend on a same-user (0/4) or identical (1/3) query; it does on the others."""
    q, c, _ = random_batch(seed=3, same_queries=True)
    task = Retrieval(transforms=[Temperature(TAU), RemoveAccidentalHits(), SameTowerNegatives(TAU)])
    for i, duplicate in [(0, 4), (1, 3)]:
        queries = tf.Variable(q)
        with tf.GradientTape() as tape:
            loss = task(queries, c, sample_weight=np.eye(6, dtype=np.float32)[i],
                        candidate_ids=tf.constant(ITEM_IDS), query_ids=tf.constant(QUERY_IDS))
        gradient = tape.gradient(loss, queries).numpy()
        np.testing.assert_array_equal(gradient[duplicate], 0.0)
        others = [j for j in range(6) if j not in (i, duplicate)]
        assert np.all(np.abs(gradient[others]).sum(axis=1) > 1e-6)
