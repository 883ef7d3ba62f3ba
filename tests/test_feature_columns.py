"""Feature columns in, the same spec and towers out as a hand-written spec."""
import numpy as np
import pytest

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras as keras

from tfrec_towers.features import spec as S
from tfrec_towers.features.feature_columns import feature_from_column, from_feature_columns
from tfrec_towers.features.stats import FeatureStats
from tfrec_towers.towers import build_towers

fc = tf.feature_column


def columns():
    query = [fc.embedding_column(fc.categorical_column_with_hash_bucket("user_id", 1000), 16),
             fc.embedding_column(fc.categorical_column_with_vocabulary_list("user_gender", ["M", "F"]), 4),
             fc.numeric_column("user_age"),
             fc.embedding_column(fc.sequence_categorical_column_with_hash_bucket("item_history", 500), 8)]
    candidate = [fc.embedding_column(fc.categorical_column_with_identity("item_id", 50), 8),
                 fc.embedding_column(fc.categorical_column_with_vocabulary_list("item_genres", ["a", "b"]), 4)]
    return query, candidate


def hand_written():
    return S.FeatureSpec(
        query=[S.CategoricalFeature("user_id", hash_buckets=1000, embedding_dim=16),
               S.CategoricalFeature("user_gender", vocabulary=["M", "F"], embedding_dim=4),
               S.NumericFeature("user_age"),
               S.SequenceFeature("item_history", hash_buckets=500, embedding_dim=8)],
        candidate=[S.CategoricalFeature("item_id", dtype="int64", vocabulary=[str(i) for i in range(50)],
                                        embedding_dim=8),
                   S.CategoricalFeature("item_genres", vocabulary=["a", "b"], embedding_dim=4, multivalued=True)])


def test_columns_give_the_hand_written_spec():
    spec = from_feature_columns(*columns(), multivalued=["item_genres"])
    assert spec.to_dict() == hand_written().to_dict()


def test_columns_give_the_same_towers():
    stats = FeatureStats(numeric_stats={"user_age": {"mean": 30.0, "std": 10.0, "count": 3}})
    batch = {"user_id": tf.constant(["u1", "u2"]), "user_gender": tf.constant(["M", "X"]),
             "user_age": tf.constant([20.0, 50.0]), "item_history": tf.constant([["i1", "i2"], ["", ""]]),
             "item_id": tf.constant(["3", "77"]), "item_genres": tf.constant([["a", "b"], ["b", ""]])}
    outputs = []
    for spec in (from_feature_columns(*columns(), multivalued=["item_genres"]), hand_written()):
        keras.utils.set_random_seed(7)
        query, candidate = build_towers(spec, stats)
        outputs.append((query(batch).numpy(), candidate(batch).numpy()))
    np.testing.assert_allclose(outputs[0][0], outputs[1][0])
    np.testing.assert_allclose(outputs[0][1], outputs[1][1])


def test_unsupported_column_is_named():
    bucketized = fc.bucketized_column(fc.numeric_column("age"), [10, 20])
    with pytest.raises(ValueError, match="BucketizedColumn"):
        feature_from_column(bucketized)
    with pytest.raises(ValueError, match="combiner"):
        feature_from_column(fc.embedding_column(fc.categorical_column_with_hash_bucket("x", 5), 4, combiner="sqrtn"))
