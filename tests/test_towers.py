"""Query/candidate towers: shapes, normalisation and the three sharing modes."""
import tfrec_towers  # noqa: F401  (must precede tensorflow: selects Keras 2)

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tfrec_towers.features import spec as S
from tfrec_towers.features.stats import FeatureStats
from tfrec_towers.towers import build_towers as _build_towers


def build_towers(*args, hidden=(16,), **kwargs):
    """Seeded: with random weights every ReLU of a row can be dead, and a zero vector has no unit norm."""
    keras.utils.set_random_seed(1234)
    return _build_towers(*args, hidden=hidden, **kwargs)

STATS = FeatureStats(
    num_examples=4,
    vocab_counts={"user_id": {"u1": 2, "u2": 1}, "item_id": {"i1": 3, "i2": 2, "i3": 1},
                  "genres": {"drama": 2, "comedy": 1}},
    numeric_stats={"age": {"mean": 30.0, "std": 10.0}},
)


def user_item_spec():
    return S.FeatureSpec(
        query=[S.IdFeature("user_id", embedding_dim=4),
               S.SequenceFeature("hist", vocab_from="item_id", embedding_dim=4, max_len=3),
               S.NumericFeature("age"),
               S.TimestampFeature("ts", embedding_dim=2)],
        candidate=[S.IdFeature("item_id", embedding_dim=4),
                   S.CategoricalFeature("genres", multivalued=True, embedding_dim=3),
                   S.TextFeature("title", num_buckets=32, embedding_dim=3)],
    )


def user_item_batch():
    return {
        "user_id": tf.constant(["u1", "u2", "zz"]),
        "hist": tf.constant([["i1", "i2"], ["i3", ""], ["", ""]]),
        "age": tf.constant([25.0, 40.0, 31.0]),
        "ts": tf.constant([0, 1_700_000_000, 86400], tf.int64),
        "item_id": tf.constant(["i2", "i1", "unknown"]),
        "genres": tf.constant([["drama", "comedy"], ["drama", ""], ["", ""]]),
        "title": tf.constant(["Good night", "", "moon"]),
        "label": tf.constant([1, 1, 0]),  # extra keys are ignored
    }


def text_spec():
    return S.FeatureSpec(query=[S.TextFeature("query_text", num_buckets=64, embedding_dim=4)],
                         candidate=[S.TextFeature("doc_text", num_buckets=64, embedding_dim=4),
                                    S.IdFeature("item_id", hash_buckets=10)])


@pytest.mark.parametrize("sharing", ["none", "projection"])
def test_output_shape_and_unit_norm(sharing):
    q_tower, c_tower = build_towers(user_item_spec(), STATS, output_dim=5, sharing=sharing)
    batch = user_item_batch()
    for tower in (q_tower, c_tower):
        out = tower(batch).numpy()
        assert out.shape == (3, 5)
        assert np.isfinite(out).all()
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_without_normalize_norms_are_not_forced_to_one():
    q_tower, _ = build_towers(user_item_spec(), STATS, output_dim=5, normalize=False)
    out = q_tower(user_item_batch()).numpy()
    assert out.shape == (3, 5)
    assert not np.allclose(np.linalg.norm(out, axis=1), 1.0)
    # and normalising it is exactly what normalize=True adds
    q_tower.normalize = True
    normed = q_tower(user_item_batch()).numpy()
    np.testing.assert_allclose(normed, out / np.linalg.norm(out, axis=1, keepdims=True), rtol=1e-5)


def test_output_dim_zero_has_no_projection():
    q_tower, c_tower = build_towers(user_item_spec(), STATS, hidden=(6,), output_dim=0)
    assert q_tower(user_item_batch()).shape == (3, 6)
    assert c_tower(user_item_batch()).shape == (3, 6)


def test_sharing_none_has_separate_projections():
    q_tower, c_tower = build_towers(user_item_spec(), STATS, output_dim=5, sharing="none")
    q_tower(user_item_batch()), c_tower(user_item_batch())
    assert q_tower.projection is not c_tower.projection
    assert q_tower.projection.kernel is not c_tower.projection.kernel


def test_sharing_projection_shares_the_last_dense_only():
    q_tower, c_tower = build_towers(user_item_spec(), STATS, output_dim=5, sharing="projection")
    batch = user_item_batch()
    q_tower(batch), c_tower(batch)
    assert q_tower.projection is c_tower.projection
    assert q_tower.projection.kernel is c_tower.projection.kernel
    assert q_tower.projection.bias is c_tower.projection.bias
    # the hidden layers stay asymmetric
    assert q_tower.hidden is not c_tower.hidden
    q_vars = {v.ref() for v in q_tower.trainable_variables}
    c_vars = {v.ref() for v in c_tower.trainable_variables}
    item_table = c_tower.encoders[0].table.embedding.embeddings  # also used by the history encoder
    assert q_vars & c_vars == {q_tower.projection.kernel.ref(), q_tower.projection.bias.ref(), item_table.ref()}


def test_shared_sequence_and_item_tables_across_towers():
    q_tower, c_tower = build_towers(user_item_spec(), STATS, output_dim=5)
    batch = user_item_batch()
    q_tower(batch), c_tower(batch)
    q_vars = {v.ref() for v in q_tower.trainable_variables}
    c_vars = {v.ref() for v in c_tower.trainable_variables}
    shared = q_vars & c_vars
    assert len(shared) == 1  # the item_id embedding table, used by the history encoder
    (ref,) = shared
    assert ref.deref().shape == (4, 4)  # 3 items + 1 OOV bucket


def test_sharing_full_same_text_same_embedding():
    spec = S.FeatureSpec(query=[S.TextFeature("query_text", num_buckets=64, embedding_dim=4)],
                         candidate=[S.TextFeature("doc_text", num_buckets=64, embedding_dim=4)], item_id="doc_text")
    q_tower, c_tower = build_towers(spec, FeatureStats(), output_dim=5, sharing="full")
    texts = tf.constant(["good night moon", "hello", ""])
    q = q_tower({"query_text": texts}).numpy()
    c = c_tower({"doc_text": texts}).numpy()
    assert q.shape == (3, 5)
    np.testing.assert_allclose(q, c, rtol=1e-6)
    # different text gives a different embedding (the towers do look at their input)
    other = c_tower({"doc_text": tf.constant(["completely other", "words", "x"])}).numpy()
    assert not np.allclose(q, other)
    assert {v.ref() for v in q_tower.trainable_variables} == {v.ref() for v in c_tower.trainable_variables}


def test_sharing_full_leaves_an_unpaired_item_id_out_of_the_tower():
    spec = text_spec()  # candidate = its text plus an item_id that only identifies documents
    q_tower, c_tower = build_towers(spec, FeatureStats(), output_dim=5, sharing="full")
    assert spec.item_id not in c_tower.input_names_
    texts = tf.constant(["good night moon", "hello"])
    q = q_tower({"query_text": texts}).numpy()
    c = c_tower({"doc_text": texts, spec.item_id: tf.constant(["d1", "d2"])}).numpy()
    np.testing.assert_allclose(q, c, rtol=1e-6)


def test_sharing_full_rejects_unpaired_features():
    spec = S.FeatureSpec(query=[S.TextFeature("query_text")],
                         candidate=[S.TextFeature("doc_text"), S.CategoricalFeature("doc_lang"),
                                    S.IdFeature("item_id")])
    with pytest.raises(ValueError, match="projection"):
        build_towers(spec, FeatureStats(), output_dim=5, sharing="full")


@pytest.mark.parametrize("spec", [
    user_item_spec(),
    # same types and options on both sides, but user IDs and item IDs have different vocabularies
    S.FeatureSpec(query=[S.IdFeature("user_id")], candidate=[S.IdFeature("item_id")]),
], ids=["mixed", "ids"])
def test_sharing_full_rejects_user_item_features(spec):
    with pytest.raises(ValueError, match=r"sharing 'full'.*'projection'"):
        build_towers(spec, STATS, output_dim=5, sharing="full")


def test_unknown_sharing_is_rejected():
    with pytest.raises(ValueError, match="sharing must be one of"):
        build_towers(user_item_spec(), STATS, sharing="half")


def test_missing_input_is_a_key_error_naming_it():
    q_tower, c_tower = build_towers(user_item_spec(), STATS, output_dim=5)
    batch = user_item_batch()
    del batch["age"]
    with pytest.raises(KeyError, match="age"):
        q_tower(batch)
    c_tower(batch)  # the candidate tower does not need it
    del batch["title"]
    with pytest.raises(KeyError, match="title"):
        c_tower(batch)


def test_gradients_reach_all_tower_variables():
    q_tower, c_tower = build_towers(user_item_spec(), STATS, output_dim=5)
    batch = user_item_batch()
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(q_tower(batch) * c_tower(batch))
    variables = q_tower.trainable_variables + c_tower.trainable_variables
    grads = tape.gradient(loss, variables)
    missing = [v.name for v, g in zip(variables, grads) if g is None]
    assert not missing


class _Constant(keras.layers.Layer):
    """An extra input: ``value`` in every one of ``width`` columns, whatever the features."""

    def __init__(self, value, width, **kwargs):
        super().__init__(**kwargs)
        self.value, self.width = value, width

    def call(self, features, x):
        return tf.fill([tf.shape(x)[0], self.width], self.value)


def test_extensions_are_given_to_the_builder_with_each_sides_encodings():
    """Issue 27: extra inputs are passed into ``build_towers``; the towers are created with them and the
    extension sees each side's encoders (``Encodings``) before the towers exist."""
    from tfrec_towers.towers import ExtraInput, Tower, TowerExtensions

    seen = {}

    def extensions(query, candidate):
        seen.update(query=query, candidate=candidate)
        width = candidate.width(user_item_batch())
        return TowerExtensions(query=[ExtraInput(_Constant(1.0, 2, name="concat"))],
                               candidate=[ExtraInput(_Constant(0.0, width, name="zeros"), additive=True)])

    q_tower, c_tower = build_towers(user_item_spec(), STATS, output_dim=5, extensions=extensions)
    plain_q, _ = build_towers(user_item_spec(), STATS, output_dim=5)
    batch = user_item_batch()
    c_layers = Tower(list(zip(c_tower.feature_names, c_tower.encoders)), c_tower.hidden, c_tower.projection)
    assert seen["query"].names == q_tower.feature_names == ["user_id", "hist", "age", "ts"]
    assert seen["candidate"].names == c_tower.feature_names
    np.testing.assert_allclose(seen["query"](batch).numpy(), q_tower.encode(batch).numpy())
    np.testing.assert_allclose(seen["query"].select(["ts", "user_id"])(batch).numpy(),
                               q_tower.encode(batch, ["user_id", "ts"]).numpy())
    with pytest.raises(KeyError, match="not an input feature"):
        seen["query"].select(["title"])
    assert [layer.name for layer in q_tower.extra_inputs] == ["concat"]
    assert [layer.name for layer in c_tower.extra_inputs] == ["zeros"]
    # additive zeros change nothing (the same layers without them); concatenated columns widen the MLP's input
    np.testing.assert_allclose(c_tower(batch).numpy(), c_layers(batch).numpy(), rtol=1e-6)
    assert q_tower(batch).shape == (3, 5) and plain_q(batch).shape == (3, 5)
    assert q_tower.hidden.layers[0].kernel.shape[0] == plain_q.hidden.layers[0].kernel.shape[0] + 2


def test_towers_are_complete_without_extensions():
    q_tower, c_tower = build_towers(user_item_spec(), STATS, output_dim=5)
    assert q_tower.extra_inputs == [] and c_tower.extra_inputs == []
