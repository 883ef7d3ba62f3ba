"""The names of the package's registries, read from their sources: importing nothing of the package (no TensorFlow).

Each registry maps a name to its implementation and is written once, next to the implementation, as a
dict literal; the names here are read from it:

* ``LOSSES``: ``tasks.losses.LOSSES`` (``task.loss``); ``POINTWISE_LOSSES``: its entries with ``pointwise=True``;
* ``REDUCTIONS``: ``tasks.reduction.REDUCTIONS`` (``task.loss_reduction``, every loss);
* ``OPTIMIZERS``: ``lazy_adam.OPTIMIZERS`` (``train.optimizer``); ``OPTIMIZER_SLOTS``: ``lazy_adam.OPTIMIZER_SLOTS``;
* ``STRATEGIES``: ``train.STRATEGIES`` (``train.strategy``);
* ``INDEX_TYPES``: ``export.indexes.INDEXES`` (``--index``).

Why they are read rather than imported: the config is checked when it is loaded, before any data is
read, and the CLI builds its ``--index`` choices without importing TensorFlow; both sit below the
modules that implement the options (``.importlinter``: ``config`` near the bottom, the CLI cheap to
import), and those modules import TensorFlow. So ``read_registry`` parses each registry's source with
``ast`` instead of importing it, and the registry stays the one place a name is written: adding a loss
is its entry in ``tasks/losses.py`` (and a test). ``tests/test_registries.py`` builds every registered name.

The last three lists below have no table to read: the code that acts on them branches on the names
(``RECORD_POLICIES``: ``data.reader.check_policy``; ``COMPRESSIONS``: ``data.reader.compression_of``;
``SHARING``: ``towers.build_towers``), so they are written here.

Feature types are the exception: their registry, ``features.spec.FEATURE_TYPES``, is at the bottom
already, on the feature classes (``Feature.type``); each class owns its parsing, encoder and statistics.
"""
import ast
import os
from typing import Any, Callable, Dict, Optional

__all__ = ["COMPRESSIONS", "INDEX_TYPES", "LOSSES", "OPTIMIZERS", "OPTIMIZER_SLOTS", "POINTWISE_LOSSES",
           "RECORD_POLICIES", "REDUCTIONS", "SHARING", "STRATEGIES", "read_registry"]


def read_registry(path: str, name: str, value: Optional[Callable[[ast.expr], Any]] = None) -> Dict[str, Any]:
    """{key: entry} of the module-level ``name = {"key": ..., ...}`` in ``path`` (relative to this package,
    or absolute), read from the source without importing it; an entry is its expression's ``ast`` node, or
    ``value(node)``. RuntimeError naming the file and the variable when that is not one dict literal with
    string keys, or when ``value`` refuses an entry (ValueError)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), path)
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = [node.value for node in tree.body
             if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)]
    if len(found) != 1 or not isinstance(found[0], ast.Dict) or not all(
            isinstance(key, ast.Constant) and isinstance(key.value, str) for key in found[0].keys):
        raise RuntimeError(f"{path}: {name} must be assigned once at module level, a dict literal with string "
                           f"keys: tfrec_towers.choices reads its names from the source")
    entries = {}
    for key, node in zip(found[0].keys, found[0].values):
        try:
            entries[key.value] = node if value is None else value(node)
        except ValueError as e:
            raise RuntimeError(f"{path}: {name}[{key.value!r}]: {e}") from None
    return entries


def _pointwise(kind: ast.expr) -> bool:
    """A ``LossKind(...)`` entry's ``pointwise`` (a literal keyword; default False)."""
    if not isinstance(kind, ast.Call):
        raise ValueError("must be a LossKind(...) call")
    return any(k.arg == "pointwise" and bool(ast.literal_eval(k.value)) for k in kind.keywords)


def _count(node: ast.expr) -> int:
    """An int literal entry."""
    if not (isinstance(node, ast.Constant) and type(node.value) is int):
        raise ValueError("must be an int literal")
    return node.value


_LOSSES = read_registry(os.path.join("tasks", "losses.py"), "LOSSES", _pointwise)
#: ``task.loss``: softmax cross-entropy, hinge, pointwise BCE and focal, SimpleX's cosine contrastive
#: loss, the bilateral softmax loss.
LOSSES = tuple(_LOSSES)
#: The losses that train on every event with its label as the target (the others on positives only).
POINTWISE_LOSSES = tuple(loss for loss, pointwise in _LOSSES.items() if pointwise)
#: ``task.loss_reduction``: the losses' reduction over rows.
REDUCTIONS = tuple(read_registry(os.path.join("tasks", "reduction.py"), "REDUCTIONS"))
#: ``train.optimizer``.
OPTIMIZERS = tuple(read_registry("lazy_adam.py", "OPTIMIZERS"))
#: ``train.optimizer`` -> float32 slots the optimizer keeps per trainable weight (``config.check_sizes``).
OPTIMIZER_SLOTS = read_registry("lazy_adam.py", "OPTIMIZER_SLOTS", _count)
#: ``train.strategy``: one device, all local devices (mirrored), a cluster from TF_CONFIG.
STRATEGIES = tuple(read_registry("train.py", "STRATEGIES"))
#: The export's index types (``--index``).
INDEX_TYPES = tuple(read_registry(os.path.join("export", "indexes.py"), "INDEXES"))
#: ``data.corrupt_records`` and the converters' ``--policy``: fail naming file and record (or line),
#: or skip and count.
RECORD_POLICIES = ("fail", "skip")
#: ``data.compression`` ("auto": GZIP for *.gz files; "": none).
COMPRESSIONS = ("auto", "GZIP", "ZLIB", "")
#: ``model.sharing`` (``towers.build_towers``): separate towers, a shared projection (ADE-SPL), one tower (SDE).
SHARING = ("none", "projection", "full")
