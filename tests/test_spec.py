"""FeatureSpec: (de)serialisation, validation errors, parse specs, prepare() and check_shareable."""
import tfrec_towers  # noqa: F401  (must precede tensorflow: selects Keras 2)

import numpy as np
import pytest
import tensorflow as tf
import yaml

from tfrec_towers.features import spec as S
from tfrec_towers.features.spec import FeatureSpec, check_shareable


def full_spec_dict():
    """A spec using every feature type and several non-default options."""
    return {
        "item_id": "item_id",
        "query": [
            {"name": "user_id", "type": "id", "hash_buckets": 1000, "embedding_dim": 8},
            {"name": "country", "type": "categorical", "vocabulary": ["fr", "de"], "num_oov": 2,
             "default": "fr"},
            {"name": "item_history", "type": "sequence", "vocab_from": "item_id", "max_len": 5,
             "pooling": "attention", "share_embedding": False},
            {"name": "age", "type": "numeric", "impute": "mean", "default": 30.0},
            {"name": "ts", "type": "timestamp", "buckets": ["hour_of_week"], "utc_offset_hours": -5},
            {"name": "query_text", "type": "text", "num_buckets": 64, "combiner": "sum"},
        ],
        "candidate": [
            {"name": "item_id", "type": "id", "min_count": 2, "max_vocab": 100},
            {"name": "genres", "type": "categorical", "multivalued": True},
            {"name": "price", "type": "numeric", "dtype": "int64", "normalize": False},
        ],
    }


def test_from_dict_to_dict_round_trip():
    d = full_spec_dict()
    spec = FeatureSpec.from_dict(d)
    assert spec.to_dict() == d
    again = FeatureSpec.from_dict(spec.to_dict())
    assert again == spec
    by_name = spec.by_name
    assert isinstance(by_name["user_id"], S.IdFeature) and by_name["user_id"].hash_buckets == 1000
    assert isinstance(by_name["item_history"], S.SequenceFeature)
    assert by_name["item_history"].vocab_source == "item_id"
    assert by_name["ts"].buckets == ("hour_of_week",)
    assert by_name["ts"].utc_offset_hours == -5
    assert by_name["genres"].multivalued is True
    assert [f.name for f in spec.side("candidate")] == ["item_id", "genres", "price"]


def test_to_dict_omits_defaults():
    spec = FeatureSpec(query=[S.IdFeature("user_id")], candidate=[S.IdFeature("item_id")])
    assert spec.to_dict() == {"item_id": "item_id", "query": [{"name": "user_id", "type": "id"}],
                              "candidate": [{"name": "item_id", "type": "id"}]}


def test_load_yaml_round_trip(tmp_path):
    d = full_spec_dict()
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(d), encoding="utf-8")
    spec = FeatureSpec.load(str(path))
    assert spec.to_dict() == d
    assert spec == FeatureSpec.from_dict(d)


def _minimal(query=None, candidate=None, **extra):
    d = {"query": query or [{"name": "user_id", "type": "id"}],
         "candidate": candidate or [{"name": "item_id", "type": "id"}]}
    d.update(extra)
    return d


def test_unknown_feature_type_is_named():
    with pytest.raises(ValueError, match=r"feature 'user_id': unknown type 'idd'"):
        FeatureSpec.from_dict(_minimal(query=[{"name": "user_id", "type": "idd"}]))


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match=r"'user_id'.*unknown option.*embeding_dim"):
        FeatureSpec.from_dict(_minimal(query=[{"name": "user_id", "type": "id", "embeding_dim": 8}]))


def test_option_of_another_type_is_unknown():
    # max_len exists on sequence features only
    with pytest.raises(ValueError, match=r"unknown option.*max_len"):
        FeatureSpec.from_dict(_minimal(query=[{"name": "user_id", "type": "id", "max_len": 8}]))


def test_unknown_top_level_key_is_named():
    with pytest.raises(ValueError, match="itemid"):
        FeatureSpec.from_dict(_minimal(itemid="item_id"))


def test_duplicate_feature_is_named():
    with pytest.raises(ValueError, match=r"listed twice.*item_id"):
        FeatureSpec.from_dict(_minimal(query=[{"name": "item_id", "type": "id"}]))


def test_vocab_from_unknown_feature_is_named():
    query = [{"name": "hist", "type": "sequence", "vocab_from": "itemid"}]
    with pytest.raises(ValueError, match=r"'hist'.*unknown feature 'itemid'"):
        FeatureSpec.from_dict(_minimal(query=query))


def test_vocab_from_non_categorical_rejected():
    query = [{"name": "hist", "type": "sequence", "vocab_from": "age"}, {"name": "age", "type": "numeric"}]
    with pytest.raises(ValueError, match=r"'hist'.*vocab_from"):
        FeatureSpec.from_dict(_minimal(query=query))


def test_item_id_must_be_candidate_feature():
    with pytest.raises(ValueError, match=r"item_id feature 'user_id' must be a candidate feature"):
        FeatureSpec.from_dict(_minimal(item_id="user_id"))
    with pytest.raises(ValueError, match=r"item_id feature 'item_id' must be a candidate feature"):
        FeatureSpec.from_dict(_minimal(candidate=[{"name": "doc", "type": "text"}]))


def test_invalid_option_values_are_named():
    with pytest.raises(ValueError, match=r"'hist'.*pooling"):
        S.SequenceFeature("hist", pooling="max")
    with pytest.raises(ValueError, match=r"'ts'.*buckets.*minute"):
        S.TimestampFeature("ts", buckets=("minute",))
    with pytest.raises(ValueError, match=r"'age'.*impute"):
        S.NumericFeature("age", impute="median")
    with pytest.raises(ValueError, match=r"'c'.*not both"):
        S.CategoricalFeature("c", hash_buckets=10, vocabulary=["a"])


def test_parse_spec_kinds():
    spec = FeatureSpec.from_dict({
        "query": [{"name": "user_id", "type": "id"},
                  {"name": "country", "type": "categorical", "default": "fr"},
                  {"name": "age", "type": "numeric", "default": 3},
                  {"name": "ts", "type": "timestamp"},
                  {"name": "hist", "type": "sequence", "vocab_from": "item_id", "dtype": "int64"}],
        "candidate": [{"name": "item_id", "type": "id", "dtype": "int64"},
                      {"name": "genres", "type": "categorical", "multivalued": True},
                      {"name": "title", "type": "text"}],
    })
    ps = spec.parse_spec()
    assert set(ps) == {"user_id", "country", "age", "ts", "hist", "item_id", "genres", "title"}

    def fixed(name, dtype, default):
        f = ps[name]
        assert isinstance(f, tf.io.FixedLenFeature), name
        assert f.shape == [] and f.dtype == dtype, name
        assert f.default_value == default, name

    fixed("user_id", tf.string, None)           # required scalar
    fixed("country", tf.string, "fr")
    fixed("age", tf.float32, 3.0)
    fixed("ts", tf.int64, None)
    fixed("item_id", tf.int64, None)
    fixed("title", tf.string, None)
    for name, dtype in (("hist", tf.int64), ("genres", tf.string)):
        assert isinstance(ps[name], tf.io.RaggedFeature), name
        assert ps[name].dtype == dtype

    assert set(spec.parse_spec("query")) == {"user_id", "country", "age", "ts", "hist"}
    cand = spec.parse_spec("candidate", extra={"label": tf.io.FixedLenFeature([], tf.int64)})
    assert set(cand) == {"item_id", "genres", "title", "label"}
    with pytest.raises(ValueError):
        spec.side("user")


def test_parse_spec_parses_examples_with_and_without_default():
    spec = FeatureSpec.from_dict({
        "query": [{"name": "country", "type": "categorical", "default": "fr"},
                  {"name": "hist", "type": "sequence", "vocab_from": "item_id"}],
        "candidate": [{"name": "item_id", "type": "id"}],
    })

    def example(**feats):
        f = {}
        for k, v in feats.items():
            f[k] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[x.encode() for x in v]))
        return tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString()

    batch = tf.constant([example(item_id=["i1"], hist=["a", "b"], country=["de"]),
                         example(item_id=["i2"], hist=[])])
    parsed = tf.io.parse_example(batch, spec.parse_spec())
    assert parsed["country"].numpy().tolist() == [b"de", b"fr"]
    assert isinstance(parsed["hist"], tf.RaggedTensor)
    assert parsed["hist"].to_list() == [[b"a", b"b"], []]
    # a required scalar is an error when absent
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.parse_example(tf.constant([example(hist=["a"])]), spec.parse_spec())


def test_prepare_converts_to_model_inputs():
    spec = FeatureSpec.from_dict({
        "query": [{"name": "user_id", "type": "id", "dtype": "int64"},
                  {"name": "hist", "type": "sequence", "vocab_from": "item_id", "dtype": "int64"},
                  {"name": "tags", "type": "categorical", "multivalued": True},
                  {"name": "age", "type": "numeric", "dtype": "int64"},
                  {"name": "ts", "type": "timestamp"}],
        "candidate": [{"name": "item_id", "type": "id", "dtype": "int64"}],
    })
    parsed = {
        "user_id": tf.constant([7, 12345678901], tf.int64),
        "hist": tf.ragged.constant([[1, 2, 3], []], dtype=tf.int64),
        "tags": tf.ragged.constant([["x"], ["y", "z"]]),
        "age": tf.constant([3, 40], tf.int64),
        "ts": tf.constant([1, 2], tf.int64),
        "item_id": tf.constant([5, 6], tf.int64),
        "label": tf.constant([1, 0], tf.int64),  # not in the spec: passes through
    }
    out = spec.prepare(parsed)
    assert out["user_id"].dtype == tf.string
    assert out["user_id"].numpy().tolist() == [b"7", b"12345678901"]
    assert out["item_id"].numpy().tolist() == [b"5", b"6"]
    assert not isinstance(out["hist"], tf.RaggedTensor)
    assert out["hist"].numpy().tolist() == [[b"1", b"2", b"3"], [b"", b"", b""]]
    assert out["tags"].numpy().tolist() == [[b"x", b""], [b"y", b"z"]]
    assert out["age"].dtype == tf.float32
    np.testing.assert_array_equal(out["age"].numpy(), [3.0, 40.0])
    assert out["ts"].dtype == tf.int64
    assert out["label"] is parsed["label"]
    # the prepared inputs match the model's input signature
    for side in S.SIDES:
        for name, sig in spec.input_signature(side).items():
            assert sig.dtype == out[name].dtype, name
            assert sig.shape.rank == out[name].shape.rank, name


def test_check_shareable_accepts_paired_text_features():
    query = [S.TextFeature("query_text", num_buckets=128), S.NumericFeature("q_len", normalize=False)]
    candidate = [S.TextFeature("doc_text", num_buckets=128), S.NumericFeature("d_len", normalize=False)]
    check_shareable(query, candidate)  # no error


@pytest.mark.parametrize("query,candidate", [
    # different types
    ([S.IdFeature("user_id"), S.SequenceFeature("hist", vocab_from="item_id")],
     [S.IdFeature("item_id"), S.TextFeature("title")]),
    # same type and options, but each looks up its own vocabulary: one shared table makes no sense
    ([S.IdFeature("user_id")], [S.IdFeature("item_id")]),
    # different options
    ([S.TextFeature("q", num_buckets=64)], [S.TextFeature("d", num_buckets=128)]),
    # different counts
    ([S.TextFeature("q")], [S.TextFeature("d"), S.TextFeature("d2")]),
])
def test_check_shareable_rejects_unpaired_features(query, candidate):
    with pytest.raises(ValueError, match="projection"):
        check_shareable(query, candidate)
