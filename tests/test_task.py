"""The Retrieval task: transform chain vs a NumPy reference and tfrs.tasks.Retrieval, aux losses, metrics."""
import tfrec_towers  # noqa: F401  (must precede tensorflow: selects Keras 2)

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from tfrec_towers.tasks import (AuxiliaryLoss, LogitTransform, LogQCorrection, RemoveAccidentalHits, Retrieval,
                                Temperature)

IDS = ["a", "b", "a", "c", "b", "d"]  # rows 0/2 and 1/4 are accidental hits of each other


def random_batch(seed=0, n=6, dim=4, num_candidates=None):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, dim)).astype(np.float32)
    c = rng.normal(size=(num_candidates or n, dim)).astype(np.float32)
    p = rng.uniform(0.01, 0.5, size=num_candidates or n).astype(np.float32)
    return q, c, p


def reference_logits(q, c, ids, p=None, temperature=1.0, remove_hits=True):
    logits = (q.astype(np.float64) @ c.T.astype(np.float64)) / temperature
    if p is not None:
        logits = logits - np.log(np.maximum(p, 1e-12))[None, :]  # expected counts: never capped
    if remove_hits:
        for i in range(q.shape[0]):
            for j in range(c.shape[0]):
                if j != i and ids[j] == ids[i]:
                    logits[i, j] = -1e30
    return logits


def reference_loss(logits, weights=None):
    n = logits.shape[0]
    m = logits.max(axis=1, keepdims=True)
    log_softmax = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
    per_row = -log_softmax[np.arange(n), np.arange(n)]
    if weights is not None:
        per_row = per_row * weights
    return per_row.sum()


def default_chain(t):
    return [Temperature(t), LogQCorrection(), RemoveAccidentalHits()]


@pytest.mark.parametrize("temperature", [1.0, 0.1])
def test_default_chain_matches_numpy_and_tfrs(temperature):
    q, c, p = random_batch()
    ids = tf.constant(IDS)
    task = Retrieval(transforms=default_chain(temperature))
    loss = float(task(q, c, candidate_ids=ids, candidate_sampling_probability=p))
    expected = reference_loss(reference_logits(q, c, IDS, p, temperature))
    np.testing.assert_allclose(loss, expected, rtol=1e-4)
    tfrs_loss = float(tfrs.tasks.Retrieval(temperature=temperature, remove_accidental_hits=True)(
        q, c, candidate_ids=ids, candidate_sampling_probability=p))
    np.testing.assert_allclose(loss, tfrs_loss, rtol=1e-5)
    # the corrections matter on this batch: without them the loss is different
    plain = reference_loss(reference_logits(q, c, IDS, None, temperature, remove_hits=False))
    assert abs(plain - expected) > 1e-3


def test_default_chain_with_sample_weights_and_extra_negatives():
    q, c, p = random_batch(seed=1, n=4, num_candidates=6)
    ids = IDS
    w = np.array([1.0, 0.5, 0.0, 2.0], np.float32)
    loss = float(Retrieval(transforms=default_chain(0.5))(
        q, c, sample_weight=w, candidate_ids=tf.constant(ids), candidate_sampling_probability=p))
    logits = reference_logits(q, c, ids, p, 0.5)
    n = q.shape[0]
    m = logits.max(axis=1, keepdims=True)
    log_softmax = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
    expected = float((-log_softmax[np.arange(n), np.arange(n)] * w).sum())
    np.testing.assert_allclose(loss, expected, rtol=1e-4)
    tfrs_loss = float(tfrs.tasks.Retrieval(temperature=0.5, remove_accidental_hits=True)(
        q, c, sample_weight=w, candidate_ids=tf.constant(ids), candidate_sampling_probability=p))
    np.testing.assert_allclose(loss, tfrs_loss, rtol=1e-5)


def test_no_transforms_is_plain_softmax_cross_entropy():
    q, c, _ = random_batch(seed=2)
    loss = float(Retrieval()(q, c))
    np.testing.assert_allclose(loss, reference_loss(q.astype(np.float64) @ c.T), rtol=1e-4)
    np.testing.assert_allclose(loss, float(tfrs.tasks.Retrieval()(q, c)), rtol=1e-6)


def test_logq_is_a_no_op_without_probabilities():
    q, c, _ = random_batch(seed=3)
    with_logq = float(Retrieval(transforms=[Temperature(0.2), LogQCorrection()])(q, c))
    without = float(Retrieval(transforms=[Temperature(0.2)])(q, c))
    assert with_logq == pytest.approx(without, rel=1e-6)


def test_logq_subtracts_expected_counts_above_one():
    """Expected counts B q exceed 1 for popular items; capping them at 1 (as a probability) flattens
    the correction of every popular item (issue 18: -5% HR@10 on MovieLens)."""
    q, c, _ = random_batch(seed=5)
    counts = np.array([0.5, 1.0, 2.0, 4.0, 8.0, 16.0], np.float32)
    loss = float(Retrieval(transforms=[Temperature(0.2), LogQCorrection()])(
        q, c, candidate_sampling_probability=counts))
    expected = reference_loss(reference_logits(q, c, IDS, counts, 0.2, remove_hits=False))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # A row-constant factor (the batch size in B q) leaves the softmax unchanged.
    scaled = float(Retrieval(transforms=[Temperature(0.2), LogQCorrection()])(
        q, c, candidate_sampling_probability=counts * 512))
    np.testing.assert_allclose(scaled, loss, rtol=1e-5)


def test_batch_recall_reads_the_columns_before_mining_and_same_tower_negatives():
    """Issue 14.5: with hard-negative mining batch recall@K read 1.0 (columns shrink to k + 1 <= K)."""
    from tfrec_towers.tasks.hard_negative_mining import HardNegativeMining
    from tfrec_towers.tasks.samtone import SameTowerNegatives

    q, c, _ = random_batch(seed=6, n=64, dim=8)

    def batch_recall(transforms):
        metric = keras.metrics.TopKCategoricalAccuracy(k=10)
        Retrieval(transforms=transforms, batch_metrics=[metric])(q, c)
        return float(metric.result())

    plain = batch_recall([Temperature(0.2)])
    assert 0 < plain < 0.5  # random embeddings: about 10 / 64
    assert batch_recall([Temperature(0.2), HardNegativeMining(5)]) == pytest.approx(plain)
    assert batch_recall([Temperature(0.2), SameTowerNegatives(0.2), HardNegativeMining(5)]) == pytest.approx(plain)


@pytest.mark.parametrize("kwargs", [{}, {"temperature": 0.3}, {"temperature": 0.3, "remove_accidental_hits": True},
                                    {"temperature": 0.3, "remove_accidental_hits": True, "num_hard_negatives": 2}])
def test_tfrs_arguments_work_as_in_tfrs(kwargs):
    """Issue 15: every argument of tfrs.tasks.Retrieval gives its result here (as a subclass that replaced
    ``call``, temperature, num_hard_negatives and score_mask were silently ignored)."""
    q, c, p = random_batch(seed=7)
    ids = tf.constant(IDS)
    mask = tf.constant(np.random.default_rng(7).uniform(size=(6, 6)) > 0.3) | tf.cast(tf.eye(6), tf.bool)
    for call in ({}, {"score_mask": mask}):
        ours = float(Retrieval(**kwargs)(q, c, candidate_ids=ids, candidate_sampling_probability=p, **call))
        theirs = float(tfrs.tasks.Retrieval(**kwargs)(q, c, candidate_ids=ids, candidate_sampling_probability=p,
                                                      **call))
        np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    with pytest.raises(ValueError, match="either transforms or"):
        Retrieval(transforms=[Temperature(0.2)], temperature=0.2)


def test_chain_order_and_errors():
    with pytest.raises(ValueError, match="temperature must be positive"):
        Temperature(0.0)
    q, c, _ = random_batch(seed=4)
    with pytest.raises(ValueError, match="candidate ids"):
        Retrieval(transforms=[RemoveAccidentalHits()])(q, c)


def test_works_inside_tf_function():
    q, c, p = random_batch(seed=5)
    task = Retrieval(transforms=default_chain(0.3))
    ids = tf.constant(IDS)
    graph = tf.function(lambda q, c, p: task(q, c, candidate_ids=ids, candidate_sampling_probability=p))
    np.testing.assert_allclose(float(graph(q, c, p)), float(task(q, c, candidate_ids=ids,
                                                                   candidate_sampling_probability=p)), rtol=1e-6)


def _candidate_gradient(transforms, ids, sample_weight, seed=6):
    q, c, _ = random_batch(seed=seed, n=len(ids))
    c = tf.Variable(c)
    task = Retrieval(transforms=transforms)
    with tf.GradientTape() as tape:
        loss = task(tf.constant(q), c, sample_weight=tf.constant(sample_weight, tf.float32),
                    candidate_ids=tf.constant(ids))
    return tape.gradient(loss, c).numpy()


def test_accidental_hit_column_gets_no_gradient():
    # rows 0 and 1 have the same item; only row 0 counts (weight 0 on row 1), so column 1 enters the
    # loss only as row 0's (accidental) negative
    grad = _candidate_gradient([RemoveAccidentalHits()], ["x", "x"], [1.0, 0.0])
    np.testing.assert_array_equal(grad[1], np.zeros(4))
    # row 0 has no negative left, so its softmax is certain and nothing gets a gradient
    np.testing.assert_array_equal(grad[0], np.zeros(4))
    # without the removal the same column is a negative and does get a gradient
    grad = _candidate_gradient([], ["x", "x"], [1.0, 0.0])
    assert np.abs(grad[1]).sum() > 1e-6


def test_accidental_hit_gradient_three_rows():
    grad = _candidate_gradient(default_chain(0.5), ["x", "x", "y"], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(grad[1], np.zeros(4))  # same id as row 0's positive
    assert np.abs(grad[2]).sum() > 1e-6                   # a true negative
    assert np.abs(grad[0]).sum() > 1e-6                   # the positive


class QueryNormPenalty(AuxiliaryLoss):
    """Mean squared norm of the query embeddings (records the context it saw)."""

    def call(self, context):
        self.seen = context
        return tf.reduce_mean(tf.reduce_sum(tf.square(context.query_embeddings), axis=-1))


@pytest.mark.parametrize("weight", [1.0, 0.25])
def test_auxiliary_loss_is_added_with_its_weight(weight):
    q, c, p = random_batch(seed=7)
    ids = tf.constant(IDS)
    base = float(Retrieval(transforms=default_chain(0.5))(q, c, candidate_ids=ids, candidate_sampling_probability=p))
    aux = QueryNormPenalty(weight=weight)
    features = {"user": tf.constant(["u"] * 6)}
    total = float(Retrieval(transforms=default_chain(0.5), auxiliary_losses=[aux])(
        q, c, candidate_ids=ids, candidate_sampling_probability=p, features=features))
    value = float(np.mean(np.sum(q.astype(np.float64) ** 2, axis=1)))
    np.testing.assert_allclose(total, base + weight * value, rtol=1e-5)
    assert aux.seen.features is features
    assert aux.seen.candidate_ids.numpy().tolist() == [s.encode() for s in IDS]
    np.testing.assert_allclose(aux.seen.candidate_sampling_probability, p)


def test_custom_transform_sees_the_previous_logits():
    class AddMargin(LogitTransform):
        """Subtract a margin from the positive logits (AM-softmax style)."""

        def call(self, logits, labels, context):
            return logits - 0.5 * labels, labels

    q, c, _ = random_batch(seed=8)
    loss = float(Retrieval(transforms=[Temperature(2.0), AddMargin()])(q, c))
    logits = q.astype(np.float64) @ c.T / 2.0 - 0.5 * np.eye(6)
    np.testing.assert_allclose(loss, reference_loss(logits), rtol=1e-4)


def test_batch_metrics_and_loss_metrics():
    q, c, p = random_batch(seed=9, n=6, dim=2)
    ids = tf.constant(IDS)
    top1 = keras.metrics.TopKCategoricalAccuracy(k=1, name="batch_recall_at_1")
    top3 = keras.metrics.TopKCategoricalAccuracy(k=3, name="batch_recall_at_3")
    loss_mean = keras.metrics.Mean(name="loss")
    task = Retrieval(transforms=default_chain(0.5), batch_metrics=[top1, top3], loss_metrics=[loss_mean])
    loss = float(task(q, c, candidate_ids=ids, candidate_sampling_probability=p, compute_metrics=False))

    logits = reference_logits(q, c, IDS, p, 0.5)
    # rank of the positive among the row's logits
    ranks = (logits > logits[np.arange(6), np.arange(6)][:, None]).sum(axis=1)
    assert float(top1.result()) == pytest.approx(np.mean(ranks < 1))
    assert float(top3.result()) == pytest.approx(np.mean(ranks < 3))
    assert 0 < np.mean(ranks < 3) and np.mean(ranks < 1) < 1  # the data is not degenerate
    assert float(loss_mean.result()) == pytest.approx(loss, rel=1e-6)

    # compute_batch_metrics=False leaves the batch metrics alone (the loss metric still updates)
    before = (float(top1.count), float(top3.count))
    task(q, c, candidate_ids=ids, candidate_sampling_probability=p, compute_metrics=False,
         compute_batch_metrics=False)
    assert (float(top1.count), float(top3.count)) == before
    assert float(loss_mean.count) == 2


def test_factorized_metrics_use_candidate_ids():
    q, c, _ = random_batch(seed=10, n=4)
    candidates = tf.data.Dataset.from_tensor_slices((tf.constant(IDS[:4]), c)).batch(2)
    metric = tfrs.metrics.FactorizedTopK(candidates=tfrs.layers.factorized_top_k.BruteForce().index_from_dataset(
        candidates), ks=(1, 4))
    task = Retrieval(metrics=metric)
    task(q, c, candidate_ids=tf.constant(IDS[:4]))
    results = {m.name: float(m.result()) for m in metric.metrics}
    assert results["factorized_top_k/top_4_categorical_accuracy"] == 1.0  # every id is among the 4 items
    # not computed when asked not to
    metric.reset_states()
    task(q, c, candidate_ids=tf.constant(IDS[:4]), compute_metrics=False)
    assert all(float(m.result()) == 0.0 for m in metric.metrics)
