"""Per-feature Keras encoders: model input tensor -> [batch, dim] float vector.

Every encoder takes the dense model input of its feature (see ``Feature.prepare``); ``""`` marks
padding in multi-valued string inputs and is masked. ``EncoderFactory`` builds them from the spec
and the training statistics and shares lookup and embedding tables where the spec asks for it; each
feature type picks its builder (``Feature.encoder(factory)``), so no type is told apart here.
"""
from typing import Dict, List, Optional, Tuple

import tensorflow as tf
import tf_keras as keras

from tfrec_towers.features import spec as S
from tfrec_towers.features.dssm_word_hashing import word_hash


__all__ = ["AttentionPooling", "EncoderFactory", "LookupEmbedding", "SequenceEncoder", "TextEncoder", "TimestampEncoder",
           "vocabulary_tables"]


def masked_pool(values: tf.Tensor, mask: tf.Tensor, mode: str) -> tf.Tensor:
    """[B, L, D] values, [B, L] bool mask -> [B, D]; an all-masked row gives zeros (mean/sum)."""
    m = tf.cast(mask, values.dtype)[..., None]
    total = tf.reduce_sum(values * m, axis=1)
    if mode == "sum":
        return total
    return total / tf.maximum(tf.reduce_sum(m, axis=1), 1.0)


class AttentionPooling(keras.layers.Layer):
    """Additive attention with a learned query: w = softmax_L(v^T tanh(W e_l + b)) over unmasked l.

    A two-tower query side has no target item to attend with, so the query is a learned vector
    (target-free attention); an all-masked row pools to zeros.
    """

    def __init__(self, units: int = 32, **kwargs):
        super().__init__(**kwargs)
        self.proj = keras.layers.Dense(units, activation="tanh")
        self.score = keras.layers.Dense(1, use_bias=False)

    def call(self, values, mask):
        logits = tf.squeeze(self.score(self.proj(values)), -1)
        logits = tf.where(mask, logits, tf.fill(tf.shape(logits), -1e9))
        weights = tf.nn.softmax(logits, axis=-1) * tf.cast(mask, values.dtype)
        return tf.reduce_sum(values * weights[..., None], axis=1)


class LookupEmbedding(keras.layers.Layer):
    """String values -> indices (vocabulary with OOV buckets, or hashing) -> embedding table."""

    def __init__(self, vocabulary=None, hash_buckets: int = 0, num_oov: int = 1, dim: int = 16, l2: float = 0.0,
                 vocab_source=None, oov_rate: float = 0.0, **kwargs):
        """``vocab_source``: the feature whose vocabulary this is (a warm start finds its rows by it);
        ``oov_rate``: share of lookups sent to the first OOV row in training (``CategoricalFeature``)."""
        super().__init__(**kwargs)
        self.vocab_source, self.num_oov = (None, 0) if hash_buckets else (vocab_source, num_oov)
        self.oov_rate = oov_rate
        if hash_buckets:
            self.lookup = keras.layers.Hashing(num_bins=hash_buckets)
            size = hash_buckets
        else:
            self.lookup = keras.layers.StringLookup(vocabulary=list(vocabulary), num_oov_indices=num_oov,
                                                    mask_token=None)
            size = len(vocabulary) + num_oov
        self.dim = dim
        # l2 on the looked-up rows (an activity regulariser, divided by the batch size by Keras): its
        # gradient touches only the batch's rows, where a table regulariser would update every row
        self.embedding = keras.layers.Embedding(size, dim, activity_regularizer=keras.regularizers.L2(l2) if l2 else None)

    def call(self, values, training=None):
        return self.embedding(self.indices(values, training))

    def indices(self, values, training=None):
        """Row indices of ``values`` (in training, ``oov_rate`` of them sent to the first OOV row)."""
        indices = self.lookup(values)
        if self.oov_rate and training:
            dropped = tf.random.uniform(tf.shape(indices)) < self.oov_rate
            indices = tf.where(dropped, tf.zeros_like(indices), indices)
        return indices


def vocabulary_tables(model) -> List[LookupEmbedding]:
    """The model's embedding tables looked up through a vocabulary (not hashing), keyed by ``vocab_source``:
    the ones a warm start grows and ``train.svd_init`` sets."""
    return [layer for layer in model.submodules if isinstance(layer, LookupEmbedding) and layer.vocab_source]


class CategoricalEncoder(keras.layers.Layer):
    """Single value -> its embedding; multi-valued -> mean of its values' embeddings (masked)."""

    def __init__(self, table: LookupEmbedding, multivalued: bool, **kwargs):
        super().__init__(**kwargs)
        self.table, self.multivalued = table, multivalued

    def call(self, x):
        emb = self.table(x)
        return masked_pool(emb, tf.not_equal(x, ""), "mean") if self.multivalued else emb


class SequenceEncoder(keras.layers.Layer):
    """History [B, L] (most recent last, right-padded) -> last ``max_len`` items -> pooled [B, D]."""

    def __init__(self, table: LookupEmbedding, max_len: int, pooling: str, gradient_share: float = 1.0, **kwargs):
        """``gradient_share``: ``SequenceFeature.gradient_share`` (mean/sum pooling)."""
        super().__init__(**kwargs)
        self.table, self.max_len, self.pooling, self.gradient_share = table, max_len, pooling, gradient_share
        self.attention = AttentionPooling() if pooling == "attention" else None

    def call(self, x, training=None):
        if x.shape[1] is None or x.shape[1] > self.max_len:  # else every row already fits: nothing to cut
            x = tf.cond(tf.shape(x)[1] > self.max_len, lambda: self.last_items(x), lambda: x)
        mask = tf.not_equal(x, "")
        if self.attention is not None:
            return self.attention(self.table(x), mask)
        # mean/sum: look up only the real items (ragged), not the padding: a batch of short histories
        # padded to max_len would otherwise gather, and send gradients for, B x max_len rows
        items = tf.ragged.boolean_mask(x, mask)
        rows = items.value_rowids()
        if training and self.gradient_share < 1.0:
            total = self.sampled_gradient_sum(items.flat_values, rows, items.nrows())
        else:
            total = tf.math.unsorted_segment_sum(self.table(items.flat_values), rows, items.nrows())
        if self.pooling == "sum":
            return total
        return total / tf.maximum(tf.cast(items.row_lengths(), total.dtype), 1.0)[:, None]

    def sampled_gradient_sum(self, values, rows, nrows):
        """Per-row sums of the values' embeddings whose gradient reaches the table through a random
        ``gradient_share`` p of them, weighted 1/p: sum(sg(e)) + sum_kept (e - sg(e)) / p (the second
        term is exactly 0 in value). The table's ``l2`` (an activity penalty) sees the kept rows only."""
        indices = self.table.indices(values, training=True)
        total = tf.math.unsorted_segment_sum(tf.stop_gradient(tf.gather(self.table.embedding.embeddings, indices)),
                                             rows, nrows)
        kept = tf.random.uniform(tf.shape(indices)) < self.gradient_share
        learned = self.table.embedding(tf.boolean_mask(indices, kept))
        return total + tf.math.unsorted_segment_sum((learned - tf.stop_gradient(learned)) / self.gradient_share,
                                                    tf.boolean_mask(rows, kept), nrows)

    def last_items(self, x):
        """Each row's last ``max_len`` non-padding items, right-padded (rows of at most ``max_len``
        items are unchanged but for trailing padding, which the mask and the pooling ignore)."""
        return tf.RaggedTensor.from_tensor(x, padding="")[:, -self.max_len:].to_tensor(default_value="")


class NumericEncoder(keras.layers.Layer):
    """x -> [(x - mean) / std]; non-finite values are an error naming the feature, or imputed."""

    def __init__(self, feature_name: str, mean: float, std: float, impute: Optional[str], **kwargs):
        super().__init__(**kwargs)
        self.feature_name, self.mean, self.std, self.impute = feature_name, float(mean), max(float(std), 1e-6), impute

    def call(self, x):
        x = tf.cast(x, tf.float32)
        if self.impute == "mean":
            x = tf.where(tf.math.is_finite(x), x, tf.fill(tf.shape(x), self.mean))
        else:
            x = tf.debugging.assert_all_finite(
                x, f"numeric feature '{self.feature_name}' has NaN or inf values "
                   "(set 'impute: mean' on the feature to replace them)")
        return ((x - self.mean) / self.std)[:, None]


class TimestampEncoder(keras.layers.Layer):
    """Unix seconds -> concat of one embedding per calendar bucket (hour, dow, hour_of_week)."""

    def __init__(self, buckets: Tuple[str, ...], dim: int, utc_offset_hours: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.buckets, self.offset = tuple(buckets), int(utc_offset_hours) * 3600
        self.tables = [keras.layers.Embedding(S.TimestampFeature.BUCKET_SIZES[b], dim) for b in self.buckets]

    @staticmethod
    def bucketize(ts: tf.Tensor, bucket: str, offset: int = 0) -> tf.Tensor:
        hours = tf.math.floordiv(tf.cast(ts, tf.int64) + offset, 3600)
        hour = tf.math.floormod(hours, 24)
        dow = tf.math.floormod(tf.math.floordiv(hours, 24) + 3, 7)  # 1970-01-01 was a Thursday; Monday = 0
        return {"hour": hour, "dow": dow, "hour_of_week": dow * 24 + hour}[bucket]

    def call(self, ts):
        return tf.concat([t(self.bucketize(ts, b, self.offset)) for b, t in zip(self.buckets, self.tables)], -1)


class TextEncoder(keras.layers.Layer):
    """Text -> DSSM letter trigrams hashed into buckets -> mean, sum or TF-IDF weighted sum of trigram
    embeddings (``TextFeature``'s ``combiner``; ``idf``: [num_buckets] weights for ``tfidf``)."""

    def __init__(self, num_buckets: int, dim: int, combiner: str = "mean", idf=None,
                 embeddings_initializer="uniform", **kwargs):
        super().__init__(**kwargs)
        self.num_buckets, self.combiner = num_buckets, combiner
        self.embedding = keras.layers.Embedding(num_buckets, dim, embeddings_initializer=embeddings_initializer)
        if combiner == "tfidf":
            if idf is None:
                raise ValueError(f"{self.name}: the tfidf combiner needs the trigram IDF (FeatureStats.idf)")
            self.idf = self.add_weight("idf", shape=[num_buckets], trainable=False,
                                       initializer=keras.initializers.Constant(idf))

    def call(self, texts):
        ids = word_hash(texts, self.num_buckets)
        if self.combiner == "tfidf":
            return self._tfidf(ids)
        emb = tf.RaggedTensor.from_row_splits(self.embedding(ids.flat_values), ids.row_splits)
        total = tf.reduce_sum(emb, axis=1)
        if self.combiner == "sum":
            return total
        return total / tf.maximum(tf.cast(ids.row_lengths(), tf.float32), 1.0)[:, None]

    def _tfidf(self, ids: tf.RaggedTensor) -> tf.Tensor:
        """sum over each text's distinct trigrams t of (1 + ln tf_t) idf_t e_t: one lookup per distinct trigram."""
        keys = ids.value_rowids() * self.num_buckets + ids.flat_values
        distinct, _, tf_counts = tf.unique_with_counts(keys, out_idx=tf.int64)
        rows, buckets = distinct // self.num_buckets, distinct % self.num_buckets
        weight = (1.0 + tf.math.log(tf.cast(tf_counts, tf.float32))) * tf.gather(self.idf, buckets)
        return tf.math.unsorted_segment_sum(self.embedding(buckets) * weight[:, None], rows, ids.nrows())


class EncoderFactory:
    """Builds one encoder per feature; features naming the same vocabulary share its tables.

    ``stats`` must provide ``vocabulary(name)`` and ``numeric(name) -> (mean, std)``.
    """

    def __init__(self, spec: "S.FeatureSpec", stats, embedding_l2: float = 0.0):
        self.spec, self.stats, self.embedding_l2 = spec, stats, embedding_l2
        self._tables: Dict[Tuple[str, int], LookupEmbedding] = {}
        self._projections: Dict[Tuple[int, int], keras.initializers.Initializer] = {}

    def _projection(self, num_buckets: int, dim: int) -> keras.initializers.Initializer:
        """One seeded N(0, 1/dim) initializer per table shape: every tfidf text encoder of that shape
        starts as the same random projection (a seeded Keras initializer repeats its values). The seed
        is drawn from the global RNG, so ``train.seed`` still changes it."""
        key = (num_buckets, dim)
        if key not in self._projections:
            seed = int(tf.random.uniform([], maxval=2**31 - 1, dtype=tf.int64))
            self._projections[key] = keras.initializers.RandomNormal(stddev=dim ** -0.5, seed=seed)
        return self._projections[key]

    def _table(self, feature, owner: str) -> LookupEmbedding:
        """Embedding table keyed by (vocabulary source, dim) when shared, else by the feature (``lookup_key``)."""
        source = feature.vocab_source
        shared = source is not None and feature.share_embedding
        if shared and source != feature.name and self.spec.by_name[source].embedding_dim != feature.embedding_dim:
            raise ValueError(f"feature '{feature.name}' shares the embedding of '{source}' but asks for "
                             f"embedding_dim {feature.embedding_dim} instead of its "
                             f"{self.spec.by_name[source].embedding_dim}; set share_embedding: false or equal dims")
        key = feature.lookup_key
        if key not in self._tables:
            if feature.hash_buckets:
                table = LookupEmbedding(hash_buckets=feature.hash_buckets, dim=feature.embedding_dim,
                                        l2=self.embedding_l2, name=f"{owner}_hash_embedding")
            else:
                vocab_feature = self.spec.by_name[source]
                vocab = vocab_feature.vocabulary or self.stats.vocabulary(source)
                if not vocab:
                    raise ValueError(f"feature '{source}' has an empty vocabulary: no values in the training logs")
                table = LookupEmbedding(vocabulary=vocab, num_oov=vocab_feature.num_oov, dim=feature.embedding_dim,
                                        l2=self.embedding_l2, vocab_source=source,
                                        oov_rate=vocab_feature.oov_rate, name=f"{key[0]}_embedding")
            self._tables[key] = table
        return self._tables[key]

    def build(self, feature: "S.Feature") -> keras.layers.Layer:
        """The encoder of ``feature``, named ``<feature>_encoder``: the builder below its type picks."""
        return feature.encoder(self)

    # --- one builder per kind of encoder (``Feature.encoder`` of each feature type calls its own) ---
    @staticmethod
    def _name(feature: "S.Feature") -> str:
        return f"{feature.name}_encoder"

    def categorical(self, feature: "S.CategoricalFeature") -> keras.layers.Layer:
        return CategoricalEncoder(self._table(feature, feature.name), feature.multivalued, name=self._name(feature))

    def sequence(self, feature: "S.SequenceFeature") -> keras.layers.Layer:
        return SequenceEncoder(self._table(feature, feature.name), feature.max_len, feature.pooling,
                               feature.gradient_share, name=self._name(feature))

    def numeric(self, feature: "S.NumericFeature") -> keras.layers.Layer:
        mean, std = self.stats.numeric(feature.name) if feature.normalize else (0.0, 1.0)
        return NumericEncoder(feature.name, mean, std, feature.impute, name=self._name(feature))

    def timestamp(self, feature: "S.TimestampFeature") -> keras.layers.Layer:
        return TimestampEncoder(feature.buckets, feature.embedding_dim, feature.utc_offset_hours,
                                name=self._name(feature))

    def text(self, feature: "S.TextFeature") -> keras.layers.Layer:
        name = self._name(feature)
        if feature.combiner != "tfidf":
            return TextEncoder(feature.num_buckets, feature.embedding_dim, feature.combiner, name=name)
        return TextEncoder(feature.num_buckets, feature.embedding_dim, "tfidf", self.stats.idf(feature.num_buckets),
                           self._projection(feature.num_buckets, feature.embedding_dim), name=name)
