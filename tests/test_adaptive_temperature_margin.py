"""Adaptive temperature/margin and its symmetric term against NumPy loops written from the module's formulas."""
import tfrec_towers  # noqa: F401  (must precede tensorflow: selects Keras 2)

import math

import numpy as np
import pytest
import tensorflow as tf

from tfrec_towers.tasks.adaptive_temperature_margin import AdaptiveSymmetricLoss, AdaptiveTemperatureMargin
from tfrec_towers.tasks.chain import MIN_LOGIT, LogQCorrection, RemoveAccidentalHits, RetrievalContext, Temperature
from tfrec_towers.tasks.retrieval import Retrieval
from tfrec_towers.tasks.samtone import SameTowerNegatives

from loss_reference import cos, random_batch, reduce

ITEM_IDS = ["a", "b", "c", "a", "d", "e", "b", "f"]   # positives 0/3 same item; 6 (extra) is 1's item
BASE = 0.05
PARAMS = dict(alpha=0.3, delta0=0.05, tau0=0.1)       # non-default values, so each one is checked


def reference_factors(q, c, i, j, alpha, delta0, tau0):
    g = abs(cos(q[i], c[i]) - cos(c[i], c[j]))
    r = (1 - alpha) + alpha * g
    return tau0 * r, delta0 * r


def reference_query_rows(q, c, ids, p, alpha, delta0, tau0):
    """L_i over the cross-tower columns, with logQ and accidental hits removed."""
    rows = []
    for i in range(len(q)):
        positive = cos(q[i], c[i]) / tau0 - math.log(p[i])
        terms = [positive]
        for j in range(len(c)):
            if j == i or ids[j] == ids[i]:
                continue
            tau, delta = reference_factors(q, c, i, j, alpha, delta0, tau0)
            terms.append((cos(q[i], c[j]) + delta) / tau - math.log(p[j]))
        m = max(terms)
        rows.append(m + math.log(sum(math.exp(t - m) for t in terms)) - positive)
    return np.array(rows)


def reference_symmetric_rows(q, c, ids, alpha, delta0, tau0):
    rows = []
    for i in range(len(q)):
        positive = math.exp(cos(c[i], q[i]) / tau0)
        negatives = 0.0
        for j in range(len(q)):
            if j == i or (ids is not None and ids[j] == ids[i]) or np.max(np.abs(c[i] - c[j])) <= 1e-6:
                continue
            tau, delta = reference_factors(q, c, i, j, alpha, delta0, tau0)
            negatives += math.exp((cos(c[i], c[j]) + delta) / tau)
        rows.append(-math.log(positive / (positive + negatives)))
    return np.array(rows)


def test_factors_match_numpy_and_defaults_are_the_papers():
    q, c, _, _ = random_batch(probabilities=True)
    layer = AdaptiveTemperatureMargin(BASE, **PARAMS)
    tau, delta = layer.factors(RetrievalContext(q, c))
    assert tau.shape == (6, 8) and delta.shape == (6, 8)
    for i in range(6):
        for j in range(8):
            np.testing.assert_allclose((tau[i, j], delta[i, j]), reference_factors(q, c, i, j, **PARAMS), atol=1e-6)
    default = AdaptiveTemperatureMargin(BASE)
    np.testing.assert_allclose([float(default.alpha), float(default.delta0), float(default.tau0)],
                               [0.5, 0.01, 1 / 30], rtol=1e-6)
    tau, delta = default.factors(RetrievalContext(q, c))
    assert np.all(tau >= 0.5 / 30 - 1e-7) and np.all(tau <= 1.5 / 30 + 1e-7)


def test_transform_keeps_masks_extra_columns_and_labels():
    q, c, p, _ = random_batch(seed=1, probabilities=True)
    context = RetrievalContext(q, c, candidate_ids=tf.constant(ITEM_IDS), candidate_sampling_probability=p)
    logits = tf.linalg.matmul(q, c, transpose_b=True)
    labels = tf.eye(6, 8)
    for step in [Temperature(BASE), LogQCorrection(), RemoveAccidentalHits(), SameTowerNegatives(BASE)]:
        logits, labels = step(logits, labels, context=context)
    out, out_labels = AdaptiveTemperatureMargin(BASE, **PARAMS)(logits, labels, context=context)
    np.testing.assert_array_equal(out_labels, labels)
    np.testing.assert_array_equal(out[:, 8:], logits[:, 8:])             # same-tower columns untouched
    masked = logits.numpy() <= MIN_LOGIT / 2
    assert masked[0, 3] and masked[1, 6] and masked[:, 8:].sum() == 6    # accidental hits, diagonal
    np.testing.assert_array_equal(out.numpy()[masked], logits.numpy()[masked])
    for i in range(6):
        for j in range(8):
            if masked[i, j]:
                continue
            tau, delta = (PARAMS["tau0"], 0.0) if i == j else reference_factors(q, c, i, j, **PARAMS)
            expected = (cos(q[i], c[j]) + delta) / tau - math.log(p[j])
            np.testing.assert_allclose(out[i, j], expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
def test_symmetric_loss_matches_numpy(reduction, weighted):
    q, c, _, w = random_batch(seed=2, probabilities=True)
    layer = AdaptiveTemperatureMargin(BASE, **PARAMS)
    loss = AdaptiveSymmetricLoss(layer, reduction=reduction)
    for ids in [None, ITEM_IDS]:
        context = RetrievalContext(q, c, candidate_ids=None if ids is None else tf.constant(ids),
                                   sample_weight=w if weighted else None)
        expected = reduce(reference_symmetric_rows(q, c, ids, **PARAMS), w if weighted else None, reduction)
        np.testing.assert_allclose(float(loss(context)), expected, rtol=1e-5, atol=1e-4)


def test_retrieval_task_with_transform_and_symmetric_term_matches_numpy():
    q, c, p, w = random_batch(seed=3, probabilities=True)
    adaptive = AdaptiveTemperatureMargin(BASE, **PARAMS)
    task = Retrieval(transforms=[Temperature(BASE), LogQCorrection(), RemoveAccidentalHits(), adaptive],
                     auxiliary_losses=[AdaptiveSymmetricLoss(adaptive, weight=0.05)])
    loss = float(task(q, c, sample_weight=w, candidate_ids=tf.constant(ITEM_IDS), candidate_sampling_probability=p))
    expected = (reduce(reference_query_rows(q, c, ITEM_IDS, p, **PARAMS), w, "sum")
                + 0.05 * reduce(reference_symmetric_rows(q, c, ITEM_IDS, **PARAMS), w, "sum"))
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-4)


def test_no_gradient_reaches_the_embeddings_through_g():
    q, c, _, _ = random_batch(seed=4, probabilities=True)
    queries, candidates = tf.Variable(q), tf.Variable(c)
    layer = AdaptiveTemperatureMargin(BASE, trainable=True)
    with tf.GradientTape() as tape:
        tau, delta = layer.factors(RetrievalContext(queries, candidates))
        total = tf.reduce_sum(tau * tau) + tf.reduce_sum(delta * delta)
    gradients = tape.gradient(total, [queries, candidates] + layer.trainable_weights)
    for gradient in gradients[:2]:
        assert gradient is None or np.all(gradient.numpy() == 0)
    assert all(g is not None and float(tf.abs(g)) > 0 for g in gradients[2:])   # alpha, tau0, delta0 do get one


def test_symmetric_duplicates_get_no_gradient_as_negatives():
    q, c, _, _ = random_batch(seed=5, probabilities=True)
    loss = AdaptiveSymmetricLoss(AdaptiveTemperatureMargin(BASE, **PARAMS))
    for i, duplicate in [(0, 3), (2, 5)]:
        items = tf.Variable(c)
        with tf.GradientTape() as tape:
            value = loss(RetrievalContext(q, items, candidate_ids=tf.constant(ITEM_IDS),
                                          sample_weight=np.eye(6, dtype=np.float32)[i]))
        gradient = tape.gradient(value, items).numpy()
        np.testing.assert_array_equal(gradient[duplicate], 0.0)
        others = [j for j in range(6) if j not in (i, duplicate)]
        assert np.all(np.abs(gradient[others]).sum(axis=1) > 1e-6)


@pytest.mark.parametrize("trainable", [False, True])
def test_trainable_parameters(trainable):
    q, c, p, w = random_batch(seed=6, probabilities=True)
    adaptive = AdaptiveTemperatureMargin(BASE, trainable=trainable)
    task = Retrieval(transforms=[Temperature(BASE), RemoveAccidentalHits(), adaptive],
                     auxiliary_losses=[AdaptiveSymmetricLoss(adaptive)])
    names = lambda weights: sorted(v.name.split("/")[-1].split(":")[0] for v in weights)  # noqa: E731
    if not trainable:
        assert adaptive.trainable_weights == [] and task.trainable_weights == []
        assert names(adaptive.non_trainable_weights) == ["alpha", "delta0", "log_tau0"]
        return
    assert names(task.trainable_weights) == ["alpha", "delta0", "log_tau0"]   # once: the aux loss does not track it
    with tf.GradientTape() as tape:
        loss = task(q, c, sample_weight=w, candidate_ids=tf.constant(ITEM_IDS))
    gradients = tape.gradient(loss, adaptive.trainable_weights)
    assert all(g is not None and float(tf.abs(g)) > 0 for g in gradients)
