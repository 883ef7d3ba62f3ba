"""Warm start: a new run that continues a finished one on new logs (``train --warm-start PREV``).

    PREV (read only) -> compatible config? -> stats of the new logs continued (``continue_stats``)
      -> new model; every variable and optimizer slot copied from PREV's final checkpoint, vocabulary
         tables row by row (old values keep their index; appended and evicted rows start as PREV's
         first OOV row, their optimizer slots at zero)

A new ID starts where PREV put any unknown ID: at the OOV row that ``oov_rate`` trained to stand for
an ID the model does not know (so its vector comes from the item's or user's other features), not at
a random row. On the tuning period of ``benchmarks/continuous.py`` (seed 0) the stale model, which maps
new items to that row, ranked them better than increments whose new rows started random (cold-item
HR@50 0.093 against 0.035); starting them at that row raised the increments' to 0.048 and their HR@50
on all events from 0.3505 to 0.3562. On the benchmark's test slices (3 seeds) it raised the increments'
cold-item HR@50 from 0.031 to 0.036, with HR@50 on all events unchanged (0.339 against 0.340).

What may change between the runs is what leaves the variables' meaning intact: training, negatives,
evaluation, data options, the loss; what may not is the feature spec, the architecture and the task's
trainable parts (``INCOMPATIBLE``). The optimizer's step counter carries over (Adam's bias correction
goes on from the copied moments) and a learning-rate schedule starts again from its first step.
"""
import fcntl
import os
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import tensorflow as tf

from tfrec_towers.config import Config
from tfrec_towers.features.encoders import vocabulary_tables
from tfrec_towers.model import build_model, make_optimizer
from tfrec_towers.run import RunDir, dummy_batch, restore_weights

__all__ = ["WarmStartError", "config_changes", "copy_previous", "previous_run", "previous_step"]


#: Config paths whose change makes a previous run's weights meaningless (prefixes of dotted paths),
#: and the exceptions under them that only change how training goes on.
INCOMPATIBLE = ("features", "model", "task.adaptive", "task.logq", "task.logq_estimator", "task.streaming")
COMPATIBLE = ("model.dropout", "model.embedding_l2", "model.user_gate.dropout", "model.user_gate.history_gradient",
              "task.adaptive.symmetric_weight")
#: Feature options that only change training or how a vocabulary grows (any feature).
COMPATIBLE_FEATURE_OPTIONS = (".oov_rate", ".min_count", ".max_vocab", ".gradient_share")


class WarmStartError(ValueError):
    """A previous run that cannot be continued; the message names the run and what is wrong."""


def previous_run(path: str) -> RunDir:
    """The finished, idle run at ``path``, checked without writing to it (nothing in it is modified)."""
    run = RunDir(path)
    if not os.path.isdir(run.path):
        raise WarmStartError(f"--warm-start {path}: no such run directory")
    for name in ("run.json", "config.yaml", "feature_stats.json"):
        if not os.path.exists(run / name):
            raise WarmStartError(f"--warm-start {run.path}: not a training run directory (no {name})")
    if os.path.exists(run / "train.lock") and _locked(run / "train.lock"):
        raise WarmStartError(f"--warm-start {run.path}: a process is training in it ({run._holder()}); "
                             "warm-start from it once it has finished")
    if not tf.io.gfile.exists(run.weights + ".index"):
        raise WarmStartError(f"--warm-start {run.path}: the run has no final weights (it did not finish "
                             "training); resume it first, or warm-start from an earlier run")
    return run


def _locked(path: str) -> bool:
    """Whether another process holds the flock of ``path`` (opened read-only: the file is not touched)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _differences(a: Any, b: Any, path: str = "") -> Iterator[Tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            yield from _differences(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from _differences(x, y, f"{path}[{i}]")
    elif a != b:
        yield path, a, b


def _short(value, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _under(path: str, prefixes) -> bool:
    return any(path == p or path.startswith((p + ".", p + "[")) for p in prefixes)


def config_changes(previous: Config, config: Config, where: str) -> List[str]:
    """["path: old -> new", ...] between the runs' configs; raises WarmStartError on the first change
    that makes the previous weights unusable (``INCOMPATIBLE``), naming it."""
    changes = []
    for path, old, new in _differences(previous.to_dict(), config.to_dict()):
        if (_under(path, INCOMPATIBLE) and not _under(path, COMPATIBLE)
                and not (path.startswith("features.") and path.endswith(COMPATIBLE_FEATURE_OPTIONS))):
            raise WarmStartError(f"--warm-start {where}: {path} is {_short(old)} there and {_short(new)} here; the previous "
                                 "weights do not fit another feature spec, architecture or trainable task part "
                                 "(train from scratch instead)")
        changes.append(f"{path}: {_short(old)} -> {_short(new)}")
    return changes


def previous_step(previous: RunDir) -> int:
    """The optimizer step counter in the previous run's final checkpoint (0 when it saved none)."""
    reader = tf.train.load_checkpoint(previous.weights)
    key = "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"
    return int(reader.get_tensor(key)) if reader.has_tensor(key) else 0


def copy_previous(model, previous: RunDir, changes: Dict[str, Dict], progress=print) -> Dict[str, int]:
    """Copies PREV's variables and optimizer state into ``model`` (built and compiled): same shapes are
    copied whole; a table that grew gets the old rows at their indices (vocabularies only append); rows
    of evicted values and every appended row start as PREV's first OOV row (slots: fresh zeros; tables
    without OOV rows: their fresh initial values). Returns counts of what was copied. Raises
    WarmStartError naming the first variable that does not fit."""
    old_config = previous.config()
    old = build_model(old_config, previous.stats())
    old.query_tower(dummy_batch(old_config))
    old.candidate_tower(dummy_batch(old_config))
    old.compile(optimizer=make_optimizer(old_config.train.optimizer, 1e-3))
    old.optimizer.build(old.trainable_variables)
    model.optimizer.build(model.trainable_variables)
    restore_weights(old, previous.weights).expect_partial()
    if len(old.variables) != len(model.variables):
        raise WarmStartError(f"--warm-start {previous.path}: its model has {len(old.variables)} variables, this one "
                             f"{len(model.variables)}; train from scratch")
    fresh = _rows_to_reset(model, changes)
    oov_tables = {id(layer.embedding.embeddings) for layer in vocabulary_tables(model) if layer.num_oov}
    pairs = [(o, n, fresh.get(id(n))) for o, n in zip(old.variables, model.variables)]
    same_optimizer = type(old.optimizer) is type(model.optimizer)
    if same_optimizer:
        for name, new_slots in _slot_lists(model.optimizer, len(model.trainable_variables)).items():
            old_slots = getattr(old.optimizer, name)
            for i, (o, n) in enumerate(zip(old_slots, new_slots)):
                pairs.append((o, n, fresh.get(id(model.trainable_variables[i]))))
        model.optimizer.iterations.assign(old.optimizer.iterations)
    grown = 0
    for o, n, reset in pairs:
        if o.shape == n.shape and reset is None:
            n.assign(o)
            continue
        if o.shape[1:] != n.shape[1:] or o.shape[0] > n.shape[0]:
            raise WarmStartError(f"--warm-start {previous.path}: variable {n.name} is {o.shape.as_list()} there and "
                                 f"{n.shape.as_list()} here; train from scratch")
        value, old_value = n.numpy(), o.numpy()
        start = value[reset].copy() if reset is not None else None  # fresh values (slots: zeros)
        value[:o.shape[0]] = old_value
        if id(n) in oov_tables:  # the table itself, not its slots: new rows start as PREV's first OOV row
            value[o.shape[0]:] = start = old_value[0]
        if reset is not None:
            value[reset] = start
        n.assign(value)
        grown += 1
    progress(f"warm start from {previous.path}: {len(model.variables)} variables"
             + (f" and the optimizer's state (step {int(model.optimizer.iterations.numpy())})" if same_optimizer
                else f" (optimizer {type(old.optimizer).__name__} -> {type(model.optimizer).__name__}: its state starts fresh)")
             + f" copied; {grown} tables grown or with evicted rows")
    return {"variables": len(model.variables), "optimizer_state": same_optimizer, "grown": grown}


def _slot_lists(optimizer, n: int) -> Dict[str, list]:
    """The optimizer's per-variable slot lists (Adam's ``_momentums`` / ``_velocities``, Adagrad's
    ``_accumulators``, ...): attributes holding one variable per trainable variable, in their order."""
    return {name: value for name, value in vars(optimizer).items()
            if isinstance(value, list) and len(value) == n and n and all(isinstance(v, tf.Variable) for v in value)}


def _rows_to_reset(model, changes: Dict[str, Dict]) -> Dict[int, np.ndarray]:
    """id(table variable) -> table rows of evicted values (num_oov + vocabulary index)."""
    out = {}
    for layer in vocabulary_tables(model):
        evicted = (changes.get(layer.vocab_source) or {}).get("evicted") or []
        if evicted:
            out[id(layer.embedding.embeddings)] = np.array([i + layer.num_oov for i, _, _ in evicted], np.int64)
    return out
