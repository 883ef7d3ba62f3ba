"""Per-feature encoders built through EncoderFactory, checked against NumPy references."""
import tfrec_towers  # noqa: F401  (must precede tensorflow: selects Keras 2)

import datetime

import numpy as np
import pytest
import tensorflow as tf

from tfrec_towers.features import spec as S
from tfrec_towers.features.encoders import AttentionPooling, EncoderFactory, TimestampEncoder
from tfrec_towers.features.stats import FeatureStats

# vocabulary order is by descending count: a, b, c (StringLookup indices 1, 2, 3; 0 is the OOV bucket)
ITEM_COUNTS = {"a": 5, "b": 3, "c": 2}


def make_stats(vocab=None, numeric=None):
    return FeatureStats(num_examples=10, vocab_counts=vocab or {}, numeric_stats=numeric or {})


def make_factory(query, candidate=None, vocab=None, numeric=None):
    candidate = candidate or [S.IdFeature("item_id", embedding_dim=4)]
    spec = S.FeatureSpec(query=list(query), candidate=list(candidate))
    return spec, EncoderFactory(spec, make_stats(vocab, numeric))


def table_weights(encoder):
    return encoder.table.embedding.embeddings.numpy()


def row_of(encoder, value):
    """Embedding row of a vocabulary value, through the lookup's own vocabulary listing."""
    vocab = encoder.table.lookup.get_vocabulary()
    return table_weights(encoder)[vocab.index(value)]


# --- categorical -----------------------------------------------------------------------------------
def test_categorical_single_value_is_its_embedding_row():
    _, factory = make_factory([S.CategoricalFeature("country", embedding_dim=3)],
                              vocab={"country": {"fr": 4, "de": 2, "it": 1}})
    enc = factory.build(S.CategoricalFeature("country", embedding_dim=3))
    out = enc(tf.constant(["de", "fr", "it", "de"])).numpy()
    assert out.shape == (4, 3)
    # vocabulary sorted by count, after the single OOV bucket at index 0
    assert enc.table.lookup.get_vocabulary() == ["[UNK]", "fr", "de", "it"]
    w = table_weights(enc)
    assert w.shape == (4, 3)
    np.testing.assert_allclose(out, w[[2, 1, 3, 2]], rtol=1e-6)


def test_unknown_values_share_the_oov_row():
    feat = S.CategoricalFeature("country", embedding_dim=3)
    _, factory = make_factory([feat], vocab={"country": {"fr": 4, "de": 2}})
    enc = factory.build(feat)
    out = enc(tf.constant(["zz", "unseen", "fr"])).numpy()
    w = table_weights(enc)
    np.testing.assert_allclose(out[0], w[0], rtol=1e-6)
    np.testing.assert_allclose(out[1], w[0], rtol=1e-6)
    assert not np.allclose(out[2], w[0])
    np.testing.assert_allclose(out[2], row_of(enc, "fr"), rtol=1e-6)


def test_vocabulary_option_overrides_stats_and_min_count_applies():
    stats = FeatureStats(vocab_counts={"c": {"x": 5, "y": 1, "z": 3}}, vocab_limits={"c": (2, None)})
    assert stats.vocabulary("c") == ["x", "z"]  # y below min_count
    feat = S.CategoricalFeature("c", vocabulary=["p", "q"], embedding_dim=2)
    spec = S.FeatureSpec(query=[feat], candidate=[S.IdFeature("item_id")])
    enc = EncoderFactory(spec, make_stats()).build(feat)  # no stats needed for a fixed vocabulary
    assert enc.table.lookup.get_vocabulary() == ["[UNK]", "p", "q"]


def test_empty_vocabulary_is_an_error_naming_the_feature():
    feat = S.CategoricalFeature("country")
    _, factory = make_factory([feat], vocab={"country": {}})
    with pytest.raises(ValueError, match="country"):
        factory.build(feat)


def test_hashing_mode():
    feat = S.CategoricalFeature("tag", hash_buckets=7, embedding_dim=3)
    _, factory = make_factory([feat])  # no vocabulary computed: hashing needs none
    enc = factory.build(feat)
    values = ["a", "b", "some long value", "a"]
    out = enc(tf.constant(values)).numpy()
    w = table_weights(enc)
    assert w.shape == (7, 3)
    buckets = tf.strings.to_hash_bucket_fast(values, 7).numpy()
    np.testing.assert_allclose(out, w[buckets], rtol=1e-6)


def test_multivalued_is_masked_mean():
    feat = S.CategoricalFeature("genres", multivalued=True, embedding_dim=3)
    _, factory = make_factory([feat], vocab={"genres": ITEM_COUNTS})
    enc = factory.build(feat)
    x = tf.constant([["a", "b", ""], ["c", "", ""], ["", "", ""], ["a", "a", "c"]])
    out = enc(x).numpy()
    a, b, c = (row_of(enc, v) for v in "abc")
    np.testing.assert_allclose(out[0], (a + b) / 2, rtol=1e-5)
    np.testing.assert_allclose(out[1], c, rtol=1e-5)
    np.testing.assert_array_equal(out[2], np.zeros(3))
    np.testing.assert_allclose(out[3], (2 * a + c) / 3, rtol=1e-5)
    assert np.isfinite(out).all()


# --- sequence --------------------------------------------------------------------------------------
def _seq_factory(pooling="mean", max_len=2, share_embedding=True):
    item = S.IdFeature("item_id", embedding_dim=4)
    hist = S.SequenceFeature("hist", vocab_from="item_id", share_embedding=share_embedding,
                             embedding_dim=4, max_len=max_len, pooling=pooling)
    _, factory = make_factory([hist], [item], vocab={"item_id": ITEM_COUNTS})
    return factory, item, hist


HISTORY = tf.constant([["a", "b", "c", "b"],   # keep the last 2: c, b
                       ["a", "c", "", ""],     # a, c
                       ["c", "", "", ""],      # c
                       ["", "", "", ""]])      # empty


@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_sequence_keeps_last_max_len_and_pools(pooling):
    factory, _, hist = _seq_factory(pooling)
    enc = factory.build(hist)
    out = enc(HISTORY).numpy()
    a, b, c = (row_of(enc, v) for v in "abc")
    div = 2.0 if pooling == "mean" else 1.0
    np.testing.assert_allclose(out[0], (c + b) / div, rtol=1e-5)
    np.testing.assert_allclose(out[1], (a + c) / div, rtol=1e-5)
    np.testing.assert_allclose(out[2], c, rtol=1e-5)
    np.testing.assert_array_equal(out[3], np.zeros(4))


def test_sequence_shorter_than_max_len_keeps_everything():
    factory, _, hist = _seq_factory("mean", max_len=10)
    enc = factory.build(hist)
    out = enc(HISTORY[:, :3]).numpy()
    a, b, c = (row_of(enc, v) for v in "abc")
    np.testing.assert_allclose(out[0], (a + b + c) / 3, rtol=1e-5)
    np.testing.assert_allclose(out[1], (a + c) / 2, rtol=1e-5)


def _attention_reference(att: AttentionPooling, values: np.ndarray, mask: np.ndarray):
    w1, b1 = att.proj.kernel.numpy(), att.proj.bias.numpy()
    v = att.score.kernel.numpy()[:, 0]
    logits = np.tanh(values @ w1 + b1) @ v  # [B, L]
    out = np.zeros((values.shape[0], values.shape[2]), np.float64)
    weights = np.zeros(logits.shape)
    for i in range(values.shape[0]):
        m = mask[i]
        if m.any():
            e = np.exp(logits[i, m] - logits[i, m].max())
            weights[i, m] = e / e.sum()
        out[i] = weights[i] @ values[i]
    return out, weights


def test_attention_pooling_matches_numpy_and_weights_sum_to_one():
    factory, _, hist = _seq_factory("attention", max_len=2)
    enc = factory.build(hist)
    out = enc(HISTORY).numpy()
    att = enc.attention
    assert isinstance(att, AttentionPooling)
    a, b, c = (row_of(enc, v) for v in "abc")
    z = np.zeros(4, np.float32)
    # the last max_len=2 items of each row, right-padded
    values = np.stack([[c, b], [a, c], [c, z], [z, z]])
    mask = np.array([[True, True], [True, True], [True, False], [False, False]])
    expected, weights = _attention_reference(att, values, mask)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(weights[:3].sum(axis=1), 1.0)
    np.testing.assert_array_equal(out[3], z)


def test_attention_weights_are_normalised_over_unmasked_positions():
    att = AttentionPooling(units=5)
    rng = np.random.default_rng(0)
    v = rng.normal(size=(3, 1, 4)).astype(np.float32)
    values = np.repeat(v, 4, axis=1)
    garbage = rng.normal(size=values.shape).astype(np.float32) * 10
    mask = np.array([[True, True, False, False], [True, False, False, False], [True, True, True, True]])
    values = np.where(mask[..., None], values, garbage)
    out = att(tf.constant(values), tf.constant(mask)).numpy()
    # every unmasked value of a row is the same vector: the output is that vector iff the weights
    # are 0 on masked positions and sum to 1 on the others
    np.testing.assert_allclose(out, v[:, 0], rtol=1e-5, atol=1e-6)
    expected, _ = _attention_reference(att, values, mask)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("pooling", ["mean", "sum", "attention"])
def test_empty_history_gives_zeros_and_finite_gradients(pooling):
    factory, _, hist = _seq_factory(pooling, max_len=3)
    enc = factory.build(hist)
    for x in (tf.constant([["", "", ""], ["", "", ""]]), tf.constant([["a", "b", ""], ["", "", ""]])):
        with tf.GradientTape() as tape:
            out = enc(x)
            loss = tf.reduce_sum(tf.square(out - 1.0))
        np.testing.assert_array_equal(out.numpy()[1], np.zeros(4))
        assert np.isfinite(out.numpy()).all()
        grads = tape.gradient(loss, enc.trainable_variables)
        assert grads and all(g is not None for g in grads)
        for g in grads:
            assert np.isfinite(tf.convert_to_tensor(g).numpy()).all()


def test_share_embedding_uses_the_item_id_variable():
    factory, item, hist = _seq_factory("mean", share_embedding=True)
    item_enc, hist_enc = factory.build(item), factory.build(hist)
    item_out = item_enc(tf.constant(["b", "a"])).numpy()
    hist_out = hist_enc(tf.constant([["b", ""], ["a", ""]])).numpy()
    assert item_enc.table is hist_enc.table
    assert item_enc.table.embedding.embeddings is hist_enc.table.embedding.embeddings
    np.testing.assert_allclose(hist_out, item_out, rtol=1e-6)
    # a gradient through the history updates the candidate embedding table
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(hist_enc(tf.constant([["b", ""]])))
    (g,) = tape.gradient(loss, [item_enc.table.embedding.embeddings])
    assert g is not None


def test_share_embedding_false_gives_own_table_with_same_vocabulary():
    factory, item, hist = _seq_factory("mean", share_embedding=False)
    item_enc, hist_enc = factory.build(item), factory.build(hist)
    item_enc(tf.constant(["a"]))
    hist_enc(tf.constant([["a"]]))
    assert item_enc.table is not hist_enc.table
    assert item_enc.table.embedding.embeddings is not hist_enc.table.embedding.embeddings
    assert hist_enc.table.lookup.get_vocabulary() == item_enc.table.lookup.get_vocabulary()


# --- numeric ---------------------------------------------------------------------------------------
def test_numeric_normalises_with_stats():
    feat = S.NumericFeature("age")
    _, factory = make_factory([feat], numeric={"age": {"mean": 10.0, "std": 2.0}})
    out = factory.build(feat)(tf.constant([10.0, 14.0, 4.0])).numpy()
    np.testing.assert_allclose(out, [[0.0], [2.0], [-3.0]])


def test_numeric_without_normalize_is_raw():
    feat = S.NumericFeature("age", normalize=False)
    _, factory = make_factory([feat])  # no statistics needed
    out = factory.build(feat)(tf.constant([3.5, -1.0])).numpy()
    np.testing.assert_allclose(out, [[3.5], [-1.0]])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_numeric_non_finite_raises_naming_the_feature(bad):
    feat = S.NumericFeature("user_age")
    _, factory = make_factory([feat], numeric={"user_age": {"mean": 1.0, "std": 1.0}})
    enc = factory.build(feat)
    with pytest.raises(tf.errors.InvalidArgumentError, match="user_age"):
        enc(tf.constant([1.0, bad]))


def test_numeric_impute_mean_maps_non_finite_to_zero():
    feat = S.NumericFeature("age", impute="mean")
    _, factory = make_factory([feat], numeric={"age": {"mean": 10.0, "std": 2.0}})
    out = factory.build(feat)(tf.constant([np.nan, 12.0, np.inf])).numpy()
    np.testing.assert_allclose(out, [[0.0], [1.0], [0.0]])


# --- timestamp -------------------------------------------------------------------------------------
TIMESTAMPS = [0, 1, 3599, 3600, 86399, 86400, 345600, 1_700_000_000, 1_700_050_000, 1_234_567_890,
              -1, -3601, -86400 * 3 - 5]


@pytest.mark.parametrize("offset", [0, 5, -8, 14])
def test_timestamp_buckets_match_datetime(offset):
    tz = datetime.timezone(datetime.timedelta(hours=offset))
    ts = tf.constant(TIMESTAMPS, tf.int64)
    got = {b: TimestampEncoder.bucketize(ts, b, offset * 3600).numpy().tolist()
           for b in ("hour", "dow", "hour_of_week")}
    for n, t in enumerate(TIMESTAMPS):
        dt = datetime.datetime.fromtimestamp(t, tz=tz)
        assert got["hour"][n] == dt.hour, t
        assert got["dow"][n] == dt.weekday(), t  # Monday = 0
        assert got["hour_of_week"][n] == dt.weekday() * 24 + dt.hour, t


def test_timestamp_encoder_concatenates_bucket_embeddings():
    feat = S.TimestampFeature("ts", buckets=("hour", "dow", "hour_of_week"), embedding_dim=2, utc_offset_hours=-5)
    _, factory = make_factory([feat])
    enc = factory.build(feat)
    ts = [1_700_000_000, 1_234_567_890, 0]
    out = enc(tf.constant(ts, tf.int64)).numpy()
    assert out.shape == (3, 6)
    tz = datetime.timezone(datetime.timedelta(hours=-5))
    hour_w, dow_w, how_w = (t.embeddings.numpy() for t in enc.tables)
    assert (hour_w.shape[0], dow_w.shape[0], how_w.shape[0]) == (24, 7, 168)
    for n, t in enumerate(ts):
        dt = datetime.datetime.fromtimestamp(t, tz=tz)
        expected = np.concatenate([hour_w[dt.hour], dow_w[dt.weekday()], how_w[dt.weekday() * 24 + dt.hour]])
        np.testing.assert_allclose(out[n], expected, rtol=1e-6)


# --- text ------------------------------------------------------------------------------------------
def _python_trigrams(text):
    out = []
    for word in text.lower().split():
        marked = f"#{word}#"
        out += [marked[i:i + 3] for i in range(len(marked) - 2)]
    return out


@pytest.mark.parametrize("combiner", ["mean", "sum"])
def test_text_encoder_pools_trigram_hash_rows(combiner):
    feat = S.TextFeature("title", num_buckets=50, embedding_dim=3, combiner=combiner)
    _, factory = make_factory([feat])
    enc = factory.build(feat)
    texts = ["good", "Good night", "", "a b"]
    out = enc(tf.constant(texts)).numpy()
    w = enc.embedding.embeddings.numpy()
    assert w.shape == (50, 3)
    for n, text in enumerate(texts):
        grams = _python_trigrams(text)
        if not grams:
            np.testing.assert_array_equal(out[n], np.zeros(3))
            continue
        ids = tf.strings.to_hash_bucket_fast(grams, 50).numpy()
        rows = w[ids]
        expected = rows.mean(axis=0) if combiner == "mean" else rows.sum(axis=0)
        np.testing.assert_allclose(out[n], expected, rtol=1e-5, atol=1e-7)


def test_unknown_feature_type_has_no_encoder():
    class Odd(S.Feature):
        type = "odd"

    _, factory = make_factory([S.TextFeature("t")])
    with pytest.raises(TypeError, match="Odd"):
        factory.build(Odd("x"))


def test_oov_rate_sends_that_share_of_training_lookups_to_the_oov_row_and_none_at_inference():
    """Cold start (issue 25.2): with ``oov_rate`` the OOV row is trained as "an unseen value"."""
    import tensorflow as tf
    from tfrec_towers.features.encoders import LookupEmbedding
    from tfrec_towers.features.spec import IdFeature

    table = LookupEmbedding(vocabulary=["a", "b"], dim=4, oov_rate=0.25, vocab_source="item_id")
    values = tf.constant(["a", "b"] * 20_000)
    oov = table.embedding(tf.constant([0]))[0]
    rows = table(values, training=True)
    share = float(tf.reduce_mean(tf.cast(tf.reduce_all(tf.equal(rows, oov), axis=1), tf.float32)))
    assert abs(share - 0.25) < 0.01, share
    assert not bool(tf.reduce_any(tf.reduce_all(tf.equal(table(values, training=False), oov), axis=1)))
    for bad in ({"oov_rate": 1.0}, {"oov_rate": 0.1, "hash_buckets": 8}, {"oov_rate": 0.1, "num_oov": 0}):
        with pytest.raises(ValueError, match="oov_rate"):
            IdFeature(name="item_id", **bad)
