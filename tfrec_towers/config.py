"""Run configuration: the feature spec plus data, model, task, training and evaluation options.

Loaded from YAML or JSON; every section and key is checked, so a typo fails naming the key.
``tfrec-towers config`` prints the packaged default (``configs/default.yaml``).
"""
import dataclasses
import os
import re
import typing
from typing import Any, Dict, List, Optional, Sequence

import yaml

from tfrec_towers.features.spec import FeatureSpec, load_mapping

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


@dataclasses.dataclass
class EvalConfig:
    ks: List[int] = dataclasses.field(default_factory=lambda: [1, 5, 10, 50, 100])
    batch_size: int = 4096


def _build(where: str, cls, values: Dict[str, Any]):
    """A section dataclass from a mapping, every key and value checked (nested sections recursively)."""
    if not isinstance(values, dict):
        raise ValueError(f"config {where}: expected a mapping, got {values!r}")
    allowed = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(values) - allowed)
    if bad:
        raise ValueError(f"config section '{where}': unknown key(s) {bad}; allowed: {sorted(allowed)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _check_type(f"{where}.{name}", value, hints[name])
        if (where, name) in CHOICES and value not in CHOICES[where, name]:
            raise ValueError(f"config {where}.{name}: must be one of {CHOICES[where, name]}, got {value!r}")
        if (where, name) in RANGES and value is not None:
            _check_range(f"{where}.{name}", value, *RANGES[where, name])
    return cls(**kwargs)


def _check_range(where: str, value: Any, text: str, ok) -> None:
    """ValueError naming ``where`` and the allowed range unless ``ok`` holds for the value (each item
    of a list)."""
    for v in value if isinstance(value, list) else [value]:
        if not ok(v):
            raise ValueError(f"config {where}: must be {text}, got {value!r}")


def _check_type(where: str, value: Any, hint) -> Any:
    """``value`` if it fits the annotation (int, float, str, bool, Optional, List and nested section
    dataclasses are what config sections use; a nested section is built from its mapping), else
    ValueError naming ``where``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        return _check_type(where, value, next(a for a in args if a is not type(None)))
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else _build(where, hint, value or {})
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config {where}: expected a list, got {value!r}")
        return [_check_type(where, v, args[0]) for v in value]
    ok = {bool: isinstance(value, bool), int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool), str: isinstance(value, str)}
    if not ok.get(hint, True):
        raise ValueError(f"config {where}: expected {hint.__name__}, got {value!r}")
    return value


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
          ("train", "keep_checkpoints"): _NON_NEGATIVE,
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
        unknown = sorted(set(d) - set(SECTIONS) - {"features"})
        if unknown:
            raise ValueError(f"config: unknown section(s) {unknown}; known: features, {', '.join(SECTIONS)}")
        if "features" not in d:
            raise ValueError("config: the 'features' section (the feature spec) is required")
        sections = {key: _build(key, section, d.get(key) or {}) for key, section in SECTIONS.items()}
        return cls(features=FeatureSpec.from_dict(d["features"]), **sections)

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
                raise ValueError(f"an override is section.key=value, got {assignment!r}")
            if path[0] not in SECTIONS:
                raise ValueError(f"override {assignment!r}: unknown section {path[0]!r}; known: {', '.join(SECTIONS)}")
            node = d
            for part in path[:-1]:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
            node[path[-1]] = yaml.safe_load(value)
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
