"""The names of the package's registries, written once, importing nothing of the package (no TensorFlow).

Each registry maps a name to its implementation, next to the implementation (the last two lists are
checked by the code that acts on them, which has no table of its own):

* ``LOSSES``: ``tasks.losses.LOSSES`` (``task.loss``);
* ``REDUCTIONS``: ``tasks.reduction.REDUCTIONS`` (``task.loss_reduction``, every loss);
* ``OPTIMIZERS``: ``lazy_adam.OPTIMIZERS`` (``train.optimizer``; each one's slots: ``OPTIMIZER_SLOTS``);
* ``STRATEGIES``: ``train.STRATEGIES`` (``train.strategy``);
* ``RECORD_POLICIES``: ``data.reader.POLICIES`` (``data.corrupt_records``, the converters' ``--policy``);
* ``INDEX_TYPES``: ``export.indexes.INDEXES``, each class naming its ``kind`` (``--index``);
* ``COMPRESSIONS``: ``data.reader.compression_of`` (``data.compression``);
* ``SHARING``: ``towers.build_towers`` (``model.sharing``).

Why the names are not only in the registries: the config is checked when it is loaded, before any
data is read, and the CLI builds its ``--index`` / ``--policy`` choices without importing TensorFlow;
both sit below the modules that implement the options (``.importlinter``: ``config`` near the bottom,
the CLI cheap to import). So the names live here, at the bottom, and each registry checks, in one
place (``check_registry``, when its module is imported), that it implements exactly these names in
this order; ``tests/test_registries.py`` builds every registered name. Adding a loss is its builder in
``tasks/losses.py`` plus its name here (and a test).

Feature types are the exception: their registry, ``features.spec.FEATURE_TYPES``, is at the bottom
already, on the feature classes (``Feature.type``); each class owns its parsing, encoder and statistics.
"""
from typing import Iterable, Tuple

__all__ = ["COMPRESSIONS", "INDEX_TYPES", "LOSSES", "OPTIMIZERS", "OPTIMIZER_SLOTS", "POINTWISE_LOSSES",
           "RECORD_POLICIES", "REDUCTIONS", "SHARING", "STRATEGIES", "check_registry"]


#: ``task.loss``: softmax cross-entropy, hinge, pointwise BCE and focal, SimpleX's cosine contrastive
#: loss, the bilateral softmax loss.
LOSSES = ("softmax", "hinge", "bce", "focal", "ccl", "bsl")
#: The losses that train on every event with its label as the target (the others on positives only).
POINTWISE_LOSSES = ("bce", "focal")
#: ``task.loss_reduction``: the losses' reduction over rows.
REDUCTIONS = ("sum", "mean")
#: ``train.optimizer`` -> float32 slots the optimizer keeps per trainable weight, beside the weight
#: itself (``config.check_sizes``); its keys are the optimizer names.
OPTIMIZER_SLOTS = {"adam": 2, "adagrad": 1, "sgd": 0, "rmsprop": 1, "lazy_adam": 2}
OPTIMIZERS = tuple(OPTIMIZER_SLOTS)
#: ``train.strategy``: one device, all local devices (mirrored), a cluster from TF_CONFIG.
STRATEGIES = ("default", "mirrored", "multi_worker")
#: ``data.corrupt_records`` and the converters' ``--policy``: fail naming file and record (or line),
#: or skip and count.
RECORD_POLICIES = ("fail", "skip")
#: ``data.compression`` ("auto": GZIP for *.gz files; "": none).
COMPRESSIONS = ("auto", "GZIP", "ZLIB", "")
#: ``model.sharing`` (``towers.build_towers``): separate towers, a shared projection (ADE-SPL), one tower (SDE).
SHARING = ("none", "projection", "full")
#: The export's index types (``--index``), in the order of ``export.indexes.INDEXES``.
INDEX_TYPES = ("scann", "portable", "brute")


def check_registry(what: str, names: Tuple[str, ...], registry: Iterable[str]) -> None:
    """RuntimeError unless ``registry``'s keys are exactly ``names``, in order: the one check that keeps a
    registry and the names the config and CLI offer in step (a missing or extra name fails on import)."""
    if tuple(registry) != tuple(names):
        raise RuntimeError(f"the {what} registry implements {tuple(registry)}, but tfrec_towers.choices names "
                           f"{tuple(names)}: add or remove the name in tfrec_towers/choices.py too")
