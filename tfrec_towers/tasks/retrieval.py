"""TFRS Retrieval with its logits passed through a chain of small transforms, plus auxiliary losses.

The loss of a batch of (query, positive candidate) rows is the softmax cross-entropy of

    logits = chain(Q C^T),   labels = I   (row i's positive is column i; other columns are negatives)

where ``chain`` applies each ``LogitTransform`` in order. The default chain reproduces
``tfrs.tasks.Retrieval``: temperature -> logQ correction -> accidental-hit removal. Later methods
(same-tower negatives, adaptive temperature/margin, hard-negative mining...) are further transforms,
and terms such as mimic or reconstruction losses are ``AuxiliaryLoss`` layers added to the total,
so the model never changes when an objective is added.
"""
import dataclasses
from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras


#: The logit of a pair that must not act as a negative (TFRS's value: finite, so 0 * logit stays 0).
MIN_LOGIT = float(np.finfo(np.float32).min / 100.0)


class Untracked:
    """Plain attribute holder that Keras does not track: a loss layer keeps references to layers that
    the towers already own (tracked there), without a second path in checkpoints and weight lists."""

    def __init__(self, **values):
        self.__dict__.update(values)


@dataclasses.dataclass
class RetrievalContext:
    """What a transform or auxiliary loss may need besides logits and labels.

    Row i of the batch is a query and its positive candidate: ``query_embeddings`` is [B, d];
    ``candidate_embeddings`` is [N, d] with N >= B, its first B rows the rows' positives and any
    further rows extra negatives (sampled from the catalog, mined, ...). ``candidate_ids`` [N] and
    ``query_ids`` [B] identify entities (same ID = same entity, never a negative of each other);
    ``labels`` [B] is the event label of each row (1 click, 0 exposure without click) when given.
    """

    query_embeddings: tf.Tensor
    candidate_embeddings: tf.Tensor
    candidate_ids: Optional[tf.Tensor] = None
    candidate_sampling_probability: Optional[tf.Tensor] = None
    sample_weight: Optional[tf.Tensor] = None
    features: Optional[Dict[str, tf.Tensor]] = None
    query_ids: Optional[tf.Tensor] = None
    labels: Optional[tf.Tensor] = None

    @property
    def positive_embeddings(self) -> tf.Tensor:
        """[B, d]: each row's positive candidate."""
        return self.candidate_embeddings[:tf.shape(self.query_embeddings)[0]]

    def reversed(self) -> "RetrievalContext":
        """The item -> query direction: each row's positive candidate is the anchor and the batch's
        queries are the columns (extra negative candidates take no part; no sampling correction)."""
        b = tf.shape(self.query_embeddings)[0]
        return RetrievalContext(
            self.positive_embeddings, self.query_embeddings,
            candidate_ids=self.query_ids, sample_weight=self.sample_weight, features=self.features,
            query_ids=None if self.candidate_ids is None else self.candidate_ids[:b], labels=self.labels)


class LogitTransform(keras.layers.Layer):
    """A step of the chain: ``(logits, labels, context) -> (logits, labels)``.

    ``changes_columns`` is True for a step that adds, drops or reorders columns (same-tower negatives,
    hard-negative mining): the task's batch metrics read the logits just before the first such step,
    where column j is still candidate j (after mining only the positive and its k hardest negatives
    are left, and batch recall@K would read 1.0 for any K > k).
    """

    changes_columns = False

    def call(self, logits, labels, context: RetrievalContext):
        raise NotImplementedError


class AuxiliaryLoss(keras.layers.Layer):
    """A scalar added to the retrieval loss: ``weight * term(context)``."""

    def __init__(self, weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.weight = weight

    def call(self, context: RetrievalContext):
        raise NotImplementedError


class Temperature(LogitTransform):
    """logits / tau. With L2-normalised towers the logits are cosines in [-1, 1]; a small tau
    (0.05-0.3) sharpens the softmax enough to separate the positive from hundreds of negatives."""

    def __init__(self, temperature: float, **kwargs):
        super().__init__(**kwargs)
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def call(self, logits, labels, context):
        return logits / self.temperature, labels


class LogQCorrection(LogitTransform):
    """logits_ij - log E_j (Yi et al. 2019): in-batch negatives are drawn with the items' frequency q,
    so without the correction popular items are over-penalised. No-op when E is not given.

    E_j is column j's expected count in the batch (B q_j in-batch, or the mixture's count with sampled
    negatives), which exceeds 1 for popular items: it is floored at 1e-12 but never capped.
    ``tfrs.layers.loss.SamplingProbablityCorrection`` clips at 1 (it expects a probability), which
    flattened every item with B q > 1 to the same correction and cost the default MovieLens model
    about 5% HR@10 (issue 18). A row-constant shift (log B) leaves the softmax unchanged.
    """

    def call(self, logits, labels, context):
        expected = context.candidate_sampling_probability
        if expected is None:
            return logits, labels
        return logits - tf.math.log(tf.maximum(tf.cast(expected, logits.dtype), 1e-12)), labels


class RemoveAccidentalHits(LogitTransform):
    """Column j is not a negative of row i when its ID equals row i's positive ID (logit -> MIN_LOGIT).

    Row i's positive is column i (an event row whose label is 0 has none, and still masks its own item).
    With ``optional`` the step is skipped when the context has no IDs (e.g. no user ID in the item->user
    direction); otherwise missing IDs are an error.
    """

    def __init__(self, optional: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.optional = optional

    def call(self, logits, labels, context):
        ids = context.candidate_ids
        if ids is None:
            if self.optional:
                return logits, labels
            raise ValueError("removing accidental hits needs candidate ids")
        b, n = tf.shape(logits)[0], tf.shape(ids)[0]
        same = tf.equal(ids[:b, None], ids[None, :]) & ~tf.cast(tf.eye(b, n), tf.bool)
        same = tf.pad(same, [[0, 0], [0, tf.shape(logits)[1] - n]])
        return tf.where(same, MIN_LOGIT, logits), labels


class Retrieval(tfrs.tasks.Retrieval):
    """``tfrs.tasks.Retrieval`` whose loss is computed through ``transforms`` and ``auxiliary_losses``.

        loss = w_q L(chain_q(Q C^T), I) + w_r L(chain_r(P Q^T), I) + sum_k weight_k aux_k

    Args:
      transforms: LogitTransforms applied in order to the [queries, candidates] logits.
      reverse_transforms: when not None, the item->query direction is added: each row's positive item
        is the anchor and the batch's queries are its columns (bidirectional softmax).
      query_weight, reverse_weight: w_q, w_r (1 and 1: sum of the directions; 0.5 and 0.5: mean).
      in_batch_negatives: False keeps, of the first B columns, only row i's own positive.
      auxiliary_losses: AuxiliaryLoss layers whose weighted values are added to the loss.
      loss, metrics, batch_metrics, loss_metrics, name: as in ``tfrs.tasks.Retrieval``; ``loss`` is
        any callable ``(y_true, y_pred, sample_weight)``.
    """

    def __init__(self, transforms: Sequence[LogitTransform] = (), auxiliary_losses: Sequence[AuxiliaryLoss] = (),
                 loss=None, metrics=None, batch_metrics=None, loss_metrics=None, name=None,
                 reverse_transforms: Optional[Sequence[LogitTransform]] = None, query_weight: float = 1.0,
                 reverse_weight: float = 1.0, in_batch_negatives: bool = True):
        super().__init__(loss=loss, metrics=metrics, batch_metrics=batch_metrics, loss_metrics=loss_metrics,
                         name=name)
        self.transforms = list(transforms)
        self.reverse_transforms = None if reverse_transforms is None else list(reverse_transforms)
        self.auxiliary_losses = list(auxiliary_losses)
        self.query_weight, self.reverse_weight = query_weight, reverse_weight
        self.in_batch_negatives = in_batch_negatives

    def direction(self, transforms, context: RetrievalContext):
        """(logits, labels) of one direction: Q C^T through the chain, labels I (times event labels);
        and the (labels, logits) that batch metrics read: those before the first column-changing step."""
        logits = tf.linalg.matmul(context.query_embeddings, context.candidate_embeddings, transpose_b=True)
        b, n = tf.shape(logits)[0], tf.shape(logits)[1]
        labels = tf.eye(b, n)
        if context.labels is not None:
            labels *= tf.cast(tf.reshape(context.labels, [-1, 1]), labels.dtype)
        if not self.in_batch_negatives:
            others = tf.pad(1.0 - tf.eye(b), [[0, 0], [0, n - b]]) > 0
            logits = tf.where(others, MIN_LOGIT, logits)
        metric_inputs = None
        for transform in transforms:
            if transform.changes_columns and metric_inputs is None:
                metric_inputs = (labels, logits)
            logits, labels = transform(logits, labels, context=context)
        return logits, labels, metric_inputs or (labels, logits)

    def call(self, query_embeddings, candidate_embeddings, sample_weight=None, candidate_sampling_probability=None,
             candidate_ids=None, compute_metrics=True, compute_batch_metrics=True, features=None,
             query_ids=None, labels=None):
        context = RetrievalContext(query_embeddings, candidate_embeddings, candidate_ids,
                                   candidate_sampling_probability, sample_weight, features, query_ids, labels)
        logits, labels, (metric_labels, metric_logits) = self.direction(self.transforms, context)
        loss = self._loss(y_true=labels, y_pred=logits, sample_weight=sample_weight)
        if self.query_weight != 1.0:
            loss *= self.query_weight
        if self.reverse_transforms is not None:
            reverse_logits, reverse_labels, _ = self.direction(self.reverse_transforms, context.reversed())
            loss += self.reverse_weight * self._loss(y_true=reverse_labels, y_pred=reverse_logits,
                                                     sample_weight=sample_weight)
        for aux in self.auxiliary_losses:
            loss += aux.weight * aux(context)

        updates = [metric.update_state(loss) for metric in self._loss_metrics]
        if compute_metrics:
            updates += [metric.update_state(query_embeddings, candidate_embeddings[:tf.shape(query_embeddings)[0]],
                                            true_candidate_ids=candidate_ids, sample_weight=sample_weight)
                        for metric in self._factorized_metrics]
        if compute_batch_metrics:
            updates += [metric.update_state(metric_labels, metric_logits, sample_weight=sample_weight)
                        for metric in self._batch_metrics]
        with tf.control_dependencies(updates):
            return tf.identity(loss)
