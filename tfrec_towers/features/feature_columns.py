"""Feature columns -> FeatureSpec, for teams that already describe their features that way.

``tf.feature_column`` is deprecated in TF 2.x; the columns are only read as declarations and the
towers are built by this package's Keras preprocessing layers, exactly as for a spec written by hand.

Mapping (columns may be wrapped in ``embedding_column``, whose ``dimension`` sets the embedding size):

=====================================================  ==========================================
categorical_column_with_vocabulary_list / _file         categorical (fixed vocabulary, OOV buckets)
categorical_column_with_hash_bucket                     categorical with hash_buckets
categorical_column_with_identity                        categorical over "0".."num_buckets-1" (int64)
numeric_column (shape 1)                                numeric, normalised with training statistics
sequence_categorical_column_with_*                      sequence (mean pooling)
=====================================================  ==========================================

Feature columns parse categoricals as variable-length lists; name the fields that really hold
several values in ``multivalued`` (mean-pooled, the embedding_column default combiner).
"""
from typing import Iterable, List, Sequence

from tfrec_towers.features import spec as S


__all__ = ["feature_from_column", "from_feature_columns"]


def _categorical(column, dim, combiner, multivalued):
    kind = type(column).__name__
    dtype = "int64" if getattr(column, "dtype", None) is None or column.dtype.is_integer else "string"
    common = dict(name=column.key, dtype=dtype, multivalued=multivalued)
    if dim:
        common["embedding_dim"] = dim
    if combiner not in (None, "mean"):
        raise ValueError(f"column '{column.key}': only the 'mean' combiner is supported, got {combiner!r}")
    if kind == "VocabularyListCategoricalColumn":
        return S.CategoricalFeature(vocabulary=[str(v) for v in column.vocabulary_list],
                                    num_oov=max(column.num_oov_buckets, 1), **common)
    if kind == "VocabularyFileCategoricalColumn":
        with open(column.vocabulary_file, encoding="utf-8") as f:
            vocab = [line.rstrip("\n") for line in f][: column.vocabulary_size]
        return S.CategoricalFeature(vocabulary=vocab, num_oov=max(column.num_oov_buckets, 1), **common)
    if kind == "HashedCategoricalColumn":
        return S.CategoricalFeature(hash_buckets=column.hash_bucket_size, **common)
    if kind == "IdentityCategoricalColumn":
        return S.CategoricalFeature(vocabulary=[str(i) for i in range(column.number_buckets)], **common)
    raise ValueError(f"column '{getattr(column, 'name', column)}' ({kind}) is not supported")


def feature_from_column(column, multivalued: Iterable[str] = ()) -> S.Feature:
    """One feature column -> the equivalent Feature."""
    kind = type(column).__name__
    dim = combiner = None
    if kind == "EmbeddingColumn":
        dim, combiner, column = column.dimension, column.combiner, column.categorical_column
        kind = type(column).__name__
    if kind == "SequenceCategoricalColumn":
        inner = _categorical(column.categorical_column, dim, combiner, False)
        return S.SequenceFeature(name=inner.name, dtype=inner.dtype, embedding_dim=dim or 32,
                                 hash_buckets=inner.hash_buckets, num_oov=inner.num_oov)
    if kind == "NumericColumn":
        if tuple(column.shape) != (1,):
            raise ValueError(f"numeric column '{column.key}': only shape (1,) is supported, got {column.shape}")
        return S.NumericFeature(name=column.key, dtype="int64" if column.dtype.is_integer else "float32",
                                default=None if column.default_value is None else column.default_value[0])
    if kind.endswith("CategoricalColumn"):
        return _categorical(column, dim, combiner, column.key in set(multivalued))
    raise ValueError(f"feature column {getattr(column, 'name', column)!r} of type {kind} is not supported; "
                     "supported: categorical (vocabulary list/file, hash bucket, identity), numeric, embedding, "
                     "sequence categorical")


def from_feature_columns(query_columns: Sequence, candidate_columns: Sequence, item_id: str = "item_id",
                         multivalued: Iterable[str] = ()) -> S.FeatureSpec:
    """Query-side and candidate-side feature columns -> FeatureSpec (towers, parsing, signatures)."""
    multivalued = set(multivalued)
    query: List[S.Feature] = [feature_from_column(c, multivalued) for c in query_columns]
    candidate: List[S.Feature] = [feature_from_column(c, multivalued) for c in candidate_columns]
    return S.FeatureSpec(query=query, candidate=candidate, item_id=item_id)
