"""End-to-end tests: synthetic TFRecord logs -> train -> full-catalog evaluation, on real files and
real subprocesses (no mocks): learning, run-directory artifacts, reloading in a fresh process,
schema errors before training, NaN handling, resumption after SIGKILL and the skip policy.
"""
import csv
import glob
import json
import math
import os
import signal
import subprocess
import sys
import time

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import numpy as np
import pytest
import tensorflow as tf

from tfrec_towers.config import Config, packaged
from tfrec_towers.data.synthetic import generate_synthetic
from tfrec_towers.evaluation.job import evaluate_run
from tfrec_towers.model import build_model
from tfrec_towers.run import RunDir, dummy_batch, load_model
from tfrec_towers.train import train

EPOCHS = 5
BATCH = 256


def quiet(message):
    """progress callback that prints (so that capsys sees it) without flooding the log."""
    print(message)


def cli(*args):
    """The tfrec-towers command of this interpreter's environment."""
    script = os.path.join(os.path.dirname(sys.executable), "tfrec-towers")
    base = [script] if os.path.exists(script) else [sys.executable, "-m", "tfrec_towers.cli"]
    return base + [str(a) for a in args]


def subprocess_env():
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def small_config(**train):
    config = Config.load(packaged("default"))
    config.train.epochs = train.pop("epochs", EPOCHS)
    config.train.batch_size = train.pop("batch_size", BATCH)
    for key, value in train.items():
        setattr(config.train, key, value)
    return config


def config_with(extra_query=(), **sections):
    """The default config as a dict with extra query features and section overrides -> Config."""
    d = Config.load(packaged("default")).to_dict()
    d["features"]["query"].extend(extra_query)
    d["train"].update(epochs=EPOCHS, batch_size=BATCH)
    for section, values in sections.items():
        d[section].update(values)
    return Config.from_dict(d)


def raw_records(files):
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def epoch_lines(run_dir):
    path = os.path.join(run_dir, "epochs.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


# --- shared data and one trained run --------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "logs"
    meta = generate_synthetic(str(out), num_users=300, num_items=150, num_requests=4000, seed=0, progress=None)
    files = meta["files"]
    assert len(glob.glob(files["train"])) >= 1 and len(glob.glob(files["test"])) >= 1
    return meta


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    files = data["files"]
    run_dir = str(tmp_path_factory.mktemp("trained") / "run")
    config = small_config()
    metrics = train(config, files["train"], run_dir, files["test"], files["items"], verbose=0, progress=quiet)
    return run_dir, config, metrics


def test_training_learns_beyond_an_untrained_model(trained, data, tmp_path):
    run_dir, config, metrics = trained
    files = data["files"]
    run = RunDir(run_dir)
    untrained = build_model(config, run.stats())
    untrained.query_tower(dummy_batch(config))
    untrained.candidate_tower(dummy_batch(config))
    baseline = evaluate_run(run_dir, files["test"], files["items"], model=untrained,
                            output=str(tmp_path / "untrained.json"), progress=quiet)

    assert metrics["events"] == data["num_test"] == baseline["events"]
    assert metrics["catalog_size"] == data["num_items"]
    hr, hr0 = metrics["all_items"]["hr@10"], baseline["all_items"]["hr@10"]
    assert hr >= 2 * hr0 and hr >= hr0 + 0.05, (hr, hr0)
    assert metrics["all_items"]["mrr"] > baseline["all_items"]["mrr"] + 0.05
    # metrics are internally consistent
    for variant in ("all_items", "exclude_history"):
        m = metrics[variant]
        assert 0 <= m["p@1"] == m["hr@1"] <= m["hr@5"] <= m["hr@10"] <= m["hr@50"] <= m["hr@100"] <= 1
    # the untrained evaluation went to its own file, not over the run's metrics
    with open(run / "metrics.json", encoding="utf-8") as f:
        assert json.load(f)["all_items"] == metrics["all_items"]


def test_run_directory_artifacts(trained):
    run_dir, config, metrics = trained
    run = RunDir(run_dir)
    with open(run / "metrics.json", encoding="utf-8") as f:
        saved = json.load(f)
    assert saved["all_items"] == pytest.approx(metrics["all_items"])
    assert {"hr@10", "ndcg@10", "mrr", "recall@10"} <= set(saved["exclude_history"])

    with open(run / "history.csv", encoding="utf-8") as f:
        history = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in history] == list(range(EPOCHS))
    losses = [float(r["loss"]) for r in history]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]

    assert [e["epoch"] for e in epoch_lines(run_dir)] == list(range(EPOCHS))
    for epoch in range(1, EPOCHS + 1):  # the newest train.keep_checkpoints (3) are kept
        assert os.path.exists(run / f"checkpoints/epoch-{epoch:03d}.index") == (epoch > EPOCHS - 3)
    assert glob.glob(os.path.join(run_dir, "logs", "train", "events.out.tfevents.*"))
    assert os.path.exists(run.weights + ".index")
    assert run.config().to_dict() == config.to_dict()
    assert run.stats().num_examples > 0
    info = run.info()
    assert info["train"] and info["eval"] and info["items"]
    assert "read" in open(run / "scan.txt", encoding="utf-8").read()


def test_fresh_process_reloads_and_reproduces_metrics(trained, data, tmp_path):
    run_dir, config, metrics = trained
    files = data["files"]
    output = tmp_path / "fresh.json"
    proc = subprocess.run(cli("evaluate", "--run-dir", run_dir, "--eval", files["test"], "--items", files["items"],
                              "--output", output),
                          capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "hr@10=" in proc.stdout
    with open(output, encoding="utf-8") as f:
        fresh = json.load(f)
    for variant in ("all_items", "exclude_history"):
        assert fresh[variant] == pytest.approx(metrics[variant], abs=1e-6), variant
    assert fresh["events"] == metrics["events"] and fresh["catalog_size"] == metrics["catalog_size"]

    # and in this process too: load_model restores the final weights (equal to the last epoch's checkpoint)
    model = load_model(run_dir)
    reader_ = tf.train.load_checkpoint(os.path.join(run_dir, "checkpoints", f"epoch-{EPOCHS:03d}"))
    final = tf.train.load_checkpoint(RunDir(run_dir).weights)
    keys = [k for k in final.get_variable_to_shape_map() if "optimizer" not in k and "save_counter" not in k]
    assert keys
    for key in keys:
        np.testing.assert_array_equal(final.get_tensor(key), reader_.get_tensor(key))
    batch = dummy_batch(config)
    assert np.isfinite(model.query_tower(batch).numpy()).all()


# --- errors before training -----------------------------------------------------------------------

def test_feature_missing_from_logs_fails_before_training(data, tmp_path):
    config = config_with([{"name": "user_country", "type": "categorical", "embedding_dim": 4}])
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError) as err:
        train(config, data["files"]["train"], str(run_dir), verbose=0, progress=quiet)
    message = str(err.value)
    assert "'user_country'" in message and "missing" in message
    assert "train" in message  # names the file (under OUT/train/)
    for artifact in ("checkpoints", "backup", "weights", "feature_stats.json", "epochs.jsonl", "history.csv"):
        assert not os.path.exists(run_dir / artifact), artifact


# --- NaN numeric values ---------------------------------------------------------------------------

def logs_with_float_feature(data, path, nan_at=(), limit=8000):
    """The first ``limit`` train events with an extra float feature ``watch_fraction``, NaN at ``nan_at``."""
    rng = np.random.default_rng(1)
    raws = raw_records(sorted(glob.glob(data["files"]["train"]))[:1])[:limit]
    with tf.io.TFRecordWriter(str(path)) as w:
        for i, raw in enumerate(raws):
            example = tf.train.Example.FromString(raw)
            value = float("nan") if i in nan_at else float(rng.uniform())
            example.features.feature["watch_fraction"].float_list.value.append(value)
            w.write(example.SerializeToString())
    return str(path)


def test_nan_numeric_feature_error_names_feature(data, tmp_path):
    path = logs_with_float_feature(data, tmp_path / "nan.tfrecord", nan_at=(1234,))
    config = config_with([{"name": "watch_fraction", "type": "numeric"}], train={"epochs": 1})
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError) as err:
        train(config, path, str(run_dir), verbose=0, progress=quiet)
    message = str(err.value)
    assert "'watch_fraction'" in message and path in message and "record 1234" in message
    assert not os.path.exists(run_dir / "checkpoints")


def test_nan_numeric_feature_with_impute_mean_trains(data, tmp_path):
    nan_at = set(range(0, 8000, 7))  # plenty of NaNs, positives among them
    path = logs_with_float_feature(data, tmp_path / "nan.tfrecord", nan_at=nan_at)
    config = config_with([{"name": "watch_fraction", "type": "numeric", "impute": "mean"}],
                         train={"epochs": 1})
    run_dir = tmp_path / "run"
    train(config, path, str(run_dir), verbose=0, progress=quiet)
    lines = epoch_lines(str(run_dir))
    assert [e["epoch"] for e in lines] == [0]
    assert all(math.isfinite(e["loss"]) for e in lines)
    mean, std = RunDir(str(run_dir)).stats().numeric("watch_fraction")
    assert 0.3 < mean < 0.7 and 0.1 < std < 0.5  # from the finite values only
    model = load_model(str(run_dir))
    batch = dummy_batch(config)
    batch["watch_fraction"] = tf.constant([float("nan")])
    assert np.isfinite(model.query_tower(batch).numpy()).all()


# --- resumption after SIGKILL ---------------------------------------------------------------------

def test_resume_after_sigkill_continues_from_backup(data, tmp_path):
    files = data["files"]
    run_dir = tmp_path / "run"
    command = cli("train", "--train", files["train"], "--run-dir", run_dir,
                  "--set", "train.epochs=6", "--set", f"train.batch_size={BATCH}")
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=subprocess_env(), cwd=tmp_path)
        try:
            deadline = time.time() + 240
            while len(epoch_lines(str(run_dir))) < 2:
                assert proc.poll() is None, open(tmp_path / "first.log").read()[-3000:]
                assert time.time() < deadline, "no 2 epochs within the deadline"
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = epoch_lines(str(run_dir))
    assert 2 <= len(before) < 6, "the first run was killed too late to test resumption"
    assert not os.path.exists(str(run_dir / "weights" / "final.index"))
    assert [e["epoch"] for e in before] == list(range(len(before)))

    second = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path,
                            timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming the run" in second.stdout
    after = epoch_lines(str(run_dir))[len(before):]
    resumed = [e["epoch"] for e in after]
    assert resumed and resumed[0] == before[-1]["epoch"] + 1, (before, after)  # not from epoch 0
    assert sorted(e["epoch"] for e in before + after) == list(range(6))
    assert os.path.exists(str(run_dir / "weights" / "final.index"))
    for epoch in range(1, 7):  # the newest 3 (train.keep_checkpoints), across the restart
        assert os.path.exists(str(run_dir / "checkpoints" / f"epoch-{epoch:03d}.index")) == (epoch > 3)

    # A different config in the same run directory is refused, clearly, and changes nothing.
    config = small_config(epochs=7)
    with pytest.raises(ValueError, match="different config"):
        train(config, files["train"], str(run_dir), verbose=0, progress=quiet)
    assert RunDir(str(run_dir)).config().train.epochs == 6
    assert len(epoch_lines(str(run_dir))) == len(before) + len(after)


# --- corrupt records: skip ------------------------------------------------------------------------

def test_skip_policy_trains_past_a_truncated_file(data, tmp_path, capsys):
    shards = sorted(glob.glob(data["files"]["train"]))
    logs = tmp_path / "logs"
    logs.mkdir()
    k = 3000
    intact_count = 0
    for n, shard in enumerate(shards):  # uncompressed copies; the first one cut inside record k
        raws = raw_records([shard])
        path = logs / f"part-{n}.tfrecord"
        with tf.io.TFRecordWriter(str(path)) as w:
            for raw in raws:
                w.write(raw)
        if n == 0:
            offset = sum(16 + len(r) for r in raws[:k])
            with open(path, "r+b") as f:
                f.truncate(offset + 12 + len(raws[k]) // 2)
            truncated = str(path)
        else:
            intact_count += len(raws)
    pattern = str(logs / "*.tfrecord")

    config = config_with(data={"corrupt_records": "fail"}, train={"epochs": 1})
    with pytest.raises(ValueError, match=f"record {k}"):
        train(config, pattern, str(tmp_path / "run-fail"), verbose=0, progress=quiet)

    config = config_with(data={"corrupt_records": "skip"}, train={"epochs": 1})
    run_dir = tmp_path / "run"
    capsys.readouterr()
    train(config, pattern, str(run_dir), verbose=0, progress=quiet)
    out = capsys.readouterr().out
    assert f"read {k + intact_count} records" in out
    assert "skipped 1 corrupt record" in out
    assert f"{truncated}: record {k}:" in out
    assert os.path.exists(str(run_dir / "weights" / "final.index"))
    assert f"{truncated}: record {k}:" in open(run_dir / "scan.txt", encoding="utf-8").read()
    assert [e["epoch"] for e in epoch_lines(str(run_dir))] == [0]


def test_rerunning_a_finished_run_evaluates_instead_of_training(trained, data, capsys):
    run_dir, config, metrics = trained
    epochs_before = epoch_lines(run_dir)
    files = data["files"]
    again = train(config, files["train"], run_dir, files["test"], files["items"], verbose=0, progress=quiet)
    assert "has finished training" in capsys.readouterr().out
    assert epoch_lines(run_dir) == epochs_before  # no epoch was trained again
    assert again["all_items"] == pytest.approx(metrics["all_items"], abs=1e-6)


def test_mirrored_strategy_trains(data, tmp_path):
    files = data["files"]
    config = small_config(epochs=2, strategy="mirrored")
    metrics = train(config, files["train"], str(tmp_path / "run"), files["test"], files["items"], verbose=0,
                    progress=quiet)
    assert len(epoch_lines(str(tmp_path / "run"))) == 2
    assert math.isfinite(epoch_lines(str(tmp_path / "run"))[-1]["loss"])
    assert metrics["all_items"]["hr@10"] > 0


def test_stats_count_the_events_the_label_filter_drops(trained, data):
    run_dir, config, _ = trained
    labels = tf.io.parse_example(raw_records(tf.io.gfile.glob(data["files"]["train"])),
                                 {"label": tf.io.FixedLenFeature([], tf.int64)})["label"].numpy()
    stats = RunDir(run_dir).stats()
    assert stats.num_examples == int((labels >= 1).sum())
    assert stats.num_filtered == int((labels < 1).sum()) > 0  # synthetic logs hold exposures (label 0)


def test_in_memory_input_trains_like_the_streamed_one(trained, data, tmp_path):
    """data.in_memory (issue 16): same examples (the label filter applied while loading), whole-set
    shuffles instead of the buffer's; the model learns as well as the streamed run."""
    _, _, streamed = trained
    files = data["files"]
    config = small_config()
    config.data.in_memory = True
    metrics = train(config, files["train"], str(tmp_path / "run"), files["test"], files["items"], verbose=0,
                    progress=quiet)
    lines = epoch_lines(str(tmp_path / "run"))
    assert len(lines) == config.train.epochs and all(math.isfinite(x["loss"]) for x in lines)
    assert metrics["all_items"]["hr@10"] >= 0.8 * streamed["all_items"]["hr@10"], (metrics, streamed)
