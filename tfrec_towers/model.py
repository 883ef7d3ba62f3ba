"""The two-tower ``tfrs.Model``: towers + negatives + Retrieval task, built from a Config and training stats.

A training step: query tower on the batch, item tower on the batch's positives and on any sampled
negatives (catalog rows), optionally candidates of all replicas, each column's expected count for the
logQ correction, then the Retrieval task (see ``build_task`` for the order of its steps).
"""
from typing import List, Optional, Tuple

import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from tfrec_towers.config import Config
from tfrec_towers.features.stats import FeatureStats
from tfrec_towers.negatives.cross_replica import gather_across_replicas
from tfrec_towers.lazy_adam import OPTIMIZERS
from tfrec_towers.tasks import (AdaptiveSymmetricLoss, AdaptiveTemperatureMargin, HardNegativeMining, ItemFrequency,
                                LogQCorrection, PassageCentricLoss, RemoveAccidentalHits, Retrieval, SameTowerNegatives,
                                StreamingFrequency, Temperature)
from tfrec_towers.tasks.losses import loss_kind
from tfrec_towers.towers import Encodings, ExtraInput, TowerExtensions, build_towers
from tfrec_towers.towers.dual_augmented import AugmentedVector, CategoryAlignmentLoss, MimicLoss
from tfrec_towers.towers.generative_interaction import PseudoQueryGenerator, ReconstructionLoss


__all__ = ["TwoTowerModel", "build_model", "build_task", "learning_rate_schedule", "make_loss", "make_optimizer",
           "steps_per_epoch", "train_epochs"]


class TwoTowerModel(tfrs.Model):
    """Query tower, candidate tower and a Retrieval task; ``features`` is one batch of model inputs.

    Args:
      item_frequency: in-batch sampling frequency for logQ (``ItemFrequency`` or ``StreamingFrequency``).
      negatives: extra negative sources (``tfrec_towers.negatives.Negatives``), or None.
      query_key: the batch key of the query entity (user ID) for same-entity masks, when present.
      label_key: the event label, passed to the task (pointwise losses, positive-only auxiliary losses).
      cross_replica: score the candidates of all replicas under a distribution strategy.
    """

    def __init__(self, query_tower, candidate_tower, task: Retrieval, item_id: str, item_frequency=None,
                 negatives=None, query_key: Optional[str] = None, label_key: Optional[str] = None,
                 cross_replica: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.query_tower, self.candidate_tower, self.task = query_tower, candidate_tower, task
        self.item_id, self.item_frequency, self.negatives = item_id, item_frequency, negatives
        self.query_key, self.label_key, self.cross_replica = query_key, label_key, cross_replica

    def compute_loss(self, features, training=False):
        query = self.query_tower(features, training=training)
        candidates = self.candidate_tower(features, training=training)
        ids = features[self.item_id]
        batch_size = tf.shape(ids)[0]
        expected = self.item_frequency.expected_count(ids, batch_size, training) if self.item_frequency is not None else None
        if self.cross_replica:
            gathered = gather_across_replicas(candidates, ids, *([expected] if expected is not None else []))
            candidates, ids = gathered[0], gathered[1]
            expected = gathered[2] if expected is not None else None
        if self.negatives is not None:
            rows = self.negatives.sample(features)
            if rows is not None:
                extra_ids = self.negatives.catalog.ids_at(rows)
                candidates = tf.concat([candidates, self.candidate_tower(self.negatives.catalog.gather(rows),
                                                                         training=training)], axis=0)
                ids = tf.concat([ids, extra_ids], axis=0)
                if expected is not None:
                    extra = self.item_frequency.expected_count(extra_ids, batch_size)
                    expected = tf.concat([expected, extra], axis=0)
            if expected is not None:
                expected = self.negatives.expected_counts(ids, expected)
        labels = features.get(self.label_key) if self.label_key else None
        return self.task(query, candidates, candidate_ids=ids, candidate_sampling_probability=expected,
                         compute_metrics=not training, features=features,
                         query_ids=features.get(self.query_key) if self.query_key else None,
                         labels=None if labels is None else tf.cast(labels, tf.float32))


def make_loss(config: Config):
    """The loss over the chain's [rows, columns] logits, ``task.loss`` in the registry ``tasks.losses.LOSSES``:
    softmax cross-entropy, hinge, pointwise (bce, focal), cosine contrastive (ccl), bilateral softmax (bsl)."""
    return loss_kind(config.task.loss).build(config.task)


def build_task(config: Config, auxiliary_losses=()) -> Retrieval:
    """The Retrieval task. Query->item chain, in this order (each step a small tested layer):

        temperature -> logQ (sampling mixture) -> accidental hits -> adaptive tau/margin
        -> same-tower negatives (SamToNe) -> hard-negative mining -> loss

    Adaptive tau/margin comes before SamToNe so that it sees only the cross-tower columns it is
    defined on. The item->query chain (bidirectional, SamToNe item side) has temperature, accidental
    hits between same users, and SamToNe's item-item terms; no logQ (queries are not sampled).
    """
    t, n = config.task, config.negatives
    transforms, aux = [], list(auxiliary_losses)
    if t.temperature:
        transforms.append(Temperature(t.temperature))
    if t.logq:
        transforms.append(LogQCorrection())
    if t.remove_accidental_hits:
        transforms.append(RemoveAccidentalHits())
    if t.adaptive is not None:
        a = t.adaptive
        if not t.temperature:
            raise ValueError("task.adaptive needs task.temperature (the chain's base temperature)")
        adaptive = AdaptiveTemperatureMargin(t.temperature, a.alpha, a.delta0, a.tau0, a.trainable)
        transforms.append(adaptive)
        if a.symmetric_weight:
            aux.append(AdaptiveSymmetricLoss(adaptive, a.symmetric_weight, t.loss_reduction))
    reverse = None
    if (t.samtone != "none" or t.bidirectional != "none" or t.pair_alpha) and not t.temperature:
        raise ValueError("same-tower negatives, PAIR and the bidirectional loss need task.temperature")
    if t.samtone in ("item", "both") and t.bidirectional == "none":
        raise ValueError("task.samtone item/both adds item-item negatives to the item->user softmax: "
                         "set task.bidirectional to sum or mean")
    if t.samtone in ("query", "both"):
        transforms.append(SameTowerNegatives(t.temperature))
    if t.bidirectional != "none":
        if not n.in_batch:
            raise ValueError("the bidirectional loss needs in-batch negatives (negatives.in_batch)")
        reverse = [Temperature(t.temperature)]
        if t.remove_accidental_hits:
            reverse.append(RemoveAccidentalHits(optional=True))
        if t.samtone in ("item", "both"):
            reverse.append(SameTowerNegatives(t.temperature))
    if t.pair_alpha:
        aux.append(PassageCentricLoss(t.temperature, t.pair_alpha, t.loss_reduction))
    if t.hard_negatives:
        transforms.append(HardNegativeMining(t.hard_negatives))
    weight = {"none": 1.0, "sum": 1.0, "mean": 0.5}[t.bidirectional]
    batch_metrics = [keras.metrics.TopKCategoricalAccuracy(k=k, name=f"batch_recall_at_{k}")
                     for k in t.batch_recall_k] if loss_kind(t.loss).batch_recall else []
    return Retrieval(transforms=transforms, auxiliary_losses=aux, loss=make_loss(config),
                     batch_metrics=batch_metrics, reverse_transforms=reverse,
                     query_weight=weight * (1.0 - t.pair_alpha), reverse_weight=weight,
                     in_batch_negatives=n.in_batch)


def _in_batch_frequency(config: Config, stats: FeatureStats):
    t = config.task
    if not t.logq:
        return None
    if t.logq_estimator == "streaming":
        s = t.streaming
        return StreamingFrequency(s.hash_size, s.num_hashes, s.learning_rate, start=s.start)
    ids, q = stats.item_probabilities()
    if not ids:
        raise ValueError("logQ correction needs item counts, but the training logs gave none")
    return ItemFrequency(ids, q)


def _tower_extensions(config: Config, stats: FeatureStats, query: Encodings,
                      candidate: Encodings) -> Tuple[TowerExtensions, List]:
    """The extra tower inputs of DAT and generative interaction, built on the towers' encoders (``query``,
    ``candidate``), and their auxiliary losses. ``build_towers`` creates the towers with the inputs."""
    m, aux = config.model, []
    query_inputs, candidate_inputs = [], []
    if m.dual_augmented is not None:
        d = m.dual_augmented
        if not m.output_dim:
            raise ValueError("dual augmented towers need model.output_dim (the augmented vectors' size)")
        item_id = config.features.item_id
        user_vector = AugmentedVector(d.query_id, _vocabulary(stats, d.query_id), m.output_dim, name="a_u")
        item_vector = AugmentedVector(item_id, stats.vocabulary(item_id) if item_id in stats.vocab_counts
                                      else sorted(stats.item_counts), m.output_dim, name="a_v")
        query_inputs.append(ExtraInput(user_vector))
        candidate_inputs.append(ExtraInput(item_vector))
        aux.append(MimicLoss(user_vector, item_vector, d.mimic_weight))
        if d.alignment_weight:
            if not d.category:
                raise ValueError("model.dual_augmented.alignment_weight needs model.dual_augmented.category")
            aux.append(CategoryAlignmentLoss(d.category, d.alignment_weight))
    if m.generative is not None:
        g = m.generative
        unknown = [name for name in g.targets if name not in query.names]
        if unknown or not g.targets:
            raise ValueError(f"model.generative.targets must name query-side features; not query inputs: {unknown}")
        additive = g.combine == "add"
        dummy = config.features.dummy_batch()
        target = query.select(g.targets)
        target_dim = target.width(dummy)
        item_dim = candidate.width(dummy)
        if additive and target_dim != item_dim:
            raise ValueError(f"model.generative.combine 'add' adds the pseudo query vector ({target_dim}-d: the "
                             f"encodings of {g.targets}) to the candidate tower's encodings ({item_dim}-d); "
                             "they must be of one width")
        if not additive and (m.sharing == "full" or not (m.hidden or m.output_dim)
                             or (m.sharing == "projection" and not m.hidden)):
            raise ValueError("model.generative adds the pseudo query vector to the candidate tower's input, so the "
                             "candidate tower needs layers of its own that bring it back to the query tower's width: "
                             "sharing 'none' with model.hidden or model.output_dim, or sharing 'projection' with "
                             f"model.hidden (got sharing {m.sharing!r}, hidden {m.hidden}, output_dim {m.output_dim}); "
                             "or model.generative.combine 'add'")
        generator = PseudoQueryGenerator(target_dim, g.hidden, additive, name="pseudo_query")
        candidate_inputs.append(ExtraInput(generator, additive))
        aux.append(ReconstructionLoss(generator, target, candidate, g.weight))
    return TowerExtensions(query=query_inputs, candidate=candidate_inputs), aux


def _vocabulary(stats: FeatureStats, name: str):
    if name not in stats.vocab_counts:
        raise ValueError(f"dual augmented towers: no vocabulary for '{name}'; it must be an id/categorical "
                         "feature of the spec")
    return stats.vocabulary(name)


def build_model(config: Config, stats: FeatureStats, negatives=None) -> TwoTowerModel:
    """The model; ``negatives`` (``build_negatives``) only when training with sampled negatives."""
    m, aux = config.model, []

    def extensions(query: Encodings, candidate: Encodings) -> TowerExtensions:
        built, losses = _tower_extensions(config, stats, query, candidate)
        aux.extend(losses)
        return built

    query_tower, candidate_tower = build_towers(config.features, stats, m.hidden, m.output_dim, m.activation,
                                                m.dropout, m.normalize, m.sharing, m.user_gate, m.embedding_l2,
                                                extensions=extensions)
    by_name = config.features.by_name
    query_key = config.data.user_id if config.data.user_id in by_name else None
    return TwoTowerModel(query_tower, candidate_tower, build_task(config, aux), config.features.item_id,
                         _in_batch_frequency(config, stats), negatives, query_key, config.data.label,
                         config.negatives.cross_replica)


class _Shifted(keras.optimizers.schedules.LearningRateSchedule):
    """``schedule(step - start)``: a schedule that starts again at a warm start's step ``start``."""

    def __init__(self, schedule, start: int):
        self.schedule, self.start = schedule, start

    def __call__(self, step):
        return self.schedule(tf.maximum(tf.cast(step, tf.int64) - self.start, 0))

    def get_config(self):
        return {"schedule": keras.optimizers.schedules.serialize(self.schedule), "start": self.start}


def learning_rate_schedule(config: Config, num_examples: int, start_step: int = 0):
    """``train.learning_rate``, or for ``lr_schedule: cosine`` the schedule lr (1 + cos(pi t / T)) / 2 over
    T = ``train_epochs`` x ``steps_per_epoch``. ``start_step``: the
    optimizer's step counter at a warm start (it carries over; the schedule starts again there)."""
    t = config.train
    if t.lr_schedule == "constant":
        return t.learning_rate
    if t.validation is not None and t.validation.decay < 1:
        raise ValueError("train.lr_schedule cosine sets the learning rate at every step: set "
                         "train.validation.decay to 1 (no decay on plateau)")
    schedule = keras.optimizers.schedules.CosineDecay(t.learning_rate, decay_steps=steps_per_epoch(config, num_examples)
                                                      * train_epochs(config, num_examples))
    return _Shifted(schedule, start_step) if start_step else schedule


def steps_per_epoch(config: Config, num_examples: int) -> int:
    """``train.steps_per_epoch``, else ceil(training examples / batch size)."""
    return config.train.steps_per_epoch or -(-max(num_examples, 1) // config.train.batch_size)


def train_epochs(config: Config, num_examples: int) -> int:
    """The epochs ``fit`` runs: ``train.epochs``, raised to reach ``train.min_steps`` steps in all."""
    t = config.train
    return max(t.epochs, -(-t.min_steps // steps_per_epoch(config, num_examples)))


def make_optimizer(name: str, learning_rate):
    """A Keras optimizer by its config name (the registry ``lazy_adam.OPTIMIZERS``; ``lazy_adam`` is
    ``LazyAdam``); ``learning_rate`` a float or a schedule."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {name!r}")
    return OPTIMIZERS[name](learning_rate=learning_rate)
