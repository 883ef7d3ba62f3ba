"""Run configuration: the feature spec plus data, model, task, training and evaluation options.

Loaded from YAML or JSON; every section and key is checked, so a typo fails naming the key. Sizes
that would not fit in the machine's memory (embedding tables, shuffle buffer) are refused when the
config is loaded, before any data is read (``check_sizes``); those that depend on the data are
checked again after the statistics pass, before the run directory is written.
``tfrec-towers config`` prints the packaged default (``configs/default.yaml``).

An option's allowed values are on its field (``option(default, choices=...)`` or ``range=...``), so a
check cannot name a key that does not exist. The names of the options that pick an implementation
(loss, reduction, optimizer, strategy, corrupt-record policy, compression) come from
``tfrec_towers.choices``, which reads them from each implementation's registry without importing it.
"""
import dataclasses
import os
import re
import typing
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import yaml

from tfrec_towers import choices as names
from tfrec_towers.choices import OPTIMIZER_SLOTS, SHARING  # noqa: F401  (SHARING: towers imports it from here)
from tfrec_towers.features import spec as S
from tfrec_towers.features.spec import FeatureSpec, check_type, load_mapping, load_yaml, quote

__all__ = ["AdaptiveConfig", "Config", "DataConfig", "DualAugmentedConfig", "EvalConfig", "GenerativeConfig",
           "ModelConfig", "NegativesConfig", "PACKAGED", "SECTIONS", "StreamingLogQConfig", "TaskConfig", "TrainConfig",
           "UserGateConfig", "ValidationConfig", "check_sizes", "embedding_tables", "memory_budget", "packaged"]


PACKAGED = os.path.join(os.path.dirname(__file__), "configs")

#: A numeric option's allowed range: (text for the error, test of one value); a list option: each item.
Range = Tuple[str, Callable[[Any], Any]]
_POSITIVE: Range = ("> 0", lambda v: v > 0)
_NON_NEGATIVE: Range = (">= 0", lambda v: v >= 0)
_FRACTION: Range = ("in [0, 1]", lambda v: 0 <= v <= 1)
_UNIT_OPEN: Range = ("in [0, 1)", lambda v: 0 <= v < 1)


def option(default: Any = dataclasses.MISSING, *, factory: Optional[Callable[[], Any]] = None,
           choices: Optional[Sequence[Any]] = None, range: Optional[Range] = None):  # noqa: A002
    """A config field whose value is checked when a config is loaded (before any data is read):
    ``choices``, the allowed values (a string option), or ``range``, (text, test) of a numeric one
    (a list: each item; None, where allowed, is not checked)."""
    metadata = {}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if range is not None:
        metadata["range"] = range
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class DataConfig:
    compression: str = option("auto", choices=names.COMPRESSIONS)  # auto: GZIP for *.gz files
    # fail (name file and record) or skip (count and report)
    corrupt_records: str = option("fail", choices=names.RECORD_POLICIES)
    label: Optional[str] = None        # int64 label field; when set, only events with label >= 1 train
    user_id: str = "user_id"           # the user key, for excluding a user's history in evaluation
    shuffle_buffer: int = option(100_000, range=_NON_NEGATIVE)
    num_parallel_reads: int = option(8, range=_POSITIVE)
    cache: bool = False                # keep the read records in memory after the first epoch (reshuffled each epoch)
    in_memory: bool = False            # training: parse the logs once into memory, each epoch a permutation of all
                                       # examples gathered batch by batch (no per-record work; shuffle_buffer 0: no shuffle)
    # tfidf text IDF over: logs (every tfidf text of the positive events, both sides) or items (each catalog
    # document once: the usual corpus IDF; needs the items files). logs is the default: it weights the
    # trigrams by the text that training actually matches (queries and their relevant documents), and
    # needs no items files
    idf_from: str = option("logs", choices=("logs", "items"))


@dataclasses.dataclass
class DualAugmentedConfig:
    """Dual augmented towers (DAT): per-ID augmented vectors fed to each tower, trained to mimic the
    other tower's output on positive pairs; optional category alignment of item covariances."""
    query_id: str = "user_id"          # query-side ID feature keying the user's augmented vector a_u
    mimic_weight: float = option(0.5, range=_NON_NEGATIVE)  # the paper's lambda for each of the two mimic losses
    category: Optional[str] = None     # candidate feature whose first value is the item's category
    alignment_weight: float = option(0.0, range=_NON_NEGATIVE)  # weight of the category alignment loss (0: off)


@dataclasses.dataclass
class GenerativeConfig:
    """Generative interaction: the item tower generates a pseudo query-side vector from item features."""
    targets: List[str] = dataclasses.field(default_factory=lambda: ["item_history"])  # query features rebuilt
    hidden: List[int] = option(factory=lambda: [128], range=_POSITIVE)
    weight: float = option(1.0, range=_NON_NEGATIVE)  # weight of the reconstruction loss (positive pairs only)
    # concat: g_v joins x_v at the tower input (the towers need their own layers after it);
    # add: x_v + g_v, G's last layer starting at zero, so every tower shape keeps its start (needs
    # the targets' width = the item encodings' width, e.g. query text and document text alike)
    combine: str = option("concat", choices=("concat", "add"))


@dataclasses.dataclass
class UserGateConfig:
    """SimpleX's user tower: u = g e_id + (1 - g) W pool(history), the ID embedding and a linear map of the
    pooled history (no bias) mixed by a gate g, then dropout. The ID remembers the user, the history
    generalises to the items near theirs; g 0.8 and dropout 0.1 are SimpleX's Gowalla settings."""
    id: str = "user_id"                # the query feature whose embedding is e_id (its width is the output's)
    # g; with learned: the gate's initial value, sigmoid(b) of a learned b
    weight: float = option(0.8, range=("in (0, 1)", lambda v: 0 < v < 1))
    learned: bool = False
    dropout: float = option(0.1, range=_UNIT_OPEN)  # on the user vector, before the L2 normalisation
    # false: the pooled history is a constant to the gate (only W learns from it; towers.user_gate)
    history_gradient: bool = True


@dataclasses.dataclass
class ModelConfig:
    hidden: List[int] = option(factory=lambda: [256], range=_POSITIVE)
    output_dim: int = option(128, range=(">= 0 (0: no projection)", lambda v: v >= 0))
    activation: str = "relu"
    dropout: float = option(0.0, range=_UNIT_OPEN)
    normalize: bool = True             # L2-normalised outputs: logits are cosines
    sharing: str = option("none", choices=SHARING)  # none | projection (ADE-SPL) | full (SDE)
    dual_augmented: Optional[DualAugmentedConfig] = None
    generative: Optional[GenerativeConfig] = None
    user_gate: Optional[UserGateConfig] = None  # SimpleX's gated user tower instead of hidden/projection
    # l2 * sum of squares of the embedding rows a batch looks up, / batch
    embedding_l2: float = option(0.0, range=_NON_NEGATIVE)


@dataclasses.dataclass
class AdaptiveConfig:
    """Adaptive temperature and margin (JD search, EMNLP 2023): the paper's global defaults."""
    alpha: float = option(0.5, range=_NON_NEGATIVE)
    delta0: float = option(0.01, range=_NON_NEGATIVE)
    tau0: float = option(1 / 30, range=_POSITIVE)
    trainable: bool = False
    symmetric_weight: float = option(0.05, range=_NON_NEGATIVE)  # weight w of the item-anchored symmetric term


@dataclasses.dataclass
class StreamingLogQConfig:
    """Streaming frequency estimation for logQ (Yi et al. 2019, Algorithms 2-3)."""
    hash_size: int = option(1 << 20, range=_POSITIVE)
    num_hashes: int = option(2, range=_POSITIVE)
    learning_rate: float = option(0.01, range=("in (0, 1]", lambda v: 0 < v <= 1))
    start: str = option("first_gap", choices=("first_gap", "paper"))  # see tasks/streaming_frequency.py


@dataclasses.dataclass
class TaskConfig:
    # cosine logits / 0.2: best of 0.05-0.3 on ML-100K
    temperature: Optional[float] = option(0.2, range=("> 0 (or null for no temperature)", lambda v: v > 0))
    logq: bool = True                  # subtract log of each column's expected count (the sampling mixture)
    # counts (training-log counts) | streaming (Yi et al. 2019)
    logq_estimator: str = option("counts", choices=("counts", "streaming"))
    streaming: StreamingLogQConfig = dataclasses.field(default_factory=StreamingLogQConfig)
    remove_accidental_hits: bool = True
    # softmax | hinge | bce | focal | ccl (SimpleX) | bsl (bilateral softmax): tasks/losses.py
    loss: str = option("softmax", choices=names.LOSSES)
    # TFRS's default; "mean" makes the loss scale-free in batch size
    loss_reduction: str = option("sum", choices=names.REDUCTIONS)
    bidirectional: str = option("none", choices=("none", "sum", "mean"))  # add the item->user softmax
    # same-tower negatives (SamToNe)
    samtone: str = option("none", choices=("none", "query", "item", "both"))
    pair_alpha: float = option(0.0, range=_UNIT_OPEN)  # PAIR: (1 - alpha) L_q + alpha L_p; the paper uses 0.1
    adaptive: Optional[AdaptiveConfig] = None
    hard_negatives: int = option(0, range=_NON_NEGATIVE)  # keep only the k hardest negatives of each row (0: all)
    margin: float = option(0.1, range=_NON_NEGATIVE)  # hinge margin, in cosine units
    positive_weight: float = option(1.0, range=_NON_NEGATIVE)  # bce: weight of label-1 entries
    negative_weight: float = option(1.0, range=_NON_NEGATIVE)  # bce: weight of label-0 entries
    focal_gamma: float = option(2.0, range=_NON_NEGATIVE)
    focal_alpha: float = option(0.25, range=_FRACTION)
    # ccl: negatives pushed while their cosine exceeds it
    ccl_margin: float = option(0.9, range=("in [-1, 1]", lambda v: -1 <= v <= 1))
    ccl_negative_weight: float = option(150.0, range=_NON_NEGATIVE)  # ccl: weight of the mean over negatives
    # bsl: exponent of the negatives' sum (1: softmax without the positive)
    bsl_tau2: float = option(1.2, range=_POSITIVE)
    batch_recall_k: List[int] = option(factory=lambda: [10, 100], range=_POSITIVE)


@dataclasses.dataclass
class NegativesConfig:
    """Where each row's negatives come from, mixed within one batch (counts are per batch or per row)."""
    in_batch: bool = True              # the other rows' positives
    # per batch: catalog items drawn uniformly (+ in_batch = mixed negative sampling)
    uniform: int = option(0, range=_NON_NEGATIVE)
    popularity: int = option(0, range=_NON_NEGATIVE)  # per batch: catalog items drawn with p ~ count^popularity_power
    # word2vec's unigram^0.75: between uniform and popularity
    popularity_power: float = option(0.75, range=_NON_NEGATIVE)
    exposure: int = option(0, range=_NON_NEGATIVE)  # per row: items of the same key's unclicked events
    exposure_key: str = "user_id"      # user_id, or request_id for the same request's exposures
    exposure_field: Optional[str] = None  # field telling unclicked events (default: data.label)
    exposure_below: float = 1.0        # an event is unclicked when field < this
    mined: int = option(0, range=_NON_NEGATIVE)  # per row: hard negatives mined from a previous run's model
    mined_from: Optional[str] = None   # that run's directory
    mined_top_k: int = option(100, range=_POSITIVE)  # pool of each user's top-scored non-positive items
    cross_replica: bool = False        # under a distribution strategy, all replicas' candidates


@dataclasses.dataclass
class ValidationConfig:
    """Per-epoch validation on ``train --valid`` logs with the package's own per-user evaluation (the
    user's training items removed): the learning rate is multiplied by ``decay`` after ``decay_patience``
    validations without a new best, training stops after ``patience`` without one, and the best epoch's
    weights are the run's. Defaults: SimpleX's x0.1 on plateau, with room for one decay before stopping."""
    # recall@K or ndcg@K of ``user_catalog_metrics``
    metric: str = option("recall@20", range=("recall@K or ndcg@K",
                                             lambda v: re.fullmatch(r"(recall|ndcg)@[1-9][0-9]*", v)))
    every: int = option(1, range=_POSITIVE)  # validate every N epochs (and after the last)
    # validations without a new best before stopping (0: never stop)
    patience: int = option(3, range=_NON_NEGATIVE)
    decay: float = option(0.1, range=("in (0, 1]", lambda v: 0 < v <= 1))  # learning-rate factor on a plateau (1: no decay)
    decay_patience: int = option(1, range=_POSITIVE)  # validations without a new best before decaying
    min_delta: float = option(0.0005, range=_NON_NEGATIVE)  # a new best must beat the old by more than this


@dataclasses.dataclass
class TrainConfig:
    batch_size: int = option(512, range=_POSITIVE)
    epochs: int = option(20, range=_POSITIVE)
    optimizer: str = option("adam", choices=names.OPTIMIZERS)  # lazy_adam.OPTIMIZERS
    learning_rate: float = option(1e-3, range=_POSITIVE)
    seed: int = 0
    # default | mirrored | multi_worker (TF_CONFIG): train.STRATEGIES
    strategy: str = option("default", choices=names.STRATEGIES)
    steps_per_epoch: Optional[int] = option(None, range=_POSITIVE)
    # newest epoch checkpoints kept (0: all); a 1024-d text model's is ~0.4 GB
    keep_checkpoints: int = option(3, range=_NON_NEGATIVE)
    validation: Optional[ValidationConfig] = None  # used when train is given --valid logs
    # constant, or cosine: lr * (1 + cos(pi t / T)) / 2 over the T steps of all epochs, which anneals to 0 at the
    # last epoch without a validation split (the schedule the test protocol can use; decay on plateau needs one)
    lr_schedule: str = option("constant", choices=("constant", "cosine"))
    # at least this many steps in all: epochs = max(epochs, ceil(min_steps / steps per epoch)); on a small
    # dataset a few epochs are a few hundred steps, which end training (and a cosine schedule) too early
    min_steps: int = option(0, range=_NON_NEGATIVE)
    # training steps per call of fit's compiled function (Keras ``steps_per_execution``): one Python round trip
    # per N steps instead of one per step (epoch-level callbacks and logs are unchanged); 1 where fit cannot
    # know an epoch's length (``tfrec_towers.train.steps_per_execution``). 16: package_basic's fit on Gowalla
    # took 10% less CPU (154-165 s a seed against 178-183 s)
    steps_per_execution: int = option(16, range=_POSITIVE)
    # 0: random tables; s > 0: the user-ID and item-ID tables start from a truncated SVD of the training
    # interactions, rows at s x the random rows' mean norm (tfrec_towers.svd_init: faster early epochs; off in cf)
    svd_init: float = option(0.0, range=_NON_NEGATIVE)


@dataclasses.dataclass
class EvalConfig:
    ks: List[int] = option(factory=lambda: [1, 5, 10, 50, 100], range=_POSITIVE)
    batch_size: int = option(4096, range=_POSITIVE)


def _build(where: str, cls, values: Dict[str, Any]):
    """A section dataclass from a mapping, every key and value checked (nested sections recursively)."""
    if not isinstance(values, dict):
        raise ValueError(f"config {where}: expected a mapping, got {quote(values)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    bad = sorted((k for k in values if k not in fields), key=str)
    if bad:
        raise ValueError(f"config section '{where}': unknown key(s) {quote(bad)}; allowed: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _check_type(f"{where}.{name}", value, hints[name])
        allowed, limits = fields[name].metadata.get("choices"), fields[name].metadata.get("range")
        if allowed is not None and value not in allowed:
            raise ValueError(f"config {where}.{name}: must be one of {allowed}, got {quote(value)}")
        if limits is not None and value is not None:
            _check_range(f"{where}.{name}", value, *limits)
    return cls(**kwargs)


def _check_range(where: str, value: Any, text: str, ok) -> None:
    """ValueError naming ``where`` and the allowed range unless ``ok`` holds for the value (each item
    of a list)."""
    for v in value if isinstance(value, list) else [value]:
        if not ok(v):
            raise ValueError(f"config {where}: must be {text}, got {quote(value)}")


def _check_type(where: str, value: Any, hint) -> Any:
    """``value`` if it fits the annotation (int, float, str, bool, Optional, List and nested section
    dataclasses are what config sections use; a nested section is built from its mapping), else
    ValueError naming ``where`` (``spec.check_type``: the value quoted short)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        return _check_type(where, value, next(a for a in args if a is not type(None)))
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else _build(where, hint, value or {})
    return check_type(f"config {where}", value, hint)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "task": TaskConfig, "negatives": NegativesConfig,
            "train": TrainConfig, "eval": EvalConfig}


@dataclasses.dataclass
class Config:
    """A training configuration: the feature spec and one section per entry of ``SECTIONS``, each with
    its defaults; ``Config.load(path)`` reads a YAML or JSON file, ``packaged(name)`` names a shipped one.

    Example:

    >>> from tfrec_towers.config import Config
    >>> config = Config.from_dict({
    ...     "features": {"query": [{"name": "user_id", "type": "id"}],
    ...                  "candidate": [{"name": "item_id", "type": "id"}]},
    ...     "task": {"temperature": 0.1}, "train": {"batch_size": 256}})
    >>> config.task.temperature, config.train.batch_size
    (0.1, 256)
    """

    features: FeatureSpec
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    negatives: NegativesConfig = dataclasses.field(default_factory=NegativesConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Config":
        if not isinstance(d, dict):
            raise ValueError(f"config: expected a mapping of sections, got {quote(d)}")
        unknown = sorted((k for k in d if k not in SECTIONS and k != "features"), key=str)
        if unknown:
            raise ValueError(f"config: unknown section(s) {quote(unknown)}; known: features, {', '.join(SECTIONS)}")
        if "features" not in d:
            raise ValueError("config: the 'features' section (the feature spec) is required")
        sections = {key: _build(key, section, d.get(key) or {}) for key, section in SECTIONS.items()}
        config = cls(features=FeatureSpec.from_dict(d["features"]), **sections)
        check_sizes(config)
        return config

    def to_dict(self) -> Dict[str, Any]:
        out = {"features": self.features.to_dict()}
        out.update({k: dataclasses.asdict(getattr(self, k)) for k in SECTIONS})
        return out

    @classmethod
    def load(cls, path: str) -> "Config":
        return cls.from_dict(load_mapping(path))

    def with_overrides(self, assignments: Sequence[str]) -> "Config":
        """A copy with ``section.key=value`` assignments applied (value parsed as YAML): ``train.epochs=3``,
        ``task.adaptive={}`` (a nested section with its defaults), ``task.adaptive.alpha=0.3``; a feature
        of a list by its name: ``features.query.item_history.gradient_share=0.2``."""
        d = self.to_dict()
        for assignment in assignments:
            key, sep, value = assignment.partition("=")
            path = key.split(".")
            if not sep or len(path) < 2:
                raise ValueError(f"an override is section.key=value, got {quote(assignment)}")
            if path[0] not in (*SECTIONS, "features"):
                raise ValueError(f"override {quote(assignment)}: unknown section {quote(path[0])}; known: "
                                 f"{', '.join((*SECTIONS, 'features'))}")
            node = d
            for n, part in enumerate(path[:-1]):
                if isinstance(node, list):  # features by name
                    named = [f for f in node if isinstance(f, dict) and f.get("name") == part]
                    if not named:
                        raise ValueError(f"override {quote(assignment)}: {'.'.join(path[:n])} has no feature "
                                         f"{quote(part)}; it has {[f.get('name') for f in node if isinstance(f, dict)]}")
                    node = named[0]
                    continue
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
                if not isinstance(node, (dict, list)):
                    raise ValueError(f"override {quote(assignment)}: {'.'.join(path[:n + 1])} is a value, not a section")
            if isinstance(node, list):
                raise ValueError(f"override {quote(assignment)}: {'.'.join(path[:-1])} is a list of features: set "
                                 f"an option of one, {'.'.join(path)}.OPTION=VALUE")
            try:
                node[path[-1]] = load_yaml(value)
            except ValueError as e:
                raise ValueError(f"override {quote(key)}: {e}") from None
        return Config.from_dict(d)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_yaml())


def packaged(name: str = "default") -> str:
    """Path of a config shipped with the package (``default``, ``tutorial``)."""
    path = os.path.join(PACKAGED, f"{name}.yaml")
    if not os.path.exists(path):
        known = sorted(p[:-5] for p in os.listdir(PACKAGED) if p.endswith(".yaml"))
        raise FileNotFoundError(f"no packaged config {name!r}; known: {known}")
    return path


# --- sizes checked against the machine's memory ---------------------------------------------------
#
# A size that cannot fit must fail before anything is allocated, naming its key, not after the data
# pass in a ResourceExhaustedError (or a segfault, where TensorFlow's allocation is refused). The
# estimates below are floors of what TensorFlow allocates, compared with the machine's memory rather
# than with fixed ceilings: the largest model a machine can train depends on the machine, and a fixed
# ceiling would refuse what a large machine can do or admit what a small one cannot. Being floors,
# they only refuse what cannot fit at all; a size just under the memory may still fail later.

# OPTIMIZER_SLOTS, the float32 slots each optimizer keeps per trainable weight, is lazy_adam's, beside the
# optimizers, read by tfrec_towers.choices.

#: Bytes TensorFlow's shuffle allocates per buffer slot when its iterator starts, before any record
#: arrives (a std::vector<Tensor> each: data.shuffle_buffer 10^12 asked for 24 TB and segfaulted).
SHUFFLE_SLOT_BYTES = 24
#: Float32 copies of the in-batch [B, B + shared negatives] logits alive in a training step: the
#: logits, their softmax, the gradient, and the masks / corrections applied to them.
LOGIT_COPIES = 4


def memory_budget() -> int:
    """Bytes of memory of this machine: physical RAM (``os.sysconf`` SC_PHYS_PAGES x SC_PAGE_SIZE),
    or the cgroup's memory limit where it is lower (a container)."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path, encoding="ascii") as f:
                limit = f.read().strip()
        except OSError:
            continue
        if limit.isdigit() and 0 < int(limit) < total:
            total = int(limit)
    return total


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:,.0f} GB" if n_bytes >= 1e11 else f"{n_bytes / 1e9:.3g} GB"


def embedding_tables(features: FeatureSpec, vocab_size=None) -> List[Dict[str, Any]]:
    """The embedding tables the encoders build (``EncoderFactory``'s sharing rules): per table the
    feature named in errors, ``rows``, ``dim`` and ``how`` the rows are counted.

    ``vocab_size(source)``: the size of a vocabulary computed from the data (after the stats pass);
    without it (at config load) such a table counts ``max_vocab`` + OOV rows where ``max_vocab`` is
    set (the most it may hold), else one value + OOV rows (the least)."""
    tables: Dict[tuple, Dict[str, Any]] = {}
    by_name = features.by_name
    for f in features.features:
        table = f.embedding_table(by_name, vocab_size)
        if table is not None and table[0] not in tables:
            tables[table[0]] = table[1]
    return list(tables.values())


def check_sizes(config: "Config", vocab_size=None, examples: Optional[int] = None, records: Optional[int] = None,
                data_bytes: Optional[int] = None, budget: Optional[int] = None) -> None:
    """ValueError naming the key (or feature) whose size cannot fit in ``budget`` bytes (default: the
    machine's memory, ``memory_budget``). Called when a config is loaded, with what the config alone
    tells, and after the statistics pass with what the data tells:

    * each embedding table, rows x dim floats, and all of them together, with the optimizer's slots;
    * each tower's first layer, (concatenated feature encodings) x (model.hidden[0] or output_dim);
    * ``data.shuffle_buffer``: its slots, and (given ``records`` and ``data_bytes``) the records it
      holds, at least min(buffer, records) x the average record's bytes on disk;
    * ``train.batch_size`` (given ``examples``): the in-batch logits of a batch of min(batch size,
      training examples) rows.
    """
    budget = budget or memory_budget()
    machine = f"more than the {_gb(budget)} of memory of this machine"
    slots = OPTIMIZER_SLOTS.get(config.train.optimizer, 2)
    per_weight = (1 + slots) * 4
    with_slots = f" with the {config.train.optimizer} optimizer's {slots} slot(s) per weight" if slots else ""

    tables = embedding_tables(config.features, vocab_size)
    for t in sorted(tables, key=lambda t: -t["rows"] * t["dim"]):
        if t["rows"] * t["dim"] * per_weight > budget:
            raise ValueError(
                f"feature '{t['feature']}': embedding table of {t['rows']} x {t['dim']} floats ({t['how']}) needs "
                f"{_gb(t['rows'] * t['dim'] * 4)} ({_gb(t['rows'] * t['dim'] * per_weight)}{with_slots}), {machine}; "
                "lower its embedding_dim, hash_buckets / num_buckets or max_vocab")
    total = sum(t["rows"] * t["dim"] for t in tables) * per_weight
    if total > budget:
        listed = ", ".join(f"'{t['feature']}' {t['rows']} x {t['dim']}" for t in tables)
        raise ValueError(f"the embedding tables ({listed}) need {_gb(total)} together{with_slots}, {machine}")

    model = config.model
    units = model.hidden[0] if model.hidden else model.output_dim
    for side in S.SIDES:
        width = sum(f.encoding_width for f in config.features.side(side))
        if units and width * units * per_weight > budget:
            raise ValueError(
                f"model: the {side} tower's first layer is a {width} x {units} matrix of floats (its features' "
                f"encodings, concatenated, into {'model.hidden[0]' if model.hidden else 'model.output_dim'}) "
                f"and needs {_gb(width * units * per_weight)}{with_slots}, {machine}; lower the features' "
                "embedding_dim or the layer's width")

    buffer = config.data.shuffle_buffer
    if buffer * SHUFFLE_SLOT_BYTES > budget:
        raise ValueError(f"config data.shuffle_buffer: {buffer} slots need {_gb(buffer * SHUFFLE_SLOT_BYTES)} "
                         f"before any record is read ({SHUFFLE_SLOT_BYTES} bytes each), {machine}")
    if records and data_bytes is not None:
        held = min(buffer, records) * (SHUFFLE_SLOT_BYTES + data_bytes / records)
        if held > budget:
            raise ValueError(f"config data.shuffle_buffer: {min(buffer, records)} records of {data_bytes / records:.0f} "
                             f"bytes on average need at least {_gb(held)}, {machine}; lower data.shuffle_buffer")
    if examples:
        rows = min(config.train.batch_size, examples)
        n = config.negatives
        squares = 1 + (config.task.bidirectional != "none") + {"query": 1, "item": 1, "both": 2}.get(config.task.samtone, 0)
        logits = rows * (rows * squares + n.uniform + n.popularity) * 4 * LOGIT_COPIES
        if logits > budget:
            raise ValueError(
                f"config train.batch_size: a batch of {rows} examples (the training logs hold {examples}) makes "
                f"in-batch logits of {rows} x {rows * squares + n.uniform + n.popularity} floats that need "
                f"{_gb(logits)} in a training step, {machine}; lower train.batch_size")
