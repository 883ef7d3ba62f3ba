"""Beam jobs on the DirectRunner against the single-process path on the same data: raw event logs
(CSV, Parquet, TFRecord, with bad rows) -> training tf.Examples, byte for byte."""
import collections
import csv
import glob
import json
import os
import sys

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from tfrec_towers.data import event_logs as E
from tfrec_towers.data.writer import serialize

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pipelines", "beam"))
import training_examples  # noqa: E402

BAD = [  # (row, reason prefix): every one must reach the dead letter
    ({"user_id": "u1", "item_id": "i1", "timestamp": "soon", "label": "1"}, "malformed timestamp"),
    ({"user_id": "u1", "item_id": "i1", "label": "1"}, "missing timestamp"),
    ({"user_id": "", "item_id": "i1", "timestamp": "5", "label": "1"}, "missing user_id"),
    ({"user_id": "u1", "item_id": "nope", "timestamp": "5", "label": "1"}, "unknown item_id"),
    ({"user_id": "ghost", "item_id": "i1", "timestamp": "5", "label": "1"}, "unknown user_id"),
    ({"user_id": "u1", "item_id": "i2", "timestamp": "5", "label": "1.5"}, "malformed label"),
]


def write_csv(path, rows, columns):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("|".join(v) if isinstance(v, list) else v) for k, v in r.items()})


@pytest.fixture(scope="module")
def raw_logs(tmp_path_factory):
    """30 users, 20 items, 600 events in requests of 3 shown items (one click each), equal timestamps
    included, over two CSV files, a Parquet file and a TFRecord file, plus the bad rows."""
    root = tmp_path_factory.mktemp("raw")
    rng = np.random.default_rng(0)
    users = [{"user_id": f"u{u}", "user_gender": "MF"[u % 2], "user_age": str(20 + u)} for u in range(30)]
    items = [{"item_id": f"i{i}", "item_title": f"Title {i}", "item_genres": ["Drama", "Comedy"][: 1 + i % 2],
              "item_year": str(1990 + i)} for i in range(20)]
    events = []
    for r in range(200):
        user, t = f"u{rng.integers(30)}", int(1000 + rng.integers(50)) * 10
        for pos, item in enumerate(rng.choice(20, size=3, replace=False)):
            events.append({"user_id": user, "item_id": f"i{item}", "timestamp": str(t), "label": str(int(pos == 0)),
                           "request_id": f"r{r}", "device": ["mobile", "tv"][r % 2]})
    os.makedirs(root / "events")
    columns = ["user_id", "item_id", "timestamp", "label", "request_id", "device"]
    write_csv(root / "events" / "a.csv", events[:200] + [b for b, _ in BAD[:3]], columns)
    write_csv(root / "events" / "b.csv", events[200:350] + [b for b, _ in BAD[3:]], columns)
    pq.write_table(pa.Table.from_pylist([{**e, "timestamp": int(e["timestamp"]), "label": int(e["label"])}
                                         for e in events[350:500]]), root / "events" / "c.parquet")
    with tf.io.TFRecordWriter(str(root / "events" / "d.tfrecord.gz"), options="GZIP") as w:
        for e in events[500:]:
            w.write(serialize({**e, "timestamp": int(e["timestamp"]), "label": int(e["label"])}))
    write_csv(root / "users.csv", users, ["user_id", "user_gender", "user_age"])
    write_csv(root / "items.csv", items, ["item_id", "item_title", "item_genres", "item_year"])
    return {"events": str(root / "events" / "*"), "users": str(root / "users.csv"), "items": str(root / "items.csv"),
            "num_events": len(events), "root": root}


def records(path):
    return [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]


def parse(raw):
    return {k: [v.decode() if isinstance(v, bytes) else v for v in getattr(f, f.WhichOneof("kind")).value]
            for k, f in tf.train.Example.FromString(raw).features.feature.items()}


@pytest.mark.parametrize("holdout", ["none", "last"])
def test_beam_job_equals_the_single_process_path(raw_logs, tmp_path, holdout):
    schema = E.LogSchema(holdout=holdout, num_shards=3, history_len=5)
    single = E.build_training_examples(raw_logs["events"], raw_logs["items"], str(tmp_path / "single"),
                                       users=raw_logs["users"], schema=schema, progress=lambda m: None)
    meta = training_examples.run(["--events", raw_logs["events"], "--items", raw_logs["items"], "--users",
                                  raw_logs["users"], "--out", str(tmp_path / "beam"), "--holdout", holdout,
                                  "--num-shards", "3", "--history-len", "5", "--", "--runner", "DirectRunner",
                                  "--direct_num_workers", "1"])
    assert meta == {**single, "files": meta["files"]}
    singles = sorted(os.path.relpath(p, tmp_path / "single") for p in glob.glob(str(tmp_path / "single" / "**"),
                                                                             recursive=True) if os.path.isfile(p))
    beams = sorted(os.path.relpath(p, tmp_path / "beam") for p in glob.glob(str(tmp_path / "beam" / "**"),
                                                                         recursive=True) if os.path.isfile(p))
    assert singles == beams and len([p for p in singles if p.startswith("train/")]) == 3
    for rel in singles:
        a, b = tmp_path / "single" / rel, tmp_path / "beam" / rel
        if rel.endswith(".gz"):
            assert records(str(a)) == records(str(b)), rel
            assert a.read_bytes() == b.read_bytes(), rel  # GZIP included: deterministic files
        elif rel == "metadata.json":  # the same but for its absolute paths
            assert {**json.loads(a.read_text()), "files": None} == {**json.loads(b.read_text()), "files": None}
        else:
            assert a.read_bytes() == b.read_bytes(), rel

    # what the examples hold
    assert single["events_read"] == raw_logs["num_events"] + len(BAD)
    assert single["events_rejected"] == len(BAD)
    dead = [json.loads(line) for line in open(tmp_path / "single" / "dead_letter.jsonl", encoding="utf-8")]
    assert sorted(d["reason"].split(":")[0] for d in dead) == sorted(r for _, r in BAD)
    assert all(d["source"].endswith((".csv")) and d["record"] for d in dead)
    rows = [(split, parse(r)) for split in ("train", "test")
            for p in sorted(glob.glob(str(tmp_path / "single" / split / "part-*"))) for r in records(p)]
    assert len(rows) == raw_logs["num_events"] == single["num_train"] + single.get("num_test", 0)
    by_user = collections.defaultdict(list)
    for split, row in rows:
        by_user[row["user_id"][0]].append((split, row))
    for user, user_rows in by_user.items():
        train_clicks = [(r["timestamp"][0], r["item_id"][0]) for split, r in user_rows
                        if split == "train" and r["label"][0] == 1]
        tests = [r for split, r in user_rows if split == "test"]
        assert len(tests) == (holdout == "last" and len(train_clicks) + len(tests) >= 2)
        for split, r in user_rows:
            before = {item for t, item in train_clicks if t < r["timestamp"][0]}  # strictly before
            history = r.get("item_history", [])
            assert set(history) <= before and len(history) == min(5, sum(t < r["timestamp"][0] for t, _ in train_clicks))
            assert r["user_gender"] and r["item_title"] and r["device"]  # tables joined, context kept
            if r["label"][0] == 1:
                assert len(r["exposure_negatives"]) == 2 and r["item_id"][0] not in r["exposure_negatives"]
            if tests and split == "train":
                assert r["timestamp"][0] <= tests[0]["timestamp"][0]  # the held-out click is the latest
    popularity = open(tmp_path / "single" / "popularity.csv", encoding="utf-8").read().splitlines()
    assert popularity[0] == "item_id,count,frequency,sampling_probability"
    total = sum(int(line.split(",")[1]) for line in popularity[1:])
    assert total == sum(1 for split, r in rows if split == "train" and r["label"][0] == 1)


def test_beam_refresh_equals_refresh_items(tmp_path):
    import shutil

    from conftest import small_trained_run
    from tfrec_towers.export.exporter import export_run, read_metadata, refresh_items
    from tfrec_towers.export.versions import list_versions

    import refresh_items as beam_refresh

    run_dir, files, config = small_trained_run(tmp_path, num_users=200, num_items=120, num_requests=2000, seed=2,
                                               epochs=1)
    first = export_run(run_dir, str(tmp_path / "a"), "m", index="portable", k=10, log=lambda m: None)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    # the new catalog: items 10.. of the old one, in two files
    old = records(sorted(glob.glob(files["items"]))[0])
    for n, part in enumerate((old[10:60], old[60:])):
        with tf.io.TFRecordWriter(str(tmp_path / f"catalog-{n}.tfrecord.gz"), options="GZIP") as w:
            for r in part:
                w.write(r)
    catalog = str(tmp_path / "catalog-*.tfrecord.gz")

    single = refresh_items(str(tmp_path / "a"), "m", catalog, log=lambda m: None)
    distributed = beam_refresh.run(["--base", str(tmp_path / "b"), "--name", "m", "--items", catalog,
                                    "--batch-size", "16", "--", "--runner", "DirectRunner"])
    assert os.path.basename(single) != os.path.basename(first) and len(list_versions(str(tmp_path / "b" / "m"))) == 2
    meta_a, meta_b = read_metadata(single), read_metadata(distributed)
    for key in ("refreshed_from", "weights_fingerprint", "index", "feature_spec"):
        assert meta_a[key] == meta_b[key], key
    assert meta_a["catalog"]["num_items"] == meta_b["catalog"]["num_items"] == len(old) - 10

    queries = config.features.prepare(tf.io.parse_example(records(sorted(glob.glob(files["test"])))[:30],
                                                          config.features.parse_spec("query")))
    a = tf.saved_model.load(single).signatures["serving_default"](**queries)
    b = tf.saved_model.load(distributed).signatures["serving_default"](**queries)
    np.testing.assert_array_equal(a["item_ids"].numpy(), b["item_ids"].numpy())
    np.testing.assert_allclose(a["scores"].numpy(), b["scores"].numpy(), atol=1e-5)
    new_ids = {parse(r)["item_id"][0] for r in old[10:]}
    assert set(a["item_ids"].numpy().astype(str).ravel()) <= new_ids

    with pytest.raises(ValueError, match="appeared after the catalog was embedded"):
        refresh_items(str(tmp_path / "b"), "m", catalog, log=lambda m: None, catalog=(np.array(["x"]), np.ones((1, 4))),
                      from_version=int(os.path.basename(first)))


def test_examples_command_output_trains(raw_logs, tmp_path):
    """`tfrec-towers examples` writes what `train` reads: a config over the joined fields trains on it."""
    import subprocess

    from tfrec_towers.config import Config, packaged
    from tfrec_towers.train import train

    script = os.path.join(os.path.dirname(sys.executable), "tfrec-towers")
    done = subprocess.run([script, "examples", "--events", raw_logs["events"], "--items", raw_logs["items"],
                           "--users", raw_logs["users"], "--out", str(tmp_path / "ex"), "--holdout", "last"],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES=""))
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.load(open(tmp_path / "ex" / "metadata.json", encoding="utf-8"))
    assert meta["events_rejected"] == len(BAD) and 25 <= meta["num_test"] <= 30  # users with 2+ clicks

    d = Config.load(packaged("default")).to_dict()
    d["features"] = {"item_id": "item_id",
                     "query": [{"name": "user_id", "type": "id"}, {"name": "user_gender", "type": "categorical"},
                               {"name": "device", "type": "categorical"},
                               {"name": "item_history", "type": "sequence", "vocab_from": "item_id", "max_len": 50}],
                     "candidate": [{"name": "item_id", "type": "id"},
                                   {"name": "item_genres", "type": "categorical", "multivalued": True}]}
    d["train"].update(epochs=1, batch_size=64)
    metrics = train(Config.from_dict(d), meta["files"]["train"], str(tmp_path / "run"), meta["files"]["test"],
                    meta["files"]["items"], verbose=0, progress=lambda m: None)
    assert metrics["events"] == meta["num_test"] and metrics["catalog_size"] == 20
