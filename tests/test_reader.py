"""Integration tests of tfrec_towers.data.reader on real TFRecord files (no mocks).

Covers: the parse-spec round trip of every feature kind (GZIP and uncompressed), glob and compression
errors, the schema check, and the corrupt-record policy on truly truncated files and on records whose
bytes are not a tf.train.Example.
"""
import math
import os

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import numpy as np
import pytest
import tensorflow as tf

from tfrec_towers.data import reader
from tfrec_towers.data.reader import CorruptRecordError
from tfrec_towers.data.writer import write_tfrecords
from tfrec_towers.features.spec import FeatureSpec

SPEC = FeatureSpec.from_dict({
    "item_id": "item_id",
    "query": [
        {"name": "user_id", "type": "id"},
        {"name": "tags", "type": "categorical", "multivalued": True},
        {"name": "score", "type": "numeric"},
        {"name": "ts", "type": "timestamp"},
        {"name": "hist", "type": "sequence", "vocab_from": "item_id"},
    ],
    "candidate": [
        {"name": "item_id", "type": "id"},
        {"name": "title", "type": "text"},
    ],
})
KINDS = {"user_id": "bytes", "tags": "bytes", "score": "float", "ts": "int64", "hist": "bytes",
         "item_id": "bytes", "title": "bytes"}


def make_rows(n, start=0):
    rows = []
    for i in range(start, start + n):
        rows.append({
            "user_id": f"u{i}",
            "tags": [f"t{j}" for j in range(i % 4)],            # 0..3 values, empty lists included
            "score": 0.25 * i - 3.0,
            "ts": 1_600_000_000 + 3_607 * i,
            "hist": [f"i{(i + j) % 7}" for j in range((i * 3) % 5)],
            "item_id": f"i{i % 7}",
            "title": f"Title number {i} ünïcode",
        })
    return rows


def write(rows, prefix, compression="", kinds=KINDS):
    return write_tfrecords(rows, str(prefix), 1, compression=compression, kinds=kinds)[0]


def parse_spec():
    return SPEC.parse_spec()


def read_all(files, batch_size=4, **kwargs):
    ds = reader.make_dataset(files, parse_spec(), SPEC.prepare, batch_size, **kwargs)
    return [{k: v.numpy() for k, v in batch.items()} for batch in ds]


def ids_of(batches):
    return [u.decode() for b in batches for u in b["user_id"].tolist()]


def frame_offsets(path):
    """Byte offset of each record frame in an uncompressed TFRecord file (8 + 4 + data + 4 bytes)."""
    raws = [r.numpy() for r in tf.data.TFRecordDataset(path)]
    offsets = [0]
    for raw in raws:
        offsets.append(offsets[-1] + 16 + len(raw))
    assert offsets[-1] == os.path.getsize(path)
    return raws, offsets


def truncated_file(tmp_path, n, k, name="trunc"):
    """n records written uncompressed, cut in the middle of record k's data; returns (path, rows)."""
    rows = make_rows(n)
    full = write(rows, tmp_path / f"{name}_full")
    raws, offsets = frame_offsets(full)
    cut = offsets[k] + 12 + len(raws[k]) // 2
    path = tmp_path / f"{name}.tfrecord"
    with open(full, "rb") as src, open(path, "wb") as dst:
        dst.write(src.read()[:cut])
    os.remove(full)
    return str(path), rows


# --- round trip -----------------------------------------------------------------------------------

@pytest.mark.parametrize("compression", ["GZIP", ""])
def test_parse_spec_round_trip_every_feature_kind(tmp_path, compression):
    rows = make_rows(11)
    path = write(rows, tmp_path / "events", compression)
    assert path.endswith(".tfrecord.gz" if compression else ".tfrecord")
    if compression:  # really compressed: the raw bytes are a gzip stream
        with open(path, "rb") as f:
            assert f.read(2) == b"\x1f\x8b"

    batches = read_all([path], batch_size=4)
    assert [len(b["user_id"]) for b in batches] == [4, 4, 3]
    assert ids_of(batches) == [r["user_id"] for r in rows]  # order preserved without shuffle

    for n, batch in enumerate(batches):
        chunk = rows[4 * n: 4 * n + 4]
        assert set(batch) == set(SPEC.by_name)
        assert batch["user_id"].dtype == object and batch["score"].dtype == np.float32
        assert batch["ts"].dtype == np.int64
        assert [v.decode() for v in batch["item_id"]] == [r["item_id"] for r in chunk]
        assert [v.decode() for v in batch["title"]] == [r["title"] for r in chunk]
        np.testing.assert_allclose(batch["score"], [r["score"] for r in chunk])
        np.testing.assert_array_equal(batch["ts"], [r["ts"] for r in chunk])
        for name in ("tags", "hist"):  # lists: dense, right-padded with "" to the batch's longest
            width = max(len(r[name]) for r in chunk)
            expected = [r[name] + [""] * (width - len(r[name])) for r in chunk]
            assert batch[name].shape == (len(chunk), width)
            assert [[v.decode() for v in row] for row in batch[name]] == expected


def test_round_trip_several_files_in_order(tmp_path):
    a = write(make_rows(5), tmp_path / "a")
    b = write(make_rows(3, start=100), tmp_path / "b")
    files = reader.list_files(str(tmp_path / "*.tfrecord"))
    assert files == sorted([a, b])
    got = ids_of(read_all(files, batch_size=16, num_parallel_reads=1))
    assert got == [f"u{i}" for i in range(5)] + [f"u{i}" for i in range(100, 103)]


# --- globs and compression ------------------------------------------------------------------------

def test_list_files_unmatched_glob_is_named(tmp_path):
    write(make_rows(2), tmp_path / "a")
    missing = str(tmp_path / "nothing-*.tfrecord")
    with pytest.raises(FileNotFoundError, match="nothing-"):
        reader.list_files(f"{tmp_path}/*.tfrecord,{missing}")
    with pytest.raises(FileNotFoundError) as err:
        reader.list_files([missing])
    assert missing in str(err.value)
    # comma-separated globs are all expanded
    write(make_rows(2), tmp_path / "b", "GZIP")
    assert len(reader.list_files(f"{tmp_path}/*.tfrecord,{tmp_path}/*.gz")) == 2


def test_mixed_compression_raises(tmp_path):
    gz = write(make_rows(2), tmp_path / "a", "GZIP")
    plain = write(make_rows(2), tmp_path / "b", "")
    with pytest.raises(ValueError, match="compression"):
        reader.make_dataset([gz, plain], parse_spec(), SPEC.prepare, 4)
    with pytest.raises(ValueError, match="compression"):
        reader.compression_of(gz, "LZ4")


def test_explicit_compression_overrides_suffix(tmp_path):
    # A GZIP file without the .gz suffix reads with compression="GZIP", and not with "auto".
    gz = write(make_rows(3), tmp_path / "a", "GZIP")
    plain_name = str(tmp_path / "gzipped.tfrecord")
    os.rename(gz, plain_name)
    assert ids_of(read_all([plain_name], compression="GZIP")) == ["u0", "u1", "u2"]
    # Read as uncompressed, its first frame header is damaged: named before TensorFlow reads it.
    with pytest.raises(CorruptRecordError, match="record 0: damaged frame.*GZIP"):
        read_all([plain_name])


# --- schema check ---------------------------------------------------------------------------------

def test_check_schema_passes_on_matching_logs(tmp_path):
    path = write(make_rows(3), tmp_path / "ok", "GZIP")
    reader.check_schema([path], parse_spec())  # no error


def test_check_schema_missing_required_feature(tmp_path):
    good = write(make_rows(3), tmp_path / "good")
    rows = make_rows(3)
    for r in rows:
        del r["score"]
    bad = write(rows, tmp_path / "noscore")
    with pytest.raises(ValueError) as err:
        reader.check_schema([good, bad], parse_spec())
    message = str(err.value)
    assert "'score'" in message and "missing" in message
    assert bad in message and good not in message


def test_check_schema_names_each_problem_once(tmp_path):
    """Issue 14.7: a feature missing from every record was listed once per checked record (20 times)."""
    rows = make_rows(30)
    for r in rows:
        del r["score"]
    path = write(rows, tmp_path / "noscore")
    with pytest.raises(ValueError) as err:
        reader.check_schema([path], parse_spec())
    message = str(err.value)
    assert message.count("'score'") == 1, message
    assert "record 0, and 19 more of the first 20" in message


def test_check_schema_mistyped_feature(tmp_path):
    rows = make_rows(3)
    for r in rows:
        r["score"] = int(r["ts"] % 100)
    path = write(rows, tmp_path / "intscore", kinds={**KINDS, "score": "int64"})
    with pytest.raises(ValueError) as err:
        reader.check_schema([path], parse_spec())
    message = str(err.value)
    assert "'score'" in message and path in message
    assert "int64_list" in message and "float_list" in message


def test_check_schema_optional_feature_may_be_absent(tmp_path):
    spec = FeatureSpec.from_dict({
        "query": [{"name": "user_id", "type": "id"}, {"name": "score", "type": "numeric", "default": 0.0}],
        "candidate": [{"name": "item_id", "type": "id"}]})
    path = write([{"user_id": "u", "item_id": "i"}], tmp_path / "nodefault")
    reader.check_schema([path], spec.parse_spec())  # a feature with a default may be absent
    batch = next(iter(reader.make_dataset([path], spec.parse_spec(), spec.prepare, 2)))
    assert batch["score"].numpy().tolist() == [0.0]


# --- corrupt records: truncated file --------------------------------------------------------------

N, K = 12, 7


def test_scan_fail_names_file_and_record_of_truncated_frame(tmp_path):
    path, _ = truncated_file(tmp_path, N, K)
    seen = []
    with pytest.raises(CorruptRecordError) as err:
        reader.scan([path], parse_spec(), on_batch=lambda p: seen.append(p), policy="fail", batch_size=4)
    assert err.value.path == path and err.value.record == K
    assert path in str(err.value) and f"record {K}" in str(err.value)


@pytest.mark.parametrize("batch_size", [1, 4, 4096])
def test_scan_skip_counts_good_records_of_truncated_file(tmp_path, batch_size):
    path, rows = truncated_file(tmp_path, N, K)
    intact = write(make_rows(5, start=200), tmp_path / "intact")
    seen, calls = [], []

    def on_batch(parsed):
        calls.append(len(parsed["user_id"]))
        seen.extend(parsed["user_id"].numpy())

    report = reader.scan([path, intact], parse_spec(), on_batch=on_batch, policy="skip", batch_size=batch_size)
    if batch_size == 4096:  # the good records before the broken frame still arrive as one batch
        assert calls == [K, 5]
    assert report.files == 2
    assert report.records == K + 5
    assert len(report.skipped) == 1
    skipped_path, skipped_record, reason = report.skipped[0]
    assert (skipped_path, skipped_record) == (path, K)
    assert reason
    assert [u.decode() for u in seen] == [r["user_id"] for r in rows[:K]] + [f"u{i}" for i in range(200, 205)]
    summary = report.summary()
    assert path in summary and f"record {K}" in summary and f"read {K + 5} records" in summary


def test_make_dataset_skip_yields_good_records_of_truncated_file(tmp_path):
    path, rows = truncated_file(tmp_path, N, K)
    intact = write(make_rows(5, start=200), tmp_path / "intact")
    batches = read_all([path, intact], batch_size=3, policy="skip")
    got = ids_of(batches)
    expected = [r["user_id"] for r in rows[:K]] + [f"u{i}" for i in range(200, 205)]
    assert sorted(got) == sorted(expected)
    assert len(got) == K + 5
    # values survive the record-by-record (ragged) path too
    by_user = {u.decode(): s for b in batches for u, s in zip(b["user_id"], b["score"])}
    assert math.isclose(by_user["u3"], make_rows(4)[3]["score"])


def test_cache_reshuffles_every_epoch(tmp_path):
    """Issue 14.4: the cache sat after the shuffle, so every epoch replayed the first one's order."""
    path = write(make_rows(300), tmp_path / "many", "GZIP")
    ds = reader.make_dataset([path], parse_spec(), SPEC.prepare, 32, shuffle_buffer=1000, seed=0, cache=True)
    epochs = [[u.decode() for batch in ds for u in batch["user_id"].numpy()] for _ in range(3)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(epochs[2]) == sorted(f"u{i}" for i in range(300))
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]


def test_make_dataset_fail_names_the_truncated_file(tmp_path):
    path, _ = truncated_file(tmp_path, N, K)
    intact = write(make_rows(5, start=200), tmp_path / "intact")
    # The frame check finds the cut frame before TensorFlow reads the file (which would stop with a
    # DataLossError mid-pipeline), and names file and record.
    with pytest.raises(CorruptRecordError) as err:
        reader.make_dataset([path, intact], parse_spec(), SPEC.prepare, 3, policy="fail")
    assert (err.value.path, err.value.record) == (path, K)


def test_truncated_gzip_file(tmp_path):
    # Cutting a GZIP file also loses the rest of it; skip keeps what was readable, fail names the file.
    rows = make_rows(400)
    full = write(rows, tmp_path / "big", "GZIP")
    path = str(tmp_path / "cut.tfrecord.gz")
    with open(full, "rb") as src, open(path, "wb") as dst:
        data = src.read()
        dst.write(data[: len(data) // 2])
    with pytest.raises(CorruptRecordError) as err:
        reader.scan([path], parse_spec(), policy="fail", batch_size=64)
    assert err.value.path == path
    report = reader.scan([path], parse_spec(), policy="skip", batch_size=64)
    assert 0 < report.records < 400 and len(report.skipped) == 1
    assert report.skipped[0][1] == report.records  # the first record that could not be read


def test_cut_gzip_shard_is_never_read_as_complete(tmp_path):
    """Issue 14.1: a cut GZIP shard read as a shorter valid one (train exited 0 having read half)."""
    rows = [{"user_id": f"user-{i}-" + "x" * (i % 50), "score": float(i)} for i in range(7000)]
    kinds = {"user_id": "bytes", "score": "float"}
    spec = {"user_id": tf.io.FixedLenFeature([], tf.string), "score": tf.io.FixedLenFeature([], tf.float32)}
    intact = write_tfrecords(rows[:10], str(tmp_path / "intact"), 1, compression="GZIP", kinds=kinds)[0]
    full = write_tfrecords(rows, str(tmp_path / "shard"), 1, compression="GZIP", kinds=kinds)[0]
    with open(full, "rb") as f:
        data = f.read()
    silent_cuts = []
    for name, cut in {"half": len(data) // 2, "99%": int(len(data) * 0.99), "trailer": len(data) - 5,
                      "last byte": len(data) - 1}.items():
        path = str(tmp_path / f"cut-{cut}.tfrecord.gz")
        with open(path, "wb") as f:
            f.write(data[:cut])
        readable, silent = 0, True  # what TensorFlow alone reads, and whether it says anything
        try:
            for _ in tf.data.TFRecordDataset(path, compression_type="GZIP"):
                readable += 1
        except tf.errors.DataLossError:
            silent = False
        with pytest.raises(CorruptRecordError) as err:
            reader.scan([intact, path], spec, policy="fail")
        assert err.value.path == path, name
        assert f"GZIP stream ends after record {err.value.record - 1} ({err.value.record} records read)" in str(err.value)
        report = reader.scan([intact, path], spec, policy="skip")
        assert report.records == 10 + err.value.record, name
        assert [(p, r) for p, r, _ in report.skipped] == [(path, err.value.record)], name
        assert "GZIP stream ends" in report.summary() and path in report.summary()
        assert err.value.record == readable, name
        silent_cuts.append(silent)
    assert sum(silent_cuts) >= 2  # the trailer cuts at least: TensorFlow reports nothing there
    # The whole shard still reads clean.
    assert reader.scan([full], spec, policy="fail").records == 7000


# --- corrupt records: bytes that are not a tf.Example ---------------------------------------------

GARBAGE = b"not an example \xff\xff\xff"


def mixed_file(tmp_path, bad_at=(3,), n=8):
    """n good records, with garbage frames (valid TFRecord framing, invalid Example) at ``bad_at``."""
    serialized = [r.numpy() for r in tf.data.TFRecordDataset(write(make_rows(n), tmp_path / "src"))]
    path = str(tmp_path / "garbage.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        for i, raw in enumerate(serialized):
            if i in bad_at:
                w.write(GARBAGE)
            w.write(raw)
    return path


def test_garbage_record_fail_names_record(tmp_path):
    with pytest.raises(Exception):  # sanity: these bytes are really not an Example
        tf.train.Example.FromString(GARBAGE)
    path = mixed_file(tmp_path, bad_at=(3,))
    with pytest.raises(CorruptRecordError) as err:
        reader.scan([path], parse_spec(), policy="fail", batch_size=4)
    assert err.value.path == path and err.value.record == 3


def test_garbage_record_skip_keeps_the_others(tmp_path):
    path = mixed_file(tmp_path, bad_at=(3, 6), n=8)  # records: 0 1 2 G 3 4 5 G 6 7 -> G at 3 and 7
    seen = []
    report = reader.scan([path], parse_spec(), on_batch=lambda p: seen.extend(p["user_id"].numpy()),
                         policy="skip", batch_size=4)
    assert report.records == 8
    assert [(p, r) for p, r, _ in report.skipped] == [(path, 3), (path, 7)]
    assert [u.decode() for u in seen] == [f"u{i}" for i in range(8)]

    got = ids_of(read_all([path], batch_size=3, policy="skip"))
    assert got == [f"u{i}" for i in range(8)]
    # policy="fail" stops the pipeline. (TensorFlow's own error quotes the record's bytes; when they
    # are not UTF-8 Python gets a UnicodeDecodeError instead of InvalidArgumentError. Training never
    # meets it: its scan names the record first.)
    with pytest.raises((tf.errors.InvalidArgumentError, UnicodeDecodeError)):
        read_all([path], batch_size=3, policy="fail")
    with pytest.raises(ValueError, match="not a tf.train.Example"):
        reader.check_schema([path], parse_spec())


def test_unknown_policy_rejected(tmp_path):
    path = write(make_rows(2), tmp_path / "a")
    with pytest.raises(ValueError, match="policy"):
        reader.scan([path], parse_spec(), policy="ignore")
    with pytest.raises(ValueError, match="policy"):
        reader.make_dataset([path], parse_spec(), SPEC.prepare, 2, policy="ignore")


# --- non-finite numeric values --------------------------------------------------------------------

@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_scan_non_finite_numeric_names_feature_file_record(tmp_path, bad_value):
    rows = make_rows(9)
    rows[5]["score"] = bad_value
    path = write(rows, tmp_path / "nan", "GZIP")
    with pytest.raises(CorruptRecordError) as err:
        reader.scan([path], parse_spec(), policy="fail", batch_size=4, check_finite=["score"])
    assert err.value.path == path and err.value.record == 5
    assert "'score'" in str(err.value) and path in str(err.value)
    # without the check, the value passes through; with skip, the record is dropped and named
    assert reader.scan([path], parse_spec(), batch_size=4).records == 9
    report = reader.scan([path], parse_spec(), policy="skip", batch_size=4, check_finite=["score"])
    assert report.records == 8 and [(p, r) for p, r, _ in report.skipped] == [(path, 5)]
