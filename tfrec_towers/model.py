"""The two-tower ``tfrs.Model``: towers + Retrieval task, built from a Config and training stats."""
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from tfrec_towers.config import Config
from tfrec_towers.features.stats import FeatureStats
from tfrec_towers.tasks import LogQCorrection, RemoveAccidentalHits, Retrieval, Temperature
from tfrec_towers.towers import build_towers


class ItemFrequency(keras.layers.Layer):
    """Item ID -> q(item), its frequency among training positives (the in-batch sampling probability).

    Unseen IDs get the smallest observed q: a rare item is the safer guess for an unknown one.
    """

    def __init__(self, item_ids, probabilities, **kwargs):
        super().__init__(**kwargs)
        probabilities = np.asarray(probabilities, dtype=np.float32)
        init = tf.lookup.KeyValueTensorInitializer(tf.constant(list(item_ids), tf.string),
                                                   tf.constant(probabilities))
        self.table = tf.lookup.StaticHashTable(init, default_value=float(probabilities.min()))

    def call(self, item_ids):
        return self.table.lookup(item_ids)


class TwoTowerModel(tfrs.Model):
    """Query tower, candidate tower and a Retrieval task; ``features`` is one batch of model inputs."""

    def __init__(self, query_tower, candidate_tower, task: Retrieval, item_id: str,
                 item_frequency: Optional[ItemFrequency] = None, **kwargs):
        super().__init__(**kwargs)
        self.query_tower, self.candidate_tower, self.task = query_tower, candidate_tower, task
        self.item_id, self.item_frequency = item_id, item_frequency

    def compute_loss(self, features, training=False):
        query = self.query_tower(features, training=training)
        candidates = self.candidate_tower(features, training=training)
        ids = features[self.item_id]
        probability = self.item_frequency(ids) if self.item_frequency is not None else None
        return self.task(query, candidates, candidate_ids=ids, candidate_sampling_probability=probability,
                         compute_metrics=not training, features=features)


def build_task(config: Config) -> Retrieval:
    t = config.task
    transforms = []
    if t.temperature:
        transforms.append(Temperature(t.temperature))
    if t.logq:
        transforms.append(LogQCorrection())
    if t.remove_accidental_hits:
        transforms.append(RemoveAccidentalHits())
    reduction = {"sum": keras.losses.Reduction.SUM,
                 "mean": keras.losses.Reduction.SUM_OVER_BATCH_SIZE}[t.loss_reduction]
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, reduction=reduction)
    batch_metrics = [keras.metrics.TopKCategoricalAccuracy(k=k, name=f"batch_recall_at_{k}")
                     for k in t.batch_recall_k]
    return Retrieval(transforms=transforms, loss=loss, batch_metrics=batch_metrics)


def build_model(config: Config, stats: FeatureStats) -> TwoTowerModel:
    m = config.model
    query_tower, candidate_tower = build_towers(config.features, stats, m.hidden, m.output_dim, m.activation,
                                                m.dropout, m.normalize, m.sharing)
    frequency = None
    if config.task.logq:
        ids, q = stats.item_probabilities()
        if not ids:
            raise ValueError("logQ correction needs item counts, but the training logs gave none")
        frequency = ItemFrequency(ids, q)
    return TwoTowerModel(query_tower, candidate_tower, build_task(config), config.features.item_id, frequency)


def make_optimizer(name: str, learning_rate: float):
    optimizers = {"adam": keras.optimizers.Adam, "adagrad": keras.optimizers.Adagrad, "sgd": keras.optimizers.SGD,
                  "rmsprop": keras.optimizers.RMSprop}
    if name not in optimizers:
        raise ValueError(f"optimizer must be one of {sorted(optimizers)}, got {name!r}")
    return optimizers[name](learning_rate=learning_rate)
