"""A run directory: what training writes and what evaluation and export read back.

    RUN/config.yaml          resolved config (a resumed run must have the same)
    RUN/run.json             train / eval / items globs of the run
    RUN/feature_stats.json   vocabularies, numeric statistics, item counts (one pass over train logs)
    RUN/backup/              BackupAndRestore state: a killed run resumes from its last epoch
    RUN/checkpoints/         weights after each epoch
    RUN/logs/                TensorBoard
    RUN/history.csv          per-epoch loss and batch metrics
    RUN/weights/final*       final weights
    RUN/metrics.json         full-catalog evaluation
"""
import json
import os
from typing import Any, Dict

import tensorflow as tf

from tfrec_towers.config import Config
from tfrec_towers.features.stats import FeatureStats
from tfrec_towers.model import TwoTowerModel, build_model


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
        with open(self / "run.json", "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2)

    def config(self) -> Config:
        return Config.load(self / "config.yaml")

    def stats(self) -> FeatureStats:
        return FeatureStats.load(self / "feature_stats.json")


def dummy_batch(config: Config) -> Dict[str, tf.Tensor]:
    """A one-row batch of model inputs, to create a model's variables before restoring weights."""
    return config.features.dummy_batch()


def load_model(run_dir: str) -> TwoTowerModel:
    """Rebuild a trained model from its run directory (config + stats + final weights)."""
    run = RunDir(run_dir)
    if not tf.io.gfile.exists(run.weights + ".index"):
        raise FileNotFoundError(f"{run.path} has no final weights: did training finish?")
    config = run.config()
    model = build_model(config, run.stats())
    model.query_tower(dummy_batch(config))
    model.candidate_tower(dummy_batch(config))
    model.load_weights(run.weights).expect_partial()
    return model
