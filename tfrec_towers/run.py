"""A run directory: what training writes and what evaluation and export read back.

    RUN/config.yaml          resolved config (a resumed run must have the same)
    RUN/run.json             train / eval / items globs of the run
    RUN/feature_stats.json   vocabularies, numeric statistics, item counts (one pass over train logs)
    RUN/backup/              BackupAndRestore state: a killed run resumes from its last epoch
    RUN/checkpoints/         weights after each epoch (the newest train.keep_checkpoints)
    RUN/logs/                TensorBoard
    RUN/history.csv          per-epoch loss and batch metrics
    RUN/weights/final*       final weights
    RUN/metrics.json         full-catalog evaluation
    RUN/train.lock           held (flock) by the one process training in RUN; train.lock.json names it

config.yaml, feature_stats.json, scan.txt and run.json are written atomically, and only after the
stats pass over the training logs completed; run.json (last) records the training files and their
sizes, so a later command on other files is refused instead of reusing stats that do not fit them.
"""
import contextlib
import datetime
import json
import os
import re
import socket
import sys
from typing import Any, Dict, List, Sequence

import filelock
import tensorflow as tf

from tfrec_towers.config import Config
from tfrec_towers.features.stats import FeatureStats
from tfrec_towers.model import TwoTowerModel, build_model


__all__ = ["DamagedCheckpointError", "RunDir", "RunInUseError", "dummy_batch", "file_fingerprints", "load_model",
           "restore_weights", "write_atomic"]


class RunDir:
    def __init__(self, path: str):
        self.path = os.path.abspath(path)

    def __truediv__(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def weights(self) -> str:
        return self / "weights/final"

    def info(self) -> Dict[str, Any]:
        if not os.path.exists(self / "run.json"):
            raise FileNotFoundError(f"{self.path} is not a training run directory (no run.json)")
        with open(self / "run.json", encoding="utf-8") as f:
            return json.load(f)

    def write_info(self, **info) -> None:
        write_atomic(self / "run.json", json.dumps(info, indent=2))

    @contextlib.contextmanager
    def lock(self):
        """Hold the run directory's lock (created with the directory) for the ``with`` block.

        An flock, released by the kernel when the holder exits, kill -9 included, so a dead run never
        blocks the next one. A second process fails at once, naming the holder.
        """
        os.makedirs(self.path, exist_ok=True)
        lock = filelock.FileLock(self / "train.lock", timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise RunInUseError(f"{self.path} is in use by another training process ({self._holder()}); "
                                "wait for it to finish or use another run directory") from None
        try:
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                      "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
            write_atomic(self / "train.lock.json", json.dumps(holder))
            yield
        finally:
            lock.release()

    def _holder(self) -> str:
        try:
            with open(self / "train.lock.json", encoding="utf-8") as f:
                h = json.load(f)
            return f"pid {h['pid']} on {h['host']} since {h['since']}: {h['command']}"
        except (OSError, ValueError, KeyError):
            return "holder unknown"

    def config(self) -> Config:
        return Config.load(self / "config.yaml")

    def stats(self) -> FeatureStats:
        return FeatureStats.load(self / "feature_stats.json")

    def fit_timing(self) -> Dict[str, float]:
        """Training examples and ``fit``'s wall and process-CPU seconds, from ``epochs.jsonl`` (one line per
        finished epoch) and the stats' example count (capped by ``train.steps_per_epoch`` x batch)."""
        with open(self / "epochs.jsonl", encoding="utf-8") as f:
            epochs = [json.loads(line) for line in f if line.strip()]
        train = self.config().train
        per_epoch = self.stats().num_examples
        if train.steps_per_epoch:
            per_epoch = min(per_epoch, train.steps_per_epoch * train.batch_size)
        return {"examples": per_epoch * len(epochs), "seconds": epochs[-1]["seconds"],
                "cpu_seconds": epochs[-1]["cpu_seconds"]}


class RunInUseError(BlockingIOError):
    """Another process holds the run directory's lock (what a non-blocking flock raises, named)."""


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers see the old file or
    the whole new one, never a part (a killed process leaves at most the temporary file)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def file_fingerprints(files: Sequence[str]) -> List[List]:
    """[[path, size in bytes], ...] of the training files, as run.json records them."""
    return [[os.path.abspath(f) if "://" not in f else f, tf.io.gfile.stat(f).length] for f in files]


def dummy_batch(config: Config) -> Dict[str, tf.Tensor]:
    """A one-row batch of model inputs, to create a model's variables before restoring weights."""
    return config.features.dummy_batch()


class DamagedCheckpointError(ValueError):
    """Saved weights that cannot be read back; the message names the checkpoint and the reason."""


def restore_weights(model, path: str):
    """``model.load_weights(path)`` (the load status returned), where a damaged checkpoint raises
    DamagedCheckpointError "PATH: damaged checkpoint (REASON)" instead of TensorFlow's own error,
    which names no file ("Read less bytes than requested" for a truncated or empty data file, "not
    an sstable" for a truncated index, a missing shard, a CRC mismatch). Every command that reads a
    run's weights back (evaluate, export, refresh-items, report, mining) comes through here.

    A checkpoint of another model (a variable of another shape) stays Keras' ValueError."""
    try:
        return model.load_weights(path)
    except (tf.errors.OpError, IndexError) as e:
        reason = getattr(e, "message", None) or str(e) or type(e).__name__
        reason = re.sub(r"^\{\{[^}]*\}\}\s*", "", reason.strip().splitlines()[0]) if reason.strip() else type(e).__name__
        if len(reason) > 300:
            reason = reason[:297] + "..."
        raise DamagedCheckpointError(f"{path}: damaged checkpoint ({reason}); train the run again, or restore "
                                     "its weights/ from a copy") from None


def load_model(run_dir: str) -> TwoTowerModel:
    """Rebuild a trained model from its run directory (config + stats + final weights)."""
    run = RunDir(run_dir)
    if not tf.io.gfile.exists(run.weights + ".index"):
        raise FileNotFoundError(f"{run.path} has no final weights: did training finish?")
    config = run.config()
    model = build_model(config, run.stats())
    model.query_tower(dummy_batch(config))
    model.candidate_tower(dummy_batch(config))
    restore_weights(model, run.weights).expect_partial()
    return model
