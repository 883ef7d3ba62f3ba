"""Beam jobs on the DirectRunner against the single-process path on the same data: raw event logs
(CSV, Parquet, TFRecord, with bad rows) -> training tf.Examples, byte for byte."""
import collections
import csv
import glob
import json
import os
import re
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


def assert_same_outputs(single_dir, beam_dir, num_shards):
    """The two paths' output folders hold the same files, byte for byte (metadata.json but for its paths)."""
    singles = sorted(os.path.relpath(p, single_dir) for p in glob.glob(str(single_dir / "**"), recursive=True)
                     if os.path.isfile(p))
    beams = sorted(os.path.relpath(p, beam_dir) for p in glob.glob(str(beam_dir / "**"), recursive=True)
                   if os.path.isfile(p))
    assert singles == beams and len([p for p in singles if p.startswith("train/")]) == num_shards
    for rel in singles:
        a, b = single_dir / rel, beam_dir / rel
        if rel.endswith(".gz"):
            assert records(str(a)) == records(str(b)), rel
            assert a.read_bytes() == b.read_bytes(), rel  # GZIP included: deterministic files
        elif rel == "metadata.json":  # the same but for its absolute paths
            assert {**json.loads(a.read_text()), "files": None} == {**json.loads(b.read_text()), "files": None}
        else:
            assert a.read_bytes() == b.read_bytes(), rel


@pytest.mark.parametrize("holdout", ["none", "last"])
def test_beam_job_equals_the_single_process_path(raw_logs, tmp_path, holdout):
    schema = E.LogSchema(holdout=holdout, num_shards=3, history_len=5)
    single = E.build_training_examples(raw_logs["events"], raw_logs["items"], str(tmp_path / "single"),
                                       users=raw_logs["users"], schema=schema, progress=lambda m: None)
    meta = training_examples.run(["--events", raw_logs["events"], "--items", raw_logs["items"], "--users",
                                  raw_logs["users"], "--out", str(tmp_path / "beam"), "--holdout", holdout,
                                  "--num-shards", "3", "--history-len", "5", "--", "--runner", "DirectRunner",
                                  "--direct_num_workers", "1"])
    assert meta == {**single, "files": meta["files"]} and "dates" not in meta
    assert_same_outputs(tmp_path / "single", tmp_path / "beam", 3)

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
    first = export_run(run_dir, str(tmp_path / "a"), "m", index="portable", k=10, log=lambda m: None,
                       popularity_logs=files["test"], popularity_weight=0.2)  # both refreshes keep the prior
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
    for key in ("refreshed_from", "weights_fingerprint", "index", "feature_spec", "popularity_prior"):
        assert meta_a[key] == meta_b[key], key
    assert meta_b["popularity_prior"]["weight"] == 0.2
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


# --- logs partitioned by day (--dates, --history-days) ---------------------------------------------

DAYS = [f"2024-01-0{d}" for d in range(1, 6)]
T0 = 1_704_067_200  # 2024-01-01 00:00 UTC


@pytest.fixture(scope="module")
def day_logs(tmp_path_factory):
    """Five days of logs in Hive-style partitions two levels down (logs/region=eu/date=2024-01-0D/), 12 users,
    15 items, 25 requests of 3 shown items (one click) a day, one event of 2024-01-03 whose timestamp is on
    the day before; and date=2024-01-06 holding a corrupt Parquet file: any job that opens it fails."""
    root = tmp_path_factory.mktemp("days")
    rng = np.random.default_rng(1)
    users = [{"user_id": f"u{u}", "user_gender": "MF"[u % 2], "user_age": str(20 + u)} for u in range(12)]
    items = [{"item_id": f"i{i}", "item_title": f"Title {i}", "item_genres": ["Drama"], "item_year": "2000"}
             for i in range(15)]
    by_day = {}
    for d, day in enumerate(DAYS):
        by_day[day] = []
        for r in range(25):
            user, t = f"u{rng.integers(12)}", T0 + d * 86400 + int(rng.integers(1440)) * 60
            for pos, item in enumerate(rng.choice(15, size=3, replace=False)):
                by_day[day].append({"user_id": user, "item_id": f"i{item}", "timestamp": str(t),
                                    "label": str(int(pos == 0)), "request_id": f"r{d}-{r}", "device": "tv"})
    by_day["2024-01-03"][0]["timestamp"] = str(T0 + 86400 + 7)  # 2024-01-02 00:00:07: filed a day late
    columns = ["user_id", "item_id", "timestamp", "label", "request_id", "device"]
    for day, events in by_day.items():
        os.makedirs(root / "logs" / "region=eu" / f"date={day}")
        write_csv(root / "logs" / "region=eu" / f"date={day}" / "part-0.csv", events, columns)
    os.makedirs(root / "logs" / "region=eu" / "date=2024-01-06")
    (root / "logs" / "region=eu" / "date=2024-01-06" / "part-0.parquet").write_bytes(b"not parquet at all")
    write_csv(root / "users.csv", users, ["user_id", "user_gender", "user_age"])
    write_csv(root / "items.csv", items, ["item_id", "item_title", "item_genres", "item_year"])
    return {"events": str(root / "logs" / "*" / "date=*" / "*"), "users": str(root / "users.csv"),
            "items": str(root / "items.csv"), "by_day": by_day, "root": root}


def example_rows(out_dir):
    return [(split, raw) for split in ("train", "test") for p in sorted(glob.glob(str(out_dir / split / "part-*")))
            for raw in records(p)]


def event_key(row):
    return tuple(str(row[k][0] if isinstance(row[k], list) else row[k])
                 for k in ("user_id", "item_id", "timestamp", "request_id"))


def test_dates_select_day_partitions_and_earlier_days_only_shape_histories(day_logs, tmp_path, monkeypatch):
    opened, read_rows = [], E.read_rows
    monkeypatch.setattr(E, "read_rows", lambda path: (opened.append(path), read_rows(path))[1])

    def build(name, dates, history_days=None):
        opened.clear()
        meta = E.build_training_examples(day_logs["events"], day_logs["items"], str(tmp_path / name),
                                         users=day_logs["users"], schema=E.LogSchema(num_shards=2),
                                         progress=lambda m: None, dates=E.DateWindow.parse(dates, history_days))
        return meta, sorted(os.path.basename(os.path.dirname(p)) for p in opened if "date=" in p)  # not the tables

    with pytest.raises(pa.ArrowInvalid):  # the corrupt partition, when it is read
        build("all", ":")
    full, read = build("full", ":2024-01-05")
    assert read == [f"date={d}" for d in DAYS] and full["dates"]["context"] == []
    window, read = build("window", "2024-01-03:2024-01-04")  # every earlier partition as context
    assert read == [f"date={d}" for d in DAYS[:4]]
    narrow, read = build("narrow", "2024-01-03:2024-01-04", 1)
    assert read == [f"date={d}" for d in DAYS[1:4]]  # 2024-01-01 and -05, -06 never opened
    bare, read = build("bare", "2024-01-03:2024-01-04", 0)
    assert read == ["date=2024-01-03", "date=2024-01-04"]

    by_day = day_logs["by_day"]
    assert window["dates"] == {"from": "2024-01-03", "to": "2024-01-04", "history_days": None,
                               "examples": DAYS[2:4], "context": DAYS[:2],
                               "context_events": len(by_day[DAYS[0]]) + len(by_day[DAYS[1]]),
                               "events_off_partition_day": 1}
    assert narrow["dates"]["context"] == ["2024-01-02"] and narrow["dates"]["history_days"] == 1
    assert bare["dates"]["context"] == [] and bare["dates"]["context_events"] == 0
    assert full["dates"]["events_off_partition_day"] == 1 and full["dates"]["from"] is None

    # exactly the window's events are examples, the one filed a day late included
    in_window = sorted(event_key(e) for d in DAYS[2:4] for e in by_day[d])
    for name, meta in (("window", window), ("narrow", narrow), ("bare", bare)):
        rows = [parse(raw) for _, raw in example_rows(tmp_path / name)]
        assert sorted(map(event_key, rows)) == in_window and meta["num_train"] == len(in_window), name
        assert meta["events_read"] == meta["dates"]["context_events"] + len(in_window)
        clicks = sum(int(line.split(",")[1])
                     for line in open(tmp_path / name / "popularity.csv", encoding="utf-8").read().splitlines()[1:])
        assert clicks == sum(e["label"] == "1" for d in DAYS[2:4] for e in by_day[d]), name  # context: no counts
    # with every earlier day as context, the examples are the full run's, byte for byte
    full_rows = [raw for _, raw in example_rows(tmp_path / "full") if parse(raw)["request_id"][0][:2] in ("r2", "r3")]
    assert sorted(raw for _, raw in example_rows(tmp_path / "window")) == sorted(full_rows)
    # fewer context days: shorter histories, from those days' clicks only
    clicked = {day: {(e["user_id"], e["item_id"]) for e in by_day[day] if e["label"] == "1"} for day in DAYS}
    history = {name: {event_key(r): r.get("item_history", []) for r in map(parse, (raw for _, raw in
                                                                               example_rows(tmp_path / name)))}
               for name in ("window", "narrow", "bare")}
    window_only = clicked[DAYS[2]] | clicked[DAYS[3]]
    assert all((key[0], item) in window_only for key, h in history["bare"].items() for item in h)
    assert sum(map(len, history["window"].values())) > sum(map(len, history["narrow"].values())) \
        > sum(map(len, history["bare"].values()))
    firsts = {}
    for key in sorted(history["bare"], key=lambda k: int(k[2])):
        firsts.setdefault(key[0], key)  # each user's earliest example
    assert all(history["bare"][k] == [] for k in firsts.values())
    assert all(set(history["narrow"][k]) <= {i for u, i in clicked[DAYS[1]] if u == k[0]} for k in firsts.values())
    assert any(history["narrow"][k] for k in firsts.values())


def test_beam_job_equals_the_single_process_path_on_day_partitions(day_logs, tmp_path):
    """The identity check on a window with one context day, the corrupt partition outside it."""
    dates, schema = E.DateWindow.parse("2024-01-03:2024-01-04", 1), E.LogSchema(holdout="last", num_shards=3)
    single = E.build_training_examples(day_logs["events"], day_logs["items"], str(tmp_path / "single"),
                                       users=day_logs["users"], schema=schema, progress=lambda m: None, dates=dates)
    meta = training_examples.run(["--events", day_logs["events"], "--items", day_logs["items"], "--users",
                                  day_logs["users"], "--out", str(tmp_path / "beam"), "--holdout", "last",
                                  "--num-shards", "3", "--dates", "2024-01-03:2024-01-04", "--history-days", "1",
                                  "--", "--runner", "DirectRunner", "--direct_num_workers", "1"])
    assert meta == {**single, "files": meta["files"]}
    assert meta["dates"]["examples"] == DAYS[2:4] and meta["dates"]["context"] == ["2024-01-02"]
    assert meta["num_test"] > 0 and meta["dates"]["context_events"] == len(day_logs["by_day"]["2024-01-02"])
    rows = [parse(raw) for _, raw in example_rows(tmp_path / "single")]  # the holdout too: from the window only
    assert sorted(map(event_key, rows)) == sorted(event_key(e) for d in DAYS[2:4] for e in day_logs["by_day"][d])
    assert_same_outputs(tmp_path / "single", tmp_path / "beam", 3)


def _partitions(root, names):
    for name in names:
        os.makedirs(os.path.dirname(root / name), exist_ok=True)
        write_csv(root / name, [{"user_id": "u1", "item_id": "i1", "timestamp": str(T0), "label": "1"}],
                  ["user_id", "item_id", "timestamp", "label"])
    return str(root / "*" / "*.csv")


@pytest.mark.parametrize("options, files, message", [
    (["--dates", "2024-01-03"], None, "--dates must be FROM:TO"),
    (["--dates", "2024-01-03:2024-01-04:2024-01-05"], None, "--dates must be FROM:TO"),
    (["--dates", "2024-1-3:"], None, "got '2024-1-3:'"),
    (["--dates", "2024-02-30:"], None, "got '2024-02-30:'"),
    (["--dates", "20240103:"], None, "YYYY-MM-DD"),
    (["--dates", "2024-01-04:2024-01-03"], None, "--dates 2024-01-04:2024-01-03: FROM is after TO"),
    (["--history-days", "2"], None, "--history-days needs --dates"),
    (["--dates", ":2024-01-03", "--history-days", "2"], None, "--history-days needs a FROM date"),
    (["--dates", "2024-01-03:", "--history-days", "-1"], None, "--history-days must be >= 0"),
    (["--dates", "2024-02-01:"], None, "selects no partition .* whose partitions are 2024-01-01, 2024-01-02, "
                                       "2024-01-03, 2024-01-04, 2024-01-05, 2024-01-06$"),
    (["--dates", ":"], ["date=2024-01-01/a.csv", "misc/b.csv"], "misc/b.csv is not under a date=YYYY-MM-DD"),
    (["--dates", ":"], ["date=2024-01-01/a.csv", "date=2024-13-01/a.csv"], "'date=2024-13-01' does not name a date"),
    (["--dates", ":"], ["date=2024-01-01/a.csv", "date=latest/a.csv"], "'date=latest' does not name a date"),
], ids=["no-colon", "three-dates", "short-date", "no-such-day", "basic-iso", "from-after-to", "history-alone",
        "history-open-from", "history-negative", "empty-window", "unpartitioned-file", "bad-month", "not-a-date"])
def test_dates_errors_name_what_is_wrong(day_logs, tmp_path, capsys, options, files, message):
    """`tfrec-towers examples`: exit 2 and the reason; the Beam job: the same ValueError; no output."""
    from tfrec_towers import cli

    events = _partitions(tmp_path / "logs", files) if files else day_logs["events"]
    common = ["--events", events, "--items", day_logs["items"], "--out", str(tmp_path / "out")] + options
    assert cli.main(["examples"] + common) == 2
    assert re.search(message, capsys.readouterr().err.strip().replace(str(tmp_path / "logs") + "/", ""))
    with pytest.raises(ValueError) as e:
        training_examples.run(common + ["--", "--runner", "DirectRunner"])
    assert re.search(message, str(e.value).replace(str(tmp_path / "logs") + "/", ""))
    assert not os.path.exists(tmp_path / "out")
