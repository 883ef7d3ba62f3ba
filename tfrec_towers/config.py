"""Run configuration: the feature spec plus data, model, task, training and evaluation options.

Loaded from YAML or JSON; every section and key is checked, so a typo fails naming the key.
``tfrec-towers config`` prints the packaged default (``configs/default.yaml``).
"""
import dataclasses
import json
import os
import typing
from typing import Any, Dict, List, Optional, Sequence

import yaml

from tfrec_towers.features.spec import FeatureSpec

PACKAGED = os.path.join(os.path.dirname(__file__), "configs")


def load_mapping(path: str) -> Dict[str, Any]:
    """A YAML (.yaml/.yml) or JSON file -> dict."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


@dataclasses.dataclass
class DataConfig:
    compression: str = "auto"          # auto: GZIP for *.gz files
    corrupt_records: str = "fail"      # fail (name file and record) or skip (count and report)
    label: Optional[str] = None        # int64 label field; when set, only events with label >= 1 train
    user_id: str = "user_id"           # the user key, for excluding a user's history in evaluation
    shuffle_buffer: int = 100_000
    num_parallel_reads: int = 8
    cache: bool = False                # keep parsed batches in memory after the first epoch


@dataclasses.dataclass
class ModelConfig:
    hidden: List[int] = dataclasses.field(default_factory=lambda: [256])
    output_dim: int = 128
    activation: str = "relu"
    dropout: float = 0.0
    normalize: bool = True             # L2-normalised outputs: logits are cosines
    sharing: str = "none"              # none | projection (ADE-SPL) | full (SDE)


@dataclasses.dataclass
class TaskConfig:
    temperature: Optional[float] = 0.2  # cosine logits / 0.2: best of 0.05-0.3 on ML-100K
    logq: bool = True                  # subtract log q(item), q from training counts
    remove_accidental_hits: bool = True
    loss_reduction: str = "sum"        # TFRS's default; "mean" makes the loss scale-free in batch size
    batch_recall_k: List[int] = dataclasses.field(default_factory=lambda: [10, 100])


@dataclasses.dataclass
class TrainConfig:
    batch_size: int = 512
    epochs: int = 20
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    seed: int = 0
    strategy: str = "default"          # default | mirrored | multi_worker (TF_CONFIG)
    steps_per_epoch: Optional[int] = None


@dataclasses.dataclass
class EvalConfig:
    ks: List[int] = dataclasses.field(default_factory=lambda: [1, 5, 10, 50, 100])
    batch_size: int = 4096


def _check_type(where: str, value: Any, hint) -> None:
    """Raise ValueError naming ``where`` unless ``value`` fits the annotation (int, float, str, bool,
    Optional[...] and List[...] are what config sections use)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return
        return _check_type(where, value, next(a for a in args if a is not type(None)))
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config {where}: expected a list, got {value!r}")
        for v in value:
            _check_type(where, v, args[0])
        return
    ok = {bool: isinstance(value, bool), int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool), str: isinstance(value, str)}
    if not ok.get(hint, True):
        raise ValueError(f"config {where}: expected {hint.__name__}, got {value!r}")


#: Allowed values of the string options, checked when a config is loaded (before any data is read).
CHOICES = {("data", "corrupt_records"): ("fail", "skip"), ("data", "compression"): ("auto", "GZIP", "ZLIB", ""),
           ("model", "sharing"): ("none", "projection", "full"), ("task", "loss_reduction"): ("sum", "mean"),
           ("train", "optimizer"): ("adam", "adagrad", "sgd", "rmsprop"),
           ("train", "strategy"): ("default", "mirrored", "multi_worker")}

SECTIONS = {"data": DataConfig, "model": ModelConfig, "task": TaskConfig, "train": TrainConfig, "eval": EvalConfig}


@dataclasses.dataclass
class Config:
    features: FeatureSpec
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Config":
        unknown = sorted(set(d) - set(SECTIONS) - {"features"})
        if unknown:
            raise ValueError(f"config: unknown section(s) {unknown}; known: features, {', '.join(SECTIONS)}")
        if "features" not in d:
            raise ValueError("config: the 'features' section (the feature spec) is required")
        sections = {}
        for key, section in SECTIONS.items():
            values = d.get(key) or {}
            allowed = {f.name for f in dataclasses.fields(section)}
            bad = sorted(set(values) - allowed)
            if bad:
                raise ValueError(f"config section '{key}': unknown key(s) {bad}; allowed: {sorted(allowed)}")
            hints = typing.get_type_hints(section)
            for name, value in values.items():
                _check_type(f"{key}.{name}", value, hints[name])
                if (key, name) in CHOICES and value not in CHOICES[key, name]:
                    raise ValueError(f"config {key}.{name}: must be one of {CHOICES[key, name]}, got {value!r}")
            sections[key] = section(**values)
        return cls(features=FeatureSpec.from_dict(d["features"]), **sections)

    def to_dict(self) -> Dict[str, Any]:
        out = {"features": self.features.to_dict()}
        out.update({k: dataclasses.asdict(getattr(self, k)) for k in SECTIONS})
        return out

    @classmethod
    def load(cls, path: str) -> "Config":
        return cls.from_dict(load_mapping(path))

    def with_overrides(self, assignments: Sequence[str]) -> "Config":
        """A copy with ``section.key=value`` assignments applied (value parsed as YAML): ``train.epochs=3``."""
        d = self.to_dict()
        for assignment in assignments:
            key, sep, value = assignment.partition("=")
            section, dot, name = key.partition(".")
            if not sep or not dot:
                raise ValueError(f"an override is section.key=value, got {assignment!r}")
            if section not in SECTIONS:
                raise ValueError(f"override {assignment!r}: unknown section {section!r}; known: {', '.join(SECTIONS)}")
            d[section][name] = yaml.safe_load(value)
        return Config.from_dict(d)

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=False)


def packaged(name: str = "default") -> str:
    """Path of a config shipped with the package (``default``, ``tutorial``)."""
    path = os.path.join(PACKAGED, f"{name}.yaml")
    if not os.path.exists(path):
        known = sorted(p[:-5] for p in os.listdir(PACKAGED) if p.endswith(".yaml"))
        raise FileNotFoundError(f"no packaged config {name!r}; known: {known}")
    return path
