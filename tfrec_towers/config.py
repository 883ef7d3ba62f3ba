"""Run configuration: the feature spec plus data, model, task, training and evaluation options.

Loaded from YAML or JSON; every section and key is checked, so a typo fails naming the key. Sizes
that would not fit in the machine's memory (embedding tables, shuffle buffer) are refused when the
config is loaded, before any data is read (``check_sizes``); those that depend on the data are
checked again after the statistics pass, before the run directory is written.
``tfrec-towers config`` prints the packaged default (``configs/default.yaml``).
"""
import dataclasses
import os
import re
import typing
from typing import Any, Dict, List, Optional, Sequence

import yaml

from tfrec_towers.features import spec as S
from tfrec_towers.features.spec import FeatureSpec, check_type, load_mapping, load_yaml, quote

PACKAGED = os.path.join(os.path.dirname(__file__), "configs")


@dataclasses.dataclass
class DataConfig:
    compression: str = "auto"          # auto: GZIP for *.gz files
    corrupt_records: str = "fail"      # fail (name file and record) or skip (count and report)
    label: Optional[str] = None        # int64 label field; when set, only events with label >= 1 train
    user_id: str = "user_id"           # the user key, for excluding a user's history in evaluation
    shuffle_buffer: int = 100_000
    num_parallel_reads: int = 8
    cache: bool = False                # keep the read records in memory after the first epoch (reshuffled each epoch)
    in_memory: bool = False            # training: parse the logs once into memory, each epoch a permutation of all
                                       # examples gathered batch by batch (no per-record work; shuffle_buffer 0: no shuffle)
    idf_from: str = "logs"             # tfidf text IDF over: logs (every tfidf text of the positive events, both
                                       # sides) or items (each catalog document once: the usual corpus IDF; needs
                                       # the items files). logs is the default: it weights the trigrams of queries
                                       # and relevant documents, and on SciFact dev it beat items by ~0.01 nDCG@10


@dataclasses.dataclass
class DualAugmentedConfig:
    """Dual augmented towers (DAT): per-ID augmented vectors fed to each tower, trained to mimic the
    other tower's output on positive pairs; optional category alignment of item covariances."""
    query_id: str = "user_id"          # query-side ID feature keying the user's augmented vector a_u
    mimic_weight: float = 0.5          # the paper's lambda for each of the two mimic losses
    category: Optional[str] = None     # candidate feature whose first value is the item's category
    alignment_weight: float = 0.0      # weight of the category alignment loss (0: off)


@dataclasses.dataclass
class GenerativeConfig:
    """Generative interaction: the item tower generates a pseudo query-side vector from item features."""
    targets: List[str] = dataclasses.field(default_factory=lambda: ["item_history"])  # query features rebuilt
    hidden: List[int] = dataclasses.field(default_factory=lambda: [128])
    weight: float = 1.0                # weight of the reconstruction loss (positive pairs only)
    # concat: g_v joins x_v at the tower input (the towers need their own layers after it);
    # add: x_v + g_v, G's last layer starting at zero, so every tower shape keeps its start (needs
    # the targets' width = the item encodings' width, e.g. query text and document text alike)
    combine: str = "concat"


@dataclasses.dataclass
class UserGateConfig:
    """SimpleX's user tower: u = g e_id + (1 - g) W pool(history), the ID embedding and a linear map of the
    pooled history (no bias) mixed by a gate g, then dropout. The ID remembers the user, the history
    generalises to the items near theirs; g 0.8 and dropout 0.1 are SimpleX's Gowalla settings."""
    id: str = "user_id"                # the query feature whose embedding is e_id (its width is the output's)
    weight: float = 0.8                # g; with learned: the gate's initial value, sigmoid(b) of a learned b
    learned: bool = False
    dropout: float = 0.1               # on the user vector, before the L2 normalisation


@dataclasses.dataclass
class ModelConfig:
    hidden: List[int] = dataclasses.field(default_factory=lambda: [256])
    output_dim: int = 128
    activation: str = "relu"
    dropout: float = 0.0
    normalize: bool = True             # L2-normalised outputs: logits are cosines
    sharing: str = "none"              # none | projection (ADE-SPL) | full (SDE)
    dual_augmented: Optional[DualAugmentedConfig] = None
    generative: Optional[GenerativeConfig] = None
    user_gate: Optional[UserGateConfig] = None  # SimpleX's gated user tower instead of hidden/projection
    embedding_l2: float = 0.0          # l2 * sum of squares of the embedding rows a batch looks up, / batch


@dataclasses.dataclass
class AdaptiveConfig:
    """Adaptive temperature and margin (JD search, EMNLP 2023): the paper's global defaults."""
    alpha: float = 0.5
    delta0: float = 0.01
    tau0: float = 1 / 30
    trainable: bool = False
    symmetric_weight: float = 0.05     # weight w of the item-anchored symmetric term


@dataclasses.dataclass
class StreamingLogQConfig:
    """Streaming frequency estimation for logQ (Yi et al. 2019, Algorithms 2-3)."""
    hash_size: int = 1 << 20
    num_hashes: int = 2
    learning_rate: float = 0.01
    start: str = "first_gap"           # first_gap | paper: see tasks/streaming_frequency.py


@dataclasses.dataclass
class TaskConfig:
    temperature: Optional[float] = 0.2  # cosine logits / 0.2: best of 0.05-0.3 on ML-100K
    logq: bool = True                  # subtract log of each column's expected count (the sampling mixture)
    logq_estimator: str = "counts"     # counts (training-log counts) | streaming (Yi et al. 2019)
    streaming: StreamingLogQConfig = dataclasses.field(default_factory=StreamingLogQConfig)
    remove_accidental_hits: bool = True
    loss: str = "softmax"              # softmax | hinge | bce | focal | ccl (SimpleX) | bsl (bilateral softmax)
    loss_reduction: str = "sum"        # TFRS's default; "mean" makes the loss scale-free in batch size
    bidirectional: str = "none"        # none | sum | mean: add the item->user softmax
    samtone: str = "none"              # none | query | item | both: same-tower negatives (SamToNe)
    pair_alpha: float = 0.0            # PAIR: (1 - alpha) L_q + alpha L_p; the paper uses 0.1
    adaptive: Optional[AdaptiveConfig] = None
    hard_negatives: int = 0            # keep only the k hardest negatives of each row (0: all)
    margin: float = 0.1                # hinge margin, in cosine units
    positive_weight: float = 1.0       # bce: weight of label-1 entries
    negative_weight: float = 1.0       # bce: weight of label-0 entries
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25
    ccl_margin: float = 0.9            # ccl: negatives pushed while their cosine exceeds it
    ccl_negative_weight: float = 150.0  # ccl: weight of the mean over negatives
    bsl_tau2: float = 1.2              # bsl: exponent of the negatives' sum (1: softmax without the positive)
    batch_recall_k: List[int] = dataclasses.field(default_factory=lambda: [10, 100])


@dataclasses.dataclass
class NegativesConfig:
    """Where each row's negatives come from, mixed within one batch (counts are per batch or per row)."""
    in_batch: bool = True              # the other rows' positives
    uniform: int = 0                   # per batch: catalog items drawn uniformly (+ in_batch = mixed negative sampling)
    popularity: int = 0                # per batch: catalog items drawn with p ~ count^popularity_power
    popularity_power: float = 0.75     # word2vec's unigram^0.75: between uniform and popularity
    exposure: int = 0                  # per row: items of the same key's unclicked events
    exposure_key: str = "user_id"      # user_id, or request_id for the same request's exposures
    exposure_field: Optional[str] = None  # field telling unclicked events (default: data.label)
    exposure_below: float = 1.0        # an event is unclicked when field < this
    mined: int = 0                     # per row: hard negatives mined from a previous run's model
    mined_from: Optional[str] = None   # that run's directory
    mined_top_k: int = 100             # pool of each user's top-scored non-positive items
    cross_replica: bool = False        # under a distribution strategy, all replicas' candidates


@dataclasses.dataclass
class ValidationConfig:
    """Per-epoch validation on ``train --valid`` logs with the package's own per-user evaluation (the
    user's training items removed): the learning rate is multiplied by ``decay`` after ``decay_patience``
    validations without a new best, training stops after ``patience`` without one, and the best epoch's
    weights are the run's. Defaults: SimpleX's x0.1 on plateau, with room for one decay before stopping."""
    metric: str = "recall@20"          # recall@K or ndcg@K of ``user_catalog_metrics``
    every: int = 1                     # validate every N epochs (and after the last)
    patience: int = 3                  # validations without a new best before stopping (0: never stop)
    decay: float = 0.1                 # learning-rate factor on a plateau (1: no decay)
    decay_patience: int = 1            # validations without a new best before decaying
    min_delta: float = 0.0005          # a new best must beat the old by more than this


@dataclasses.dataclass
class TrainConfig:
    batch_size: int = 512
    epochs: int = 20
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    seed: int = 0
    strategy: str = "default"          # default | mirrored | multi_worker (TF_CONFIG)
    steps_per_epoch: Optional[int] = None
    keep_checkpoints: int = 3          # newest epoch checkpoints kept (0: all); a 1024-d text model's is ~0.4 GB
    validation: Optional[ValidationConfig] = None  # used when train is given --valid logs
    # constant, or cosine: lr * (1 + cos(pi t / T)) / 2 over the T steps of all epochs, which anneals to 0 at the
    # last epoch without a validation split (the schedule the test protocol can use; decay on plateau needs one)
    lr_schedule: str = "constant"
    # at least this many steps in all: epochs = max(epochs, ceil(min_steps / steps per epoch)); on a small
    # dataset a few epochs are a few hundred steps, which end training (and a cosine schedule) too early
    min_steps: int = 0


@dataclasses.dataclass
class EvalConfig:
    ks: List[int] = dataclasses.field(default_factory=lambda: [1, 5, 10, 50, 100])
    batch_size: int = 4096


def _build(where: str, cls, values: Dict[str, Any]):
    """A section dataclass from a mapping, every key and value checked (nested sections recursively)."""
    if not isinstance(values, dict):
        raise ValueError(f"config {where}: expected a mapping, got {quote(values)}")
    allowed = {f.name for f in dataclasses.fields(cls)}
    bad = sorted((k for k in values if k not in allowed), key=str)
    if bad:
        raise ValueError(f"config section '{where}': unknown key(s) {quote(bad)}; allowed: {sorted(allowed)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _check_type(f"{where}.{name}", value, hints[name])
        if (where, name) in CHOICES and value not in CHOICES[where, name]:
            raise ValueError(f"config {where}.{name}: must be one of {CHOICES[where, name]}, got {quote(value)}")
        if (where, name) in RANGES and value is not None:
            _check_range(f"{where}.{name}", value, *RANGES[where, name])
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


#: Losses that train on every event with its label as the target (the others on positives only).
POINTWISE_LOSSES = ("bce", "focal")

#: Allowed values of the string options, checked when a config is loaded (before any data is read);
#: the modules that implement an option import its list from here, so it is written once.
SHARING = ("none", "projection", "full")           # towers.build_towers
REDUCTIONS = ("sum", "mean")                       # the losses' reduction over rows (tasks/reduction.py)
CORRUPT_RECORD_POLICIES = ("fail", "skip")         # data.reader
COMPRESSIONS = ("auto", "GZIP", "ZLIB", "")        # data.reader.compression_of
OPTIMIZERS = {"adam": "Adam", "adagrad": "Adagrad", "sgd": "SGD", "rmsprop": "RMSprop",
              "lazy_adam": "LazyAdam"}  # -> keras.optimizers class (LazyAdam: tfrec_towers.lazy_adam)

CHOICES = {("data", "corrupt_records"): CORRUPT_RECORD_POLICIES, ("data", "compression"): COMPRESSIONS,
           ("data", "idf_from"): ("logs", "items"),
           ("model", "sharing"): SHARING, ("task", "loss_reduction"): REDUCTIONS,
           ("task", "loss"): ("softmax", "hinge", "bce", "focal", "ccl", "bsl"), ("task", "bidirectional"): ("none", "sum", "mean"),
           ("task.streaming", "start"): ("first_gap", "paper"),
           ("task", "samtone"): ("none", "query", "item", "both"),
           ("model.generative", "combine"): ("concat", "add"),
           ("task", "logq_estimator"): ("counts", "streaming"),
           ("train", "optimizer"): tuple(OPTIMIZERS),
           ("train", "strategy"): ("default", "mirrored", "multi_worker"),
           ("train", "lr_schedule"): ("constant", "cosine")}

_POSITIVE = ("> 0", lambda v: v > 0)
_NON_NEGATIVE = (">= 0", lambda v: v >= 0)
_FRACTION = ("in [0, 1]", lambda v: 0 <= v <= 1)

#: Allowed ranges of the numeric options (a list option: each item), checked when a config is loaded,
#: so that a nonsense value fails before any data is read; None (where allowed) is not checked.
RANGES = {("data", "shuffle_buffer"): _NON_NEGATIVE, ("data", "num_parallel_reads"): _POSITIVE,
          ("model", "hidden"): _POSITIVE, ("model", "output_dim"): (">= 0 (0: no projection)", lambda v: v >= 0),
          ("model", "dropout"): ("in [0, 1)", lambda v: 0 <= v < 1),
          ("model.dual_augmented", "mimic_weight"): _NON_NEGATIVE,
          ("model.dual_augmented", "alignment_weight"): _NON_NEGATIVE,
          ("model.generative", "hidden"): _POSITIVE, ("model.generative", "weight"): _NON_NEGATIVE,
          ("task", "temperature"): ("> 0 (or null for no temperature)", lambda v: v > 0),
          ("task", "pair_alpha"): ("in [0, 1)", lambda v: 0 <= v < 1), ("task", "hard_negatives"): _NON_NEGATIVE,
          ("task", "margin"): _NON_NEGATIVE, ("task", "positive_weight"): _NON_NEGATIVE,
          ("task", "negative_weight"): _NON_NEGATIVE, ("task", "focal_gamma"): _NON_NEGATIVE,
          ("task", "focal_alpha"): _FRACTION, ("task", "batch_recall_k"): _POSITIVE,
          ("task", "ccl_margin"): ("in [-1, 1]", lambda v: -1 <= v <= 1), ("task", "ccl_negative_weight"): _NON_NEGATIVE,
          ("task", "bsl_tau2"): _POSITIVE, ("model", "embedding_l2"): _NON_NEGATIVE,
          ("model.user_gate", "weight"): ("in (0, 1)", lambda v: 0 < v < 1),
          ("model.user_gate", "dropout"): ("in [0, 1)", lambda v: 0 <= v < 1),
          ("train.validation", "metric"): ("recall@K or ndcg@K", lambda v: re.fullmatch(r"(recall|ndcg)@[1-9][0-9]*", v)),
          ("train.validation", "every"): _POSITIVE, ("train.validation", "patience"): _NON_NEGATIVE,
          ("train.validation", "decay"): ("in (0, 1]", lambda v: 0 < v <= 1),
          ("train.validation", "decay_patience"): _POSITIVE, ("train.validation", "min_delta"): _NON_NEGATIVE,
          ("task.adaptive", "alpha"): _NON_NEGATIVE, ("task.adaptive", "delta0"): _NON_NEGATIVE,
          ("task.adaptive", "tau0"): _POSITIVE, ("task.adaptive", "symmetric_weight"): _NON_NEGATIVE,
          ("task.streaming", "hash_size"): _POSITIVE, ("task.streaming", "num_hashes"): _POSITIVE,
          ("task.streaming", "learning_rate"): ("in (0, 1]", lambda v: 0 < v <= 1),
          ("negatives", "uniform"): _NON_NEGATIVE, ("negatives", "popularity"): _NON_NEGATIVE,
          ("negatives", "popularity_power"): _NON_NEGATIVE, ("negatives", "exposure"): _NON_NEGATIVE,
          ("negatives", "mined"): _NON_NEGATIVE, ("negatives", "mined_top_k"): _POSITIVE,
          ("train", "batch_size"): _POSITIVE, ("train", "epochs"): _POSITIVE,
          ("train", "learning_rate"): _POSITIVE, ("train", "steps_per_epoch"): _POSITIVE,
          ("train", "keep_checkpoints"): _NON_NEGATIVE, ("train", "min_steps"): _NON_NEGATIVE,
          ("eval", "ks"): _POSITIVE, ("eval", "batch_size"): _POSITIVE}

SECTIONS = {"data": DataConfig, "model": ModelConfig, "task": TaskConfig, "negatives": NegativesConfig,
            "train": TrainConfig, "eval": EvalConfig}


@dataclasses.dataclass
class Config:
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
        ``task.adaptive={}`` (a nested section with its defaults), ``task.adaptive.alpha=0.3``."""
        d = self.to_dict()
        for assignment in assignments:
            key, sep, value = assignment.partition("=")
            path = key.split(".")
            if not sep or len(path) < 2:
                raise ValueError(f"an override is section.key=value, got {quote(assignment)}")
            if path[0] not in SECTIONS:
                raise ValueError(f"override {quote(assignment)}: unknown section {quote(path[0])}; known: "
                                 f"{', '.join(SECTIONS)}")
            node = d
            for n, part in enumerate(path[:-1]):
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
                if not isinstance(node, dict):
                    raise ValueError(f"override {quote(assignment)}: {'.'.join(path[:n + 1])} is a value, not a section")
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

#: Float32 slots the optimizer keeps per trainable weight, beside the weight itself.
OPTIMIZER_SLOTS = {"adam": 2, "lazy_adam": 2, "adagrad": 1, "rmsprop": 1, "sgd": 0}
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
        if isinstance(f, (S.CategoricalFeature, S.SequenceFeature)):
            if isinstance(f, S.CategoricalFeature) and not f.tower_input:
                continue
            source = f.vocab_source
            shared = source is not None and getattr(f, "share_embedding", True)
            key = (source if shared else f.name, f.embedding_dim)
            if key in tables:
                continue
            if f.hash_buckets:
                rows, how = f.hash_buckets, "hash_buckets"
            else:
                src = by_name.get(source, f)
                if getattr(src, "vocabulary", None):
                    rows, how = len(src.vocabulary) + src.num_oov, "vocabulary + num_oov"
                elif vocab_size is not None:
                    rows, how = vocab_size(source) + src.num_oov, "the training vocabulary + num_oov"
                elif src.max_vocab is not None:
                    rows, how = src.max_vocab + src.num_oov, "up to max_vocab + num_oov"
                else:
                    rows, how = 1 + src.num_oov, "at least one value + num_oov"
            tables[key] = {"feature": key[0], "rows": rows, "dim": f.embedding_dim, "how": how}
        elif isinstance(f, S.TextFeature):
            tables[(f.name,)] = {"feature": f.name, "rows": f.num_buckets, "dim": f.embedding_dim,
                                 "how": "num_buckets"}
        elif isinstance(f, S.TimestampFeature):
            rows = sum(S.TimestampFeature.BUCKET_SIZES[b] for b in f.buckets)
            tables[(f.name,)] = {"feature": f.name, "rows": rows, "dim": f.embedding_dim, "how": "calendar buckets"}
    return list(tables.values())


def _encoding_width(f: "S.Feature") -> int:
    """Width of a feature's encoding in its tower's input (the concatenation the first layer reads)."""
    if isinstance(f, S.NumericFeature):
        return 1
    if isinstance(f, S.TimestampFeature):
        return f.embedding_dim * len(f.buckets)
    return f.embedding_dim if f.tower_input else 0


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
        width = sum(_encoding_width(f) for f in config.features.side(side))
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
