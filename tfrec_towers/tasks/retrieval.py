"""TFRS Retrieval with its logits passed through a chain of small transforms, plus auxiliary losses.

The loss of a batch of (query, positive candidate) rows is the softmax cross-entropy of

    logits = chain(Q C^T),   labels = I   (row i's positive is column i; other columns are negatives)

where ``chain`` applies each ``LogitTransform`` in order. The default chain reproduces
``tfrs.tasks.Retrieval``: temperature -> logQ correction -> accidental-hit removal. Later methods
(same-tower negatives, adaptive temperature/margin, hard-negative mining...) are further transforms,
and terms such as mimic or reconstruction losses are ``AuxiliaryLoss`` layers added to the total,
so the model never changes when an objective is added.
"""
from typing import Optional, Sequence

import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from tfrec_towers.tasks.chain import (
    MIN_LOGIT,
    AuxiliaryLoss,
    LogitTransform,
    LogQCorrection,
    RemoveAccidentalHits,
    RetrievalContext,
    Temperature,
)
from tfrec_towers.tasks.hard_negative_mining import HardNegativeMining


__all__ = ["Retrieval"]


class Retrieval(keras.layers.Layer, tfrs.tasks.Task):
    """A TFRS retrieval task whose loss is computed through ``transforms`` and ``auxiliary_losses``.

        loss = w_q L(chain_q(Q C^T), I) + w_r L(chain_r(P Q^T), I) + sum_k weight_k aux_k

    Built the way ``tfrs.tasks.Retrieval`` is (a Keras layer marked ``tfrs.tasks.Task`` that owns its
    loss and metrics and composes ``tfrs.layers.loss`` steps), not as its subclass, so no TFRS private
    attribute is relied on. Every argument of ``tfrs.tasks.Retrieval`` works the same here.

    Args:
      transforms: LogitTransforms applied in order to the [queries, candidates] logits. Not given: the
        chain of ``tfrs.tasks.Retrieval``'s own arguments, temperature -> logQ (when the call passes
        ``candidate_sampling_probability``) -> accidental hits -> hard negatives.
      temperature, remove_accidental_hits, num_hard_negatives: as in ``tfrs.tasks.Retrieval`` (only
        without ``transforms``: with a chain, put the steps in it).
      reverse_transforms: when not None, the item->query direction is added: each row's positive item
        is the anchor and the batch's queries are its columns (bidirectional softmax).
      query_weight, reverse_weight: w_q, w_r (1 and 1: sum of the directions; 0.5 and 0.5: mean).
      in_batch_negatives: False keeps, of the first B columns, only row i's own positive.
      auxiliary_losses: AuxiliaryLoss layers whose weighted values are added to the loss.
      loss, metrics, batch_metrics, loss_metrics, name: as in ``tfrs.tasks.Retrieval``; ``loss`` is
        any callable ``(y_true, y_pred, sample_weight)`` (default: TFRS's summed softmax cross-entropy).

    Example (the loss of a batch of two rows; then the chain that TFRS's own arguments give):

    >>> import tensorflow as tf
    >>> from tfrec_towers.tasks import Retrieval, Temperature
    >>> queries = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    >>> positives = tf.constant([[0.6, 0.8], [0.0, 1.0]])
    >>> task = Retrieval(transforms=[Temperature(0.1)])
    >>> round(float(task(queries, positives)), 4)
    0.1294
    >>> [type(t).__name__ for t in Retrieval(temperature=0.1, remove_accidental_hits=True).transforms]
    ['Temperature', 'LogQCorrection', 'RemoveAccidentalHits']
    """

    def __init__(self, transforms: Optional[Sequence[LogitTransform]] = None,
                 auxiliary_losses: Sequence[AuxiliaryLoss] = (), loss=None, metrics=None, batch_metrics=None,
                 loss_metrics=None, temperature: Optional[float] = None, num_hard_negatives: Optional[int] = None,
                 remove_accidental_hits: bool = False, name=None,
                 reverse_transforms: Optional[Sequence[LogitTransform]] = None, query_weight: float = 1.0,
                 reverse_weight: float = 1.0, in_batch_negatives: bool = True):
        super().__init__(name=name)
        if transforms is None:
            transforms = ([Temperature(temperature)] if temperature is not None else []) + [LogQCorrection()]
            transforms += [RemoveAccidentalHits()] if remove_accidental_hits else []
            transforms += [HardNegativeMining(num_hard_negatives)] if num_hard_negatives else []
        elif temperature is not None or num_hard_negatives or remove_accidental_hits:
            raise ValueError("give either transforms or tfrs.tasks.Retrieval's temperature / remove_accidental_hits "
                             "/ num_hard_negatives, not both: put those steps in the chain")
        self._loss = loss if loss is not None else keras.losses.CategoricalCrossentropy(
            from_logits=True, reduction=keras.losses.Reduction.SUM)
        self._factorized_metrics = list(metrics if isinstance(metrics, (list, tuple)) else [metrics] if metrics else [])
        self._batch_metrics = list(batch_metrics or [])
        self._loss_metrics = list(loss_metrics or [])
        self.transforms = list(transforms)
        self.reverse_transforms = None if reverse_transforms is None else list(reverse_transforms)
        self.auxiliary_losses = list(auxiliary_losses)
        self.query_weight, self.reverse_weight = query_weight, reverse_weight
        self.in_batch_negatives = in_batch_negatives

    @property
    def factorized_metrics(self):
        """The ``tfrs.metrics.Factorized`` metrics (as ``tfrs.tasks.Retrieval.factorized_metrics``)."""
        return self._factorized_metrics

    @factorized_metrics.setter
    def factorized_metrics(self, value):
        self._factorized_metrics = list(value if isinstance(value, (list, tuple)) else [value] if value else [])

    def direction(self, transforms, context: RetrievalContext, score_mask=None):
        """(logits, labels) of one direction: Q C^T through the chain, labels I (times event labels);
        and the (labels, logits) that batch metrics read: those before the first column-changing step.
        ``score_mask`` [B, N] (False: not scored) applies there too, as in ``tfrs.tasks.Retrieval``."""
        logits = tf.linalg.matmul(context.query_embeddings, context.candidate_embeddings, transpose_b=True)
        b, n = tf.shape(logits)[0], tf.shape(logits)[1]
        labels = tf.eye(b, n)
        if context.labels is not None:
            labels *= tf.cast(tf.reshape(context.labels, [-1, 1]), labels.dtype)
        if not self.in_batch_negatives:
            others = tf.pad(1.0 - tf.eye(b), [[0, 0], [0, n - b]]) > 0
            logits = tf.where(others, MIN_LOGIT, logits)
        metric_inputs = None
        for transform in list(transforms) + [None]:
            if metric_inputs is None and (transform is None or transform.changes_columns):
                if score_mask is not None:
                    logits = tf.where(score_mask, logits, MIN_LOGIT)
                metric_inputs = (labels, logits)
            if transform is not None:
                logits, labels = transform(logits, labels, context=context)
        return logits, labels, metric_inputs

    def call(self, query_embeddings, candidate_embeddings, sample_weight=None, candidate_sampling_probability=None,
             candidate_ids=None, compute_metrics=True, compute_batch_metrics=True, score_mask=None, features=None,
             query_ids=None, labels=None):
        """The loss of one batch, as ``tfrs.tasks.Retrieval.call`` (same arguments, same metrics), plus
        the context that transforms and auxiliary losses may read: ``features``, ``query_ids`` and the
        event ``labels`` (see ``RetrievalContext``)."""
        context = RetrievalContext(query_embeddings, candidate_embeddings, candidate_ids,
                                   candidate_sampling_probability, sample_weight, features, query_ids, labels)
        logits, labels, (metric_labels, metric_logits) = self.direction(self.transforms, context, score_mask)
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
