"""tfrec_towers.data.writer on real TFRecord files, read back with tf.data + tf.io.parse_example."""
import glob
import json
import math
import os

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tfrec_towers.data.writer import (age_bucket, past_items, recent_counts, to_example, trend_bucket,
                                      write_log_dataset, write_tfrecords)

ROWS = [
    {"i": 7, "npi": np.int64(-3), "flag": True, "npflag": np.bool_(False), "f": 0.5, "npf": np.float32(1.25),
     "nan": float("nan"), "s": "ünïcode", "b": b"\x00raw", "ints": [1, 2, 3], "floats": (0.5, 2),
     "strs": np.array(["a", "b"]), "arr": np.array([4, 5], dtype=np.int32), "empty_i": [], "empty": [],
     "none": None, "na": pd.NA},
    {"i": 2 ** 62, "npi": np.uint8(255), "flag": False, "npflag": np.bool_(True), "f": -1e30,
     "npf": np.float64(-0.0), "nan": 1.5, "s": "", "b": b"", "ints": [], "floats": [], "strs": ["x"],
     "arr": np.array([], dtype=np.int64), "empty_i": [9], "empty": ["z"], "none": "present", "na": 3},
]
KINDS = {"empty_i": "int64", "floats": "float", "ints": "int64"}  # kinds of empty lists


def parse_spec():
    ragged = {"int64": tf.int64, "float": tf.float32, "bytes": tf.string}
    kinds = {"i": "int64", "npi": "int64", "flag": "int64", "npflag": "int64", "f": "float", "npf": "float",
             "nan": "float", "s": "bytes", "b": "bytes", "ints": "int64", "floats": "float", "strs": "bytes",
             "arr": "int64", "empty_i": "int64", "empty": "bytes", "none": "bytes", "na": "int64"}
    return {k: tf.io.RaggedFeature(ragged[v], row_splits_dtype=tf.int64) for k, v in kinds.items()}


def read_parsed(paths, compression="GZIP"):
    """All records of ``paths`` -> {feature: list of per-record value lists}, parsed by TensorFlow."""
    raw = tf.data.TFRecordDataset(paths, compression_type=compression).batch(100)
    out = {}
    for batch in raw:
        for name, value in tf.io.parse_example(batch, parse_spec()).items():
            out.setdefault(name, []).extend(value.to_list())
    return out


def raw_examples(paths, compression="GZIP"):
    return [tf.train.Example.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(paths, compression_type=compression)]


def test_round_trip_every_kind(tmp_path):
    paths = write_tfrecords(ROWS, str(tmp_path / "rows"), kinds=KINDS)
    assert paths == [str(tmp_path / "rows-00000-of-00001.tfrecord.gz")]
    got = read_parsed(paths)
    assert got["i"] == [[7], [2 ** 62]]
    assert got["npi"] == [[-3], [255]]
    assert got["flag"] == [[1], [0]] and got["npflag"] == [[0], [1]]
    assert got["f"] == [[0.5], [pytest.approx(-1e30)]]
    assert got["npf"] == [[1.25], [-0.0]] and math.copysign(1, got["npf"][1][0]) == -1
    assert math.isnan(got["nan"][0][0]) and got["nan"][1] == [1.5]  # NaN kept: the reader rejects it
    assert got["s"] == [["ünïcode".encode()], [b""]]
    assert got["b"] == [[b"\x00raw"], [b""]]
    assert got["ints"] == [[1, 2, 3], []]
    assert got["floats"] == [[0.5, 2.0], []]
    assert got["strs"] == [[b"a", b"b"], [b"x"]]
    assert got["arr"] == [[4, 5], []]
    assert got["empty_i"] == [[], [9]] and got["empty"] == [[], [b"z"]]
    assert got["none"] == [[], [b"present"]] and got["na"] == [[], [3]]

    # Kinds, and absent vs present-but-empty, as stored.
    first, second = (e.features.feature for e in raw_examples(paths))
    assert "none" not in first and "na" not in first
    assert first["empty_i"].WhichOneof("kind") == "int64_list" and not first["empty_i"].int64_list.value
    assert first["empty"].WhichOneof("kind") == "bytes_list"  # no hint: bytes
    assert second["floats"].WhichOneof("kind") == "float_list"  # empty, kind from the hint
    assert first["flag"].WhichOneof("kind") == "int64_list" and first["npf"].WhichOneof("kind") == "float_list"


def test_to_example_equals_the_message_built_by_hand():
    row = {"user_id": "u1", "ts": 5, "score": 0.25, "tags": ["a", "b"], "missing": None}
    expected = tf.train.Example(features=tf.train.Features(feature={
        "user_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"u1"])),
        "ts": tf.train.Feature(int64_list=tf.train.Int64List(value=[5])),
        "score": tf.train.Feature(float_list=tf.train.FloatList(value=[0.25])),
        "tags": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"a", b"b"])),
    }))
    assert to_example(row) == expected
    assert to_example(row).SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)


def test_dataframe_dtypes_drive_kinds_and_missing_values(tmp_path):
    df = pd.DataFrame({
        "count": np.array([1, 2, 3], dtype=np.int32),
        "score": [0.5, float("nan"), 2.0],                              # float: NaN is a value
        "year": pd.array([1995, None, 2001], dtype="Int64"),           # nullable int: NA is absent
        "year_f": [1995.0, float("nan"), 2001.0],                      # pandas' int-with-missing, forced int64
        "name": ["a", None, float("nan")],                             # object: None and NaN are absent
        "tags": [["x"], [], ["y", "z"]],
        "ok": [True, False, True],
        "text": pd.array(["p", "q", None], dtype="string"),
    })
    paths = write_tfrecords(df, str(tmp_path / "df"), num_shards=1, compression="", kinds={"year_f": "int64"})
    assert paths[0].endswith("df-00000-of-00001.tfrecord")
    examples = [e.features.feature for e in raw_examples(paths, compression="")]
    assert [list(e["count"].int64_list.value) for e in examples] == [[1], [2], [3]]
    assert math.isnan(examples[1]["score"].float_list.value[0])
    for column in ("year", "year_f"):
        assert [list(e[column].int64_list.value) if column in e else None for e in examples] == [[1995], None, [2001]]
    assert ["name" in e for e in examples] == [True, False, False]
    assert [list(e["tags"].bytes_list.value) for e in examples] == [[b"x"], [], [b"y", b"z"]]
    assert [list(e["ok"].int64_list.value) for e in examples] == [[1], [0], [1]]
    assert ["text" in e for e in examples] == [True, True, False]


def test_shards_round_robin(tmp_path):
    rows = [{"n": i} for i in range(10)]
    paths = write_tfrecords(rows, str(tmp_path / "sub" / "part"), num_shards=3)
    assert [os.path.basename(p) for p in paths] == [f"part-0000{i}-of-00003.tfrecord.gz" for i in range(3)]
    per_shard = [[e.features.feature["n"].int64_list.value[0] for e in raw_examples(p)] for p in paths]
    assert per_shard == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


def test_same_rows_same_bytes(tmp_path):
    a = write_tfrecords(ROWS, str(tmp_path / "a"), kinds=KINDS)[0]
    b = write_tfrecords(ROWS, str(tmp_path / "b"), kinds=KINDS)[0]
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read()


@pytest.mark.parametrize("row, kinds, match", [
    ({"obj": object()}, None, "column 'obj'"),
    ({"mixed": ["a", 1]}, None, "column 'mixed'"),
    ({"nested": [[1]]}, None, "column 'nested'"),
    ({"word": "abc"}, {"word": "int64"}, "column 'word'.*int64"),
    ({"half": 2.5}, {"half": "int64"}, "column 'half'"),
    ({"flag": True}, {"flag": "bytes"}, "column 'flag'"),
])
def test_unsupported_values_raise_type_error_naming_the_column(tmp_path, row, kinds, match):
    with pytest.raises(TypeError, match=match):
        to_example(row, kinds)
    with pytest.raises(TypeError, match=match):
        write_tfrecords([{"ok": 1}, row], str(tmp_path / "bad"), kinds=kinds)


def test_forced_kinds_convert_what_is_lossless():
    example = to_example({"id": 196, "year": 1995.0, "score": 3}, {"id": "bytes", "year": "int64", "score": "float"})
    f = example.features.feature
    assert f["id"].bytes_list.value == [b"196"]
    assert f["year"].int64_list.value == [1995]
    assert f["score"].float_list.value == [3.0]
    with pytest.raises(ValueError, match="kinds must be one of"):
        to_example({"a": 1}, {"a": "string"})


def test_age_buckets():
    ages = [1, 17, 18, 24, 25, 34, 35, 44, 45, 49, 50, 55, 56, 90]
    assert list(age_bucket(ages)) == ["<18", "<18", "18-24", "18-24", "25-34", "25-34", "35-44", "35-44",
                                      "45-49", "45-49", "50-55", "50-55", "56+", "56+"]


def test_past_items_matches_brute_force():
    rng = np.random.default_rng(0)
    n = 400
    users = rng.choice(["a", "b", "c", "d"], n)
    items = [f"i{k}" for k in range(n)]
    times = rng.integers(0, 60, n)  # many ties
    source = rng.random(n) < 0.7
    got = past_items(users, items, times, source, max_len=6)
    for e in range(n):
        earlier = [k for k in range(n) if source[k] and users[k] == users[e] and times[k] < times[e]]
        earlier.sort(key=lambda k: (times[k], k))  # most recent last; ties in row order
        assert got[e] == [items[k] for k in earlier[-6:]]
    assert past_items(users, items, times, source, max_len=0) == [[]] * n
    assert past_items([], [], [], [], max_len=3) == []


def test_recent_counts_matches_brute_force_and_buckets_are_log2():
    """Counts of an item's events in [t - w, t): strictly earlier (an event never counts itself), the window
    start included, items without events (or unknown) count 0."""
    rng = np.random.default_rng(0)
    items, times = rng.choice(["a", "b", "c"], 300), rng.integers(0, 100, 300)
    at_items, at_times = rng.choice(["a", "b", "c", "new"], 200), rng.integers(-20, 130, 200)
    got = recent_counts(items, times, at_items, at_times, 15)
    want = [int(np.sum((items == i) & (times >= t - 15) & (times < t))) for i, t in zip(at_items, at_times)]
    assert got.tolist() == want and max(want) > 0
    own = recent_counts(["x"], [10], ["x", "x", "x"], [10, 11, 25], 15)
    assert own.tolist() == [0, 1, 1]  # at its own time it is not counted; at 25 the window [10, 25) holds it
    assert recent_counts(["x"], [10], ["x"], [26], 15).tolist() == [0]
    assert trend_bucket([0, 1, 2, 3, 4, 7, 8, 1000]).tolist() == [0, 1, 1, 2, 2, 3, 3, 9]


def events(n, start=0):
    return pd.DataFrame({"user_id": [f"u{i % 3}" for i in range(start, start + n)],
                         "item_id": [f"i{i}" for i in range(start, start + n)],
                         "timestamp": np.arange(start, start + n, dtype=np.int64)})


ITEMS = pd.DataFrame({"item_id": ["i0", "i1"], "item_title": ["A", "B"], "item_genres": [["x"], []],
                      "item_year": pd.array([1990, None], dtype="Int64")})


def test_write_log_dataset_layout_and_metadata(tmp_path):
    out = tmp_path / "logs"
    meta = write_log_dataset(str(out), events(10), events(4, 10), ITEMS, {"source": "test"}, num_shards=2,
                             progress=None)
    assert sorted(os.listdir(out)) == ["items", "metadata.json", "test", "train"]
    assert sorted(os.listdir(out / "train")) == ["part-00000-of-00002.tfrecord.gz", "part-00001-of-00002.tfrecord.gz"]
    assert os.listdir(out / "items") == ["part-00000-of-00001.tfrecord.gz"]
    with open(out / "metadata.json", encoding="utf-8") as f:
        assert json.load(f) == meta
    assert meta["source"] == "test" and (meta["num_train"], meta["num_test"], meta["num_items"]) == (10, 4, 2)
    assert meta["num_shards"] == 2
    assert meta["files"]["train"] == str(out / "train" / "part-*.tfrecord.gz")
    for split, count in (("train", 10), ("test", 4), ("items", 2)):
        assert os.path.isabs(meta["files"][split])
        assert len(raw_examples(glob.glob(meta["files"][split]))) == count
    assert meta["features"]["items"] == {"item_id": "bytes", "item_title": "bytes", "item_genres": "bytes",
                                         "item_year": "int64"}
    assert sorted(os.listdir(tmp_path)) == ["logs"]  # no temporary directory left behind


def test_write_log_dataset_refuses_to_overwrite_and_never_leaves_half_a_dataset(tmp_path):
    out = tmp_path / "logs"
    write_log_dataset(str(out), events(5), events(2, 5), ITEMS, {"source": "first"}, progress=None)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_log_dataset(str(out), events(3), events(1), ITEMS, {"source": "second"}, progress=None)

    bad = events(3).assign(item_title=[object(), "b", "c"])  # fails half-way through writing
    with pytest.raises(TypeError, match="item_title"):
        write_log_dataset(str(out), bad, events(1), ITEMS, {"source": "bad"}, overwrite=True, progress=None)
    with open(out / "metadata.json", encoding="utf-8") as f:
        assert json.load(f)["source"] == "first"  # the old dataset is untouched
    assert sorted(os.listdir(tmp_path)) == ["logs"]

    meta = write_log_dataset(str(out), events(3), events(1), ITEMS, {"source": "second"}, overwrite=True,
                             progress=None)
    assert meta["num_train"] == 3 and len(raw_examples(glob.glob(meta["files"]["train"]))) == 3
    assert sorted(os.listdir(tmp_path)) == ["logs"]

    empty = tmp_path / "empty"
    empty.mkdir()  # an existing empty directory is fine without overwrite
    assert write_log_dataset(str(empty), events(2), events(1), ITEMS, {}, progress=None)["num_train"] == 2
