"""Training: schema check -> one stats pass -> tf.data -> model.fit with checkpoints and resumption."""
import dataclasses
import glob
import json
import os
import sys
import time
from typing import Optional

import tensorflow as tf
import tf_keras as keras

from tfrec_towers.config import Config, ValidationConfig
from tfrec_towers.data import reader
from tfrec_towers.data.inputs import (check_training_sizes, compute_stats, make_input, parse_spec, training_batches,
                                      user_histories)
from tfrec_towers.evaluation.job import evaluate_run, evaluate_users
from tfrec_towers.mining import mine_hard_negatives
from tfrec_towers.model import build_model, learning_rate_schedule, make_optimizer, train_epochs
from tfrec_towers.negatives import build_negatives
from tfrec_towers.features.stats import continue_stats
from tfrec_towers.run import RunDir, dummy_batch, file_fingerprints, write_atomic
from tfrec_towers.svd_init import svd_init
from tfrec_towers.warm_start import WarmStartError, config_changes, copy_previous, previous_run, previous_step


__all__ = ["STRATEGIES", "Validation", "build_trainable", "make_strategy", "train"]


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


def _multi_worker_strategy() -> tf.distribute.Strategy:
    if "TF_CONFIG" not in os.environ:
        raise ValueError("strategy multi_worker reads the cluster from TF_CONFIG, which is not set")
    return tf.distribute.MultiWorkerMirroredStrategy()


#: ``train.strategy`` -> a function making it: default (one device), mirrored (all local GPUs/CPU),
#: multi_worker (the cluster from TF_CONFIG). A dict literal: ``tfrec_towers.choices`` reads its names.
STRATEGIES = {"default": tf.distribute.get_strategy, "mirrored": tf.distribute.MirroredStrategy,
              "multi_worker": _multi_worker_strategy}


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The distribution strategy ``name`` of ``STRATEGIES``."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {tuple(STRATEGIES)}, got {name!r}")
    return STRATEGIES[name]()


class EpochLog(keras.callbacks.Callback):
    """Appends one JSON line per finished epoch: its logs, and wall and process-CPU seconds of training
    since fit began (CPU time is far less disturbed than wall time by other jobs on a shared machine);
    the time ``validation`` spent is left out of them and logged apart (``valid_seconds``)."""

    def __init__(self, path: str, validation: Optional["Validation"] = None):
        super().__init__()
        self.path, self.validation = path, validation

    def on_train_begin(self, logs=None):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        spent_wall, spent_cpu = (self.validation.wall, self.validation.cpu) if self.validation else (0.0, 0.0)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"epoch": epoch, "seconds": round(time.perf_counter() - self.wall - spent_wall, 3),
                                "cpu_seconds": round(time.process_time() - self.cpu - spent_cpu, 3),
                                **({"valid_seconds": round(spent_wall, 3)} if self.validation else {}),
                                **{k: float(v) for k, v in (logs or {}).items()}}) + "\n")


class Validation(keras.callbacks.Callback):
    """Per-epoch validation (``config.ValidationConfig``): the package's per-user evaluation of the model
    on the validation logs (the user's training items removed), a learning-rate decay on plateau, early
    stopping, and the best epoch's weights restored when training ends.

    Its state (best value and epoch, validations without a new best, learning rate) is saved in
    ``RUN/validation.json`` after each validation, so a resumed run continues the schedule; the best
    weights are ``RUN/best/weights``. ``wall`` / ``cpu`` are the seconds it has spent (``EpochLog``
    leaves them out of training time).
    """

    def __init__(self, run: RunDir, config: Config, valid_pattern: str, items_pattern: str, history, progress=print,
                 epochs: Optional[int] = None):
        super().__init__()
        self.run, self.options, self.epochs = run, config.train.validation, epochs or config.train.epochs
        self.config, self.valid_pattern, self.items_pattern, self.history = config, valid_pattern, items_pattern, history
        self.progress, self.wall, self.cpu = progress, 0.0, 0.0
        self.k = int(self.options.metric.split("@")[1])
        self.state = {"best": None, "best_epoch": None, "waiting": 0, "curve": []}
        if os.path.exists(run / "validation.json"):
            with open(run / "validation.json", encoding="utf-8") as f:
                self.state = json.load(f)

    def on_train_begin(self, logs=None):
        if self.state.get("learning_rate") is not None and self.config.train.lr_schedule == "constant":
            self.model.optimizer.learning_rate.assign(self.state["learning_rate"])

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.options.every and epoch + 1 != self.epochs:
            return
        wall, cpu = time.perf_counter(), time.process_time()
        metrics = evaluate_users(self.model, self.config, self.valid_pattern, self.items_pattern, self.history,
                                 ks=[self.k], progress=lambda m: None)
        value, o, state = metrics[self.options.metric], self.options, self.state
        if logs is not None:
            logs[f"valid_{o.metric}"] = value
        note = ""
        if state["best"] is None or value > state["best"] + o.min_delta:
            state.update(best=value, best_epoch=epoch, waiting=0)
            self.model.save_weights(self.run / "best/weights")
            note = "new best"
        else:
            state["waiting"] += 1
            if o.decay < 1 and state["waiting"] % o.decay_patience == 0:  # (a schedule forbids decay < 1)
                lr = float(self.model.optimizer.learning_rate.numpy()) * o.decay
                self.model.optimizer.learning_rate.assign(lr)
                note = f"learning rate -> {lr:.3g}"
            if o.patience and state["waiting"] >= o.patience:
                self.model.stop_training = True
                note += ("; " if note else "") + f"stopping: no new best in {o.patience} validations"
        state["learning_rate"] = float(self.model.optimizer.learning_rate.numpy())
        state["curve"].append({"epoch": epoch, o.metric: value})
        write_atomic(self.run / "validation.json", json.dumps(state, indent=1))
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu
        self.progress(f"epoch {epoch + 1}: valid {o.metric} {value:.4f} (best {state['best']:.4f} at epoch "
                      f"{state['best_epoch'] + 1}){'; ' + note if note else ''}")

    def on_train_end(self, logs=None):
        if self.state["best_epoch"] is not None and tf.io.gfile.exists(self.run / "best/weights.index"):
            self.model.load_weights(self.run / "best/weights")
            self.progress(f"restored the weights of epoch {self.state['best_epoch'] + 1} "
                          f"(valid {self.options.metric} {self.state['best']:.4f})")


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
          items_pattern: Optional[str] = None, verbose="auto", progress=print,
          valid_pattern: Optional[str] = None, warm_start: Optional[str] = None) -> dict:
    """Train (or resume) a run; evaluate on ``eval_pattern`` if given. Returns the metrics (or {}).

    ``warm_start``: a finished run that this one continues on ``train_pattern`` (``tfrec_towers.warm_start``);
    it is checked (exists, finished, idle, compatible config) before anything else and never written to.

    ``valid_pattern``: validation logs, evaluated after epochs as ``train.validation`` says (its defaults
    when the config has none): learning-rate decay on plateau, early stopping, best weights restored.

    Under ``train.strategy: multi_worker`` start the same command on every worker of TF_CONFIG's
    cluster; the chief writes ``run_dir`` and evaluates, the other workers only train.
    """
    strategy = make_strategy(config.train.strategy)  # first: collectives must be set up before any op runs
    task = worker_task() if config.train.strategy == "multi_worker" else None
    if task:
        run_dir, eval_pattern, valid_pattern = os.path.join(run_dir, "workers", task), None, None
    if valid_pattern and config.train.validation is None:
        # a learning-rate schedule sets the rate at every step: no decay on plateau beside it
        defaults = ValidationConfig(decay=1.0) if config.train.lr_schedule != "constant" else ValidationConfig()
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, validation=defaults))
    run = RunDir(run_dir)
    previous = None
    if warm_start:
        previous = previous_run(warm_start)
        if previous.path == run.path:
            raise WarmStartError(f"--warm-start {previous.path} is the --run-dir; a warm start writes a new run")
        config_changes(previous.config(), config, previous.path)
    files = reader.list_files(train_pattern)
    if not reader.check_schema(files, parse_spec(config), config.data.compression):
        raise ValueError(f"no training records in {train_pattern} ({len(files)} file(s), all empty)")
    with run.lock():
        return _train_locked(run, config, strategy, files, train_pattern, eval_pattern, items_pattern,
                             verbose, progress, valid_pattern, previous)


def _train_locked(run: RunDir, config: Config, strategy, files, train_pattern, eval_pattern, items_pattern,
                  verbose, progress, valid_pattern=None, previous: Optional[RunDir] = None) -> dict:
    fingerprints = file_fingerprints(files)
    if os.path.exists(run / "run.json"):  # a run whose stats pass completed: resume or evaluate it
        info = run.info()
        if (info.get("warm_start") or {}).get("from") != (previous.path if previous else None):
            raise ValueError(f"{run.path} holds a run " + (f"warm-started from {info['warm_start']['from']}" if
                             info.get("warm_start") else "trained from scratch") + "; resume it the same way "
                             "or use a new run directory")
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
        warm = None
        if previous is not None:
            stats, vocabularies = continue_stats(previous.stats(), stats)
            warm = {"from": previous.path, "generation": stats.generation, "start_step": previous_step(previous),
                    "config_changes": config_changes(previous.config(), config, previous.path),
                    "vocabularies": vocabularies}
            for source, v in vocabularies.items():
                progress(f"vocabulary '{source}': {v['old_size']} -> {v['size']} values ({v['added']} new"
                         + (f", {len(v['evicted'])} evicted: max_vocab" if v["evicted"] else "") + ")")
        check_training_sizes(config, stats, files)  # vocabulary-sized tables, batch, buffer: before any run file
        # Written only now, after a complete pass, and run.json last: it marks the run as resumable.
        write_atomic(run / "config.yaml", config.to_yaml())
        write_atomic(run / "scan.txt", scan_summary)
        stats.save(run / "feature_stats.json")
        run.write_info(train=train_pattern, eval=eval_pattern, items=items_pattern, train_files=fingerprints,
                       **({"warm_start": warm} if warm else {}))
        info = run.info()
    progress(scan_summary)
    progress(f"{stats.num_examples} training examples, {len(stats.item_counts)} distinct items")

    warm = info.get("warm_start")
    model = build_trainable(config, stats, files, items_pattern, strategy, progress,
                            start_step=warm["start_step"] if warm else 0)
    fresh = not os.path.isdir(run / "backup")  # (a resumed run's backup holds its own state)
    if warm and fresh:
        copy_previous(model, previous, warm["vocabularies"], progress)
    history = None
    if config.train.svd_init and fresh and warm:
        progress("train.svd_init: not applied (the warm start's tables are the previous run's)")
    elif config.train.svd_init and fresh:
        history = user_histories(config, train_pattern, progress=lambda m: None)
        svd_init(model, config, history, progress)
    dataset = make_input(config, files, training=True, stats=stats)
    validation = None
    if valid_pattern:
        history = history or user_histories(config, train_pattern, progress=lambda m: None)
        validation = Validation(run, config, valid_pattern, items_pattern or train_pattern, history, progress,
                                train_epochs(config, stats.num_examples))
    callbacks = [
        keras.callbacks.BackupAndRestore(run / "backup"),
        *([validation] if validation else []),  # before the loggers: they record its valid_ metric
        keras.callbacks.ModelCheckpoint(run / "checkpoints/epoch-{epoch:03d}", save_weights_only=True),
        PruneCheckpoints(run / "checkpoints", config.train.keep_checkpoints),
        keras.callbacks.TensorBoard(run / "logs", update_freq="epoch"),
        keras.callbacks.CSVLogger(run / "history.csv", append=True),
        EpochLog(run / "epochs.jsonl", validation),
    ]
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    epochs = train_epochs(config, stats.num_examples)
    if epochs != config.train.epochs:
        progress(f"{epochs} epochs: train.min_steps {config.train.min_steps} at {stats.num_examples} examples per epoch")
    model.fit(dataset, epochs=epochs, steps_per_epoch=config.train.steps_per_epoch,
              callbacks=callbacks, verbose=verbose)
    model.save_weights(run.weights)
    progress(f"weights saved to {run.weights}; training data: {scan_summary}")
    return _evaluate(run, eval_pattern, items_pattern, model, progress)


def build_trainable(config: Config, stats, files, items_pattern: Optional[str], strategy=None, progress=print,
                    start_step: int = 0):
    """The compiled model that ``train`` fits (seeded, every variable created), without its data:
    also what ``benchmarks/profile_training.py`` times step by step. ``start_step``: a warm start's
    optimizer step (its learning-rate schedule starts again there)."""
    strategy = strategy or tf.distribute.get_strategy()
    keras.utils.set_random_seed(config.train.seed)
    with strategy.scope():
        model = build_model(config, stats, build_negatives(config, stats, files, items_pattern, progress, mine_hard_negatives))
        # Create every variable now (a tfrs.Model is built by its towers), so that BackupAndRestore
        # restores into existing variables instead of warning that the model is unbuilt.
        model.query_tower(dummy_batch(config))
        model.candidate_tower(dummy_batch(config))
        model.built = True
        model.compile(optimizer=make_optimizer(config.train.optimizer,
                                               learning_rate_schedule(config, stats.num_examples, start_step)),
                      steps_per_execution=steps_per_execution(config, stats, strategy))
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # tf_keras's "auto" sums every logged value over the workers, but metric results are
            # already global (sync-on-read): batch recall read workers x the truth. With "first"
            # metrics are global and the logged loss is this worker's share of the global batch.
            model.distribute_reduction_method = "first"
    return model


def steps_per_execution(config: Config, stats, strategy) -> int:
    """``train.steps_per_execution`` where ``fit`` knows an epoch's length (Keras needs it to run several
    steps per call): the in-memory input, or ``training_batches``; single-worker strategies only. Else 1."""
    known = config.data.in_memory or training_batches(config, stats) is not None
    single = not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    return config.train.steps_per_execution if known and single else 1


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
