"""Training: schema check -> one stats pass -> tf.data -> model.fit with checkpoints and resumption."""
import glob
import json
import os
import sys
import time
from typing import Optional

import tensorflow as tf
import tf_keras as keras

from tfrec_towers.config import Config
from tfrec_towers.data import reader
from tfrec_towers.data.inputs import check_training_sizes, compute_stats, make_input, parse_spec
from tfrec_towers.evaluate import evaluate_run
from tfrec_towers.mining import mine_hard_negatives
from tfrec_towers.model import build_model, make_optimizer
from tfrec_towers.negatives import build_negatives
from tfrec_towers.run import RunDir, dummy_batch, file_fingerprints, write_atomic


def worker_task() -> Optional[str]:
    """This process's task in TF_CONFIG's cluster (``"worker-1"``), or None for the chief / no cluster.

    The chief is task type ``chief``, or worker 0 when the cluster has no chief (Keras' convention).
    Under multi_worker every worker runs ``fit``, but only the chief's files are the run: the others
    write into ``RUN/workers/<task>/`` (their checkpoints are needed for the collectives, not kept).
    """
    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = tf_config.get("task") or {}
    kind, index = task.get("type"), int(task.get("index", 0))
    if kind is None or kind == "chief" or (kind == "worker" and index == 0 and "chief" not in tf_config.get("cluster", {})):
        return None
    return f"{kind}-{index}"


def make_strategy(name: str) -> tf.distribute.Strategy:
    """default (one device), mirrored (all local GPUs/CPU), multi_worker (cluster from TF_CONFIG)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("strategy multi_worker reads the cluster from TF_CONFIG, which is not set")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"strategy must be default, mirrored or multi_worker, got {name!r}")


class EpochLog(keras.callbacks.Callback):
    """Appends one JSON line per finished epoch: its logs, and wall and process-CPU seconds since fit
    began (CPU time is far less disturbed than wall time by other jobs on a shared machine)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def on_train_begin(self, logs=None):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"epoch": epoch, "seconds": round(time.perf_counter() - self.wall, 3),
                                "cpu_seconds": round(time.process_time() - self.cpu, 3),
                                **{k: float(v) for k, v in (logs or {}).items()}}) + "\n")


class PruneCheckpoints(keras.callbacks.Callback):
    """After each epoch's checkpoint, deletes all but the newest ``keep`` (0: keeps all): the run's
    own copies (weights/final, backup/) are elsewhere, and 20 epochs of a large model would otherwise
    fill the disk."""

    def __init__(self, directory: str, keep: int):
        super().__init__()
        self.directory, self.keep = directory, keep

    def on_epoch_end(self, epoch, logs=None):
        if not self.keep:
            return
        names = sorted({os.path.basename(p).split(".")[0] for p in glob.glob(os.path.join(self.directory, "epoch-*"))})
        for name in names[:-self.keep]:
            for path in glob.glob(os.path.join(self.directory, name + ".*")):
                os.remove(path)


def train(config: Config, train_pattern: str, run_dir: str, eval_pattern: Optional[str] = None,
          items_pattern: Optional[str] = None, verbose="auto", progress=print) -> dict:
    """Train (or resume) a run; evaluate on ``eval_pattern`` if given. Returns the metrics (or {}).

    Under ``train.strategy: multi_worker`` start the same command on every worker of TF_CONFIG's
    cluster; the chief writes ``run_dir`` and evaluates, the other workers only train.
    """
    strategy = make_strategy(config.train.strategy)  # first: collectives must be set up before any op runs
    task = worker_task() if config.train.strategy == "multi_worker" else None
    if task:
        run_dir, eval_pattern = os.path.join(run_dir, "workers", task), None
    run = RunDir(run_dir)
    files = reader.list_files(train_pattern)
    if not reader.check_schema(files, parse_spec(config), config.data.compression):
        raise ValueError(f"no training records in {train_pattern} ({len(files)} file(s), all empty)")
    with run.lock():
        return _train_locked(run, config, strategy, files, train_pattern, eval_pattern, items_pattern,
                             verbose, progress)


def _train_locked(run: RunDir, config: Config, strategy, files, train_pattern, eval_pattern, items_pattern,
                  verbose, progress) -> dict:
    fingerprints = file_fingerprints(files)
    if os.path.exists(run / "run.json"):  # a run whose stats pass completed: resume or evaluate it
        info = run.info()
        if run.config().to_dict() != config.to_dict():
            raise ValueError(f"{run.path} holds a run with a different config; resume with the same config "
                             "or use a new run directory")
        if info.get("train_files", fingerprints) != fingerprints:
            raise ValueError(f"{run.path} was trained on other files (or they changed since: "
                             f"{_first_difference(info.get('train_files'), fingerprints)}); "
                             "give the same training files or use a new run directory")
        if not os.path.exists(run / "feature_stats.json"):
            raise ValueError(f"{run.path} has run.json but no feature_stats.json: the run directory is "
                             "damaged; use a new run directory")
        stats = run.stats()
        if not stats.num_examples:
            raise ValueError(f"{run.path} holds the stats of 0 training examples; use a new run directory")
        with open(run / "scan.txt", encoding="utf-8") as f:
            scan_summary = f.read()
        run.write_info(**{**info, "eval": eval_pattern, "items": items_pattern})
        if tf.io.gfile.exists(run.weights + ".index"):
            progress(f"the run in {run.path} has finished training (delete it, or use another run "
                     "directory, to train again)")
            return _evaluate(run, eval_pattern, items_pattern, None, progress)
        progress(f"resuming the run in {run.path}")
    else:
        stats, report = compute_stats(config, files, progress, items_pattern)
        scan_summary = report.summary()
        if not stats.num_examples:
            raise ValueError(f"no training records in {train_pattern}: {scan_summary}"
                             + (f" (none with {config.data.label} >= 1)" if config.data.label and report.records else ""))
        check_training_sizes(config, stats, files)  # vocabulary-sized tables, batch, buffer: before any run file
        # Written only now, after a complete pass, and run.json last: it marks the run as resumable.
        write_atomic(run / "config.yaml", config.to_yaml())
        write_atomic(run / "scan.txt", scan_summary)
        stats.save(run / "feature_stats.json")
        run.write_info(train=train_pattern, eval=eval_pattern, items=items_pattern, train_files=fingerprints)
    progress(scan_summary)
    progress(f"{stats.num_examples} training examples, {len(stats.item_counts)} distinct items")

    model = build_trainable(config, stats, files, items_pattern, strategy, progress)
    dataset = make_input(config, files, training=True, stats=stats)
    callbacks = [
        keras.callbacks.BackupAndRestore(run / "backup"),
        keras.callbacks.ModelCheckpoint(run / "checkpoints/epoch-{epoch:03d}", save_weights_only=True),
        PruneCheckpoints(run / "checkpoints", config.train.keep_checkpoints),
        keras.callbacks.TensorBoard(run / "logs", update_freq="epoch"),
        keras.callbacks.CSVLogger(run / "history.csv", append=True),
        EpochLog(run / "epochs.jsonl"),
    ]
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    model.fit(dataset, epochs=config.train.epochs, steps_per_epoch=config.train.steps_per_epoch,
              callbacks=callbacks, verbose=verbose)
    model.save_weights(run.weights)
    progress(f"weights saved to {run.weights}; training data: {scan_summary}")
    return _evaluate(run, eval_pattern, items_pattern, model, progress)


def build_trainable(config: Config, stats, files, items_pattern: Optional[str], strategy=None, progress=print):
    """The compiled model that ``train`` fits (seeded, every variable created), without its data:
    also what ``benchmarks/profile_training.py`` times step by step."""
    strategy = strategy or tf.distribute.get_strategy()
    keras.utils.set_random_seed(config.train.seed)
    with strategy.scope():
        model = build_model(config, stats, build_negatives(config, stats, files, items_pattern, progress, mine_hard_negatives))
        # Create every variable now (a tfrs.Model is built by its towers), so that BackupAndRestore
        # restores into existing variables instead of warning that the model is unbuilt.
        model.query_tower(dummy_batch(config))
        model.candidate_tower(dummy_batch(config))
        model.built = True
        model.compile(optimizer=make_optimizer(config.train.optimizer, config.train.learning_rate))
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # tf_keras's "auto" sums every logged value over the workers, but metric results are
            # already global (sync-on-read): batch recall read workers x the truth. With "first"
            # metrics are global and the logged loss is this worker's share of the global batch.
            model.distribute_reduction_method = "first"
    return model


def _first_difference(recorded, now) -> str:
    recorded, now = dict(map(tuple, recorded or [])), dict(map(tuple, now))
    for path in sorted(set(recorded) | set(now)):
        if recorded.get(path) != now.get(path):
            return (f"{path}: recorded {recorded[path]} bytes, now {now[path]}" if path in recorded and path in now
                    else f"{path} is {'new' if path in now else 'no longer given'}")
    return "same files"


def _evaluate(run: RunDir, eval_pattern, items_pattern, model, progress) -> dict:
    if not eval_pattern:
        return {}
    return evaluate_run(run.path, eval_pattern, items_pattern=items_pattern, model=model, progress=progress)
