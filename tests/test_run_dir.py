"""The run directory under bad input and concurrent use (issue 14.2, 14.3), on real files and processes:
empty input fails before anything is written, a run's files are tied to the training files they came
from, and one process at a time trains in a run directory (an flock that dies with its holder)."""
import json
import os
import signal
import subprocess
import sys
import time

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import pytest
import tensorflow as tf

from tfrec_towers.config import Config, packaged
from tfrec_towers.data.synthetic import generate_synthetic
from tfrec_towers.run import RunDir, RunInUseError
from tfrec_towers.train import train

RUN_FILES = ("config.yaml", "feature_stats.json", "scan.txt", "run.json")


def quiet(message):
    pass


def small_config(epochs=1):
    config = Config.load(packaged("default"))
    config.train.epochs, config.train.batch_size = epochs, 128
    return config


def tfrec_towers_cli(*args):
    script = os.path.join(os.path.dirname(sys.executable), "tfrec-towers")
    base = [script] if os.path.exists(script) else [sys.executable, "-m", "tfrec_towers.cli"]
    return base + [str(a) for a in args]


def env():
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    return generate_synthetic(str(root / "a"), num_users=80, num_items=40, num_requests=600, seed=0,
                              progress=None)["files"]


def test_empty_input_fails_before_anything_is_written_and_leaves_no_poison(logs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "zero-bytes.tfrecord.gz").write_bytes(b"")
    with tf.io.TFRecordWriter(str(empty / "zero-records.tfrecord.gz"), "GZIP"):
        pass
    run_dir = tmp_path / "run"
    for pattern in (empty / "zero-bytes.tfrecord.gz", empty / "zero-records.tfrecord.gz", empty / "*"):
        with pytest.raises(ValueError, match="no training records in"):
            train(small_config(), str(pattern), str(run_dir), verbose=0, progress=quiet)
        assert not run_dir.exists()
    # The same run directory then trains on good data.
    metrics = train(small_config(), logs["train"], str(run_dir), logs["test"], logs["items"], verbose=0,
                    progress=quiet)
    assert metrics["all_items"]["hr@10"] >= 0 and RunDir(str(run_dir)).stats().num_examples > 0


def test_no_positive_event_fails_after_the_pass_without_writing_run_files(logs, tmp_path):
    records = [tf.train.Example.FromString(r.numpy())
               for r in tf.data.TFRecordDataset(tf.io.gfile.glob(logs["train"]), compression_type="GZIP").take(50)]
    path = tmp_path / "unclicked.tfrecord.gz"
    with tf.io.TFRecordWriter(str(path), "GZIP") as w:
        for example in records:
            example.features.feature["label"].int64_list.value[:] = [0]
            w.write(example.SerializeToString())
    config = small_config()
    config.data.label = "label"
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"no training records in .*none with label >= 1"):
        train(config, str(path), str(run_dir), verbose=0, progress=quiet)
    assert not any((run_dir / name).exists() for name in RUN_FILES)


def test_run_directory_refuses_other_or_changed_training_files(logs, tmp_path):
    own = tmp_path / "train"  # a copy: one shard is changed below
    own.mkdir()
    for shard in tf.io.gfile.glob(logs["train"]):
        tf.io.gfile.copy(shard, str(own / os.path.basename(shard)))
    pattern = str(own / "*")
    run_dir = str(tmp_path / "run")
    train(small_config(), pattern, run_dir, verbose=0, progress=quiet)
    recorded = RunDir(run_dir).info()["train_files"]
    assert [os.path.getsize(p) for p, _ in recorded] == [size for _, size in recorded]

    other = generate_synthetic(str(tmp_path / "b"), num_users=80, num_items=40, num_requests=600, seed=1,
                               progress=None)["files"]
    with pytest.raises(ValueError, match="was trained on other files"):
        train(small_config(), other["train"], run_dir, verbose=0, progress=quiet)
    # One recorded shard grown by a record (same name, new content).
    shard = recorded[0][0]
    with open(shard, "ab") as f:
        f.write(open(shard, "rb").read()[:100])
    with pytest.raises(ValueError, match=f"{shard}: recorded {recorded[0][1]} bytes, now"):
        train(small_config(), pattern, run_dir, verbose=0, progress=quiet)


def test_second_train_process_fails_at_once_naming_the_holder(logs, tmp_path):
    run_dir = tmp_path / "run"
    command = tfrec_towers_cli("train", "--train", logs["train"], "--run-dir", run_dir,
                               "--set", "train.epochs=500", "--set", "train.batch_size=64")
    log = open(tmp_path / "first.log", "w+")
    first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env())
    try:
        deadline = time.time() + 120
        while not (run_dir / "epochs.jsonl").exists():  # training, lock held
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
            assert time.time() < deadline
            time.sleep(0.1)
        holder = json.loads((run_dir / "train.lock.json").read_text())
        assert holder["pid"] == first.pid

        start = time.time()
        second = subprocess.run(command, capture_output=True, text=True, env=env(), timeout=120)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"pid {first.pid}" in second.stderr and "in use by another training process" in second.stderr
        assert "Traceback" not in second.stderr
        assert time.time() - start < 60  # fails at once (interpreter start-up aside), does not wait
        with pytest.raises(RunInUseError, match=f"pid {first.pid}"):
            with RunDir(str(run_dir)).lock():
                pass

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    # kill -9 released the lock: the next process takes it.
    with RunDir(str(run_dir)).lock():
        assert json.loads((run_dir / "train.lock.json").read_text())["pid"] == os.getpid()
