"""Dual augmented towers and generative interaction: loss values against NumPy, stop-gradient paths,
and an item tower that still needs item features alone."""
import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import numpy as np
import pytest
import tensorflow as tf

from tfrec_towers.config import Config, packaged
from tfrec_towers.towers.dual_augmented import AugmentedVector, CategoryAlignmentLoss, MimicLoss
from tfrec_towers.features.stats import FeatureStats
from tfrec_towers.model import build_model
from tfrec_towers.tasks import RetrievalContext

USERS = ["u0", "u1", "u2"]
ITEMS = ["i0", "i1", "i2", "i3"]


def stats():
    return FeatureStats(
        num_examples=4,
        vocab_counts={"user_id": {u: 1 for u in USERS}, "item_id": {i: 1 for i in ITEMS},
                      "user_age_bucket": {"a": 1}, "user_gender": {"M": 1}, "user_occupation": {"x": 1},
                      "item_genres": {"g1": 1, "g2": 1}},
        item_counts={i: 1 for i in ITEMS}, num_filtered=0)


def batch():
    return {"user_id": tf.constant(["u0", "u1", "u2", "u1"]), "user_age_bucket": tf.constant(["a"] * 4),
            "user_gender": tf.constant(["M"] * 4), "user_occupation": tf.constant(["x"] * 4),
            "timestamp": tf.constant([0, 3600, 7200, 86400], tf.int64),
            "item_history": tf.constant([["i1", "i2"], ["i0", ""], ["i3", "i1"], ["", ""]]),
            "item_id": tf.constant(["i0", "i1", "i2", "i3"]),
            "item_genres": tf.constant([["g1", ""], ["g2", "g1"], ["g1", ""], ["g2", ""]]),
            "item_title": tf.constant(["a film", "b film", "c", "d e"]), "label": tf.constant([1, 1, 0, 1], tf.int64)}


def model_with(*overrides):
    config = Config.load(packaged("default")).with_overrides(list(overrides))
    model = build_model(config, stats())
    features = batch()
    model.query_tower(features)
    model.candidate_tower(features)
    return config, model, features


def test_mimic_loss_matches_numpy_over_positive_pairs_and_stops_gradient_to_the_towers():
    a_u = AugmentedVector("user_id", USERS, 3)
    a_v = AugmentedVector("item_id", ITEMS, 3)
    features = batch()
    q = tf.Variable(tf.random.normal([4, 3], seed=1))
    p = tf.Variable(tf.random.normal([4, 3], seed=2))
    labels = tf.constant([1.0, 1.0, 0.0, 1.0])
    loss = MimicLoss(a_u, a_v, weight=0.5)
    with tf.GradientTape(persistent=True) as tape:
        value = loss(RetrievalContext(q, p, features=features, labels=labels))
    u, v = a_u(features).numpy(), a_v(features).numpy()
    pos = labels.numpy() > 0
    want = 0.5 * (((u - p.numpy()) ** 2).sum(1)[pos].mean() + ((v - q.numpy()) ** 2).sum(1)[pos].mean())
    np.testing.assert_allclose(loss.weight * float(value), want, rtol=1e-5)  # the task applies the weight
    assert tape.gradient(value, q) is None and tape.gradient(value, p) is None
    grads = tape.gradient(value, a_u.trainable_weights + a_v.trainable_weights)
    assert all(g is not None and float(tf.reduce_sum(tf.abs(tf.convert_to_tensor(g)))) > 0 for g in grads)


def test_category_alignment_matches_numpy():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(7, 3)).astype(np.float32)
    cats = np.array(["a", "b", "a", "c", "a", "b", "d"])
    value = CategoryAlignmentLoss("cat", weight=1.0)(
        RetrievalContext(tf.constant(emb), tf.constant(emb), features={"cat": tf.constant(cats)}))

    def cov(x):
        centred = x - x.mean(0)
        return centred.T @ centred / len(x)

    majority = cov(emb[cats == "a"])
    want = sum(((cov(emb[cats == k]) - majority) ** 2).sum() for k in ("b",))  # c and d have one item
    np.testing.assert_allclose(float(value), want, rtol=1e-4)


def test_dual_augmented_model_trains_the_vectors_into_both_towers():
    _, model, features = model_with("model.dual_augmented={category: item_genres, alignment_weight: 0.1}")
    names = [w.name for w in model.query_tower.trainable_weights]
    assert any("a_u" in n for n in names)
    assert any("a_v" in n for n in [w.name for w in model.candidate_tower.trainable_weights])
    with tf.GradientTape() as tape:
        loss = model.compute_loss(features, training=True)
    assert np.isfinite(float(loss))
    grads = tape.gradient(loss, model.trainable_weights)
    assert all(g is not None for g in grads)


def test_generative_interaction_item_tower_needs_item_features_alone():
    config, model, features = model_with("model.generative={targets: [item_history]}")
    item_only = {f.name: features[f.name] for f in config.features.candidate}
    embeddings = model.candidate_tower(item_only)
    np.testing.assert_allclose(embeddings.numpy(), model.candidate_tower(features).numpy(), rtol=1e-6)
    query_only = {f.name: features[f.name] for f in config.features.query}
    changed = dict(item_only, **{k: tf.reverse(v, [0]) for k, v in query_only.items()})
    np.testing.assert_allclose(model.candidate_tower(changed).numpy(), embeddings.numpy(), rtol=1e-6)


def test_reconstruction_loss_matches_numpy_and_stops_gradient_into_the_query_side():
    from tfrec_towers.towers.generative_interaction import ReconstructionLoss

    config, model, features = model_with("model.generative={targets: [item_history]}")
    rec = next(a for a in model.task.auxiliary_losses if isinstance(a, ReconstructionLoss))
    q = model.query_tower(features)
    p = model.candidate_tower(features)
    labels = tf.cast(features["label"], tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        value = rec(RetrievalContext(q, p, features=features, labels=labels))
    target = model.query_tower.encode(features, ["item_history"]).numpy()
    generated = rec.refs.generator(features, model.candidate_tower.encode(features)).numpy()
    pos = labels.numpy() > 0
    np.testing.assert_allclose(float(value), ((generated - target) ** 2).sum(1)[pos].mean(), rtol=1e-5)
    # The history shares the item-ID table with the item tower (reached through x_v); every other
    # query-side weight is only behind the stop-gradient target.
    item_side = {id(w) for w in model.candidate_tower.trainable_weights}
    query_only = [w for w in model.query_tower.trainable_weights if id(w) not in item_side]
    assert query_only and all(g is None for g in tape.gradient(value, query_only))
    generator_grads = tape.gradient(value, rec.refs.generator.trainable_weights)
    assert all(g is not None for g in generator_grads)


def test_tower_extension_configuration_errors_name_the_problem():
    with pytest.raises(ValueError, match="must name query-side features"):
        model_with("model.generative={targets: [item_title]}")
    with pytest.raises(ValueError, match="needs model.dual_augmented.category"):
        model_with("model.dual_augmented={alignment_weight: 0.1}")


def test_extension_weights_have_one_checkpoint_path_under_their_tower(tmp_path):
    """The towers are built with their extra inputs (issue 27): a_u is the query tower's extra input 0, a_v and
    the generator the candidate tower's 0 and 1, as when they were appended after building; the losses that
    use them add no second path (warm starts and old checkpoints rely on these keys)."""
    _, model, _ = model_with("model.dual_augmented={category: item_genres, alignment_weight: 0.1}",
                             "model.generative={targets: [item_history]}")
    model.save_weights(str(tmp_path / "w"))
    keys = [k for k, _ in tf.train.list_variables(str(tmp_path / "w"))]
    assert "query_tower/extra_inputs/0/embedding/embeddings/.ATTRIBUTES/VARIABLE_VALUE" in keys
    assert "candidate_tower/extra_inputs/0/embedding/embeddings/.ATTRIBUTES/VARIABLE_VALUE" in keys
    assert any(k.startswith("candidate_tower/extra_inputs/1/mlp/") for k in keys)
    assert not any(k.startswith("task/auxiliary_losses") for k in keys)
    assert [layer.name for layer in model.query_tower.extra_inputs] == ["a_u"]
    assert [layer.name for layer in model.candidate_tower.extra_inputs] == ["a_v", "pseudo_query"]
