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

import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras


@dataclasses.dataclass
class RetrievalContext:
    """What a transform or auxiliary loss may need besides logits and labels."""

    query_embeddings: tf.Tensor
    candidate_embeddings: tf.Tensor
    candidate_ids: Optional[tf.Tensor] = None
    candidate_sampling_probability: Optional[tf.Tensor] = None
    sample_weight: Optional[tf.Tensor] = None
    features: Optional[Dict[str, tf.Tensor]] = None


class LogitTransform(keras.layers.Layer):
    """A step of the chain: ``(logits, labels, context) -> (logits, labels)``."""

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
    """logits_ij - log q_j (Yi et al. 2019): in-batch negatives are drawn with the items' frequency q,
    so without the correction popular items are over-penalised. No-op when q is not given."""

    def call(self, logits, labels, context):
        if context.candidate_sampling_probability is None:
            return logits, labels
        return tfrs.layers.loss.SamplingProbablityCorrection()(logits, context.candidate_sampling_probability), labels


class RemoveAccidentalHits(LogitTransform):
    """Columns whose candidate ID equals row i's positive are not negatives for row i (logit -> -inf)."""

    def call(self, logits, labels, context):
        if context.candidate_ids is None:
            raise ValueError("removing accidental hits needs candidate ids")
        return tfrs.layers.loss.RemoveAccidentalHits()(labels, logits, context.candidate_ids), labels


class Retrieval(tfrs.tasks.Retrieval):
    """``tfrs.tasks.Retrieval`` whose loss is computed through ``transforms`` and ``auxiliary_losses``.

    Args:
      transforms: LogitTransforms applied in order to the [queries, candidates] logits.
      auxiliary_losses: AuxiliaryLoss layers whose weighted values are added to the loss.
      loss, metrics, batch_metrics, loss_metrics, name: as in ``tfrs.tasks.Retrieval``.
    """

    def __init__(self, transforms: Sequence[LogitTransform] = (), auxiliary_losses: Sequence[AuxiliaryLoss] = (),
                 loss=None, metrics=None, batch_metrics=None, loss_metrics=None, name=None):
        super().__init__(loss=loss, metrics=metrics, batch_metrics=batch_metrics, loss_metrics=loss_metrics,
                         name=name)
        self.transforms = list(transforms)
        self.auxiliary_losses = list(auxiliary_losses)

    def call(self, query_embeddings, candidate_embeddings, sample_weight=None, candidate_sampling_probability=None,
             candidate_ids=None, compute_metrics=True, compute_batch_metrics=True, features=None):
        context = RetrievalContext(query_embeddings, candidate_embeddings, candidate_ids,
                                   candidate_sampling_probability, sample_weight, features)
        logits = tf.linalg.matmul(query_embeddings, candidate_embeddings, transpose_b=True)
        labels = tf.eye(tf.shape(logits)[0], tf.shape(logits)[1])
        for transform in self.transforms:
            logits, labels = transform(logits, labels, context=context)
        loss = self._loss(y_true=labels, y_pred=logits, sample_weight=sample_weight)
        for aux in self.auxiliary_losses:
            loss += aux.weight * aux(context)

        updates = [metric.update_state(loss) for metric in self._loss_metrics]
        if compute_metrics:
            updates += [metric.update_state(query_embeddings, candidate_embeddings[:tf.shape(query_embeddings)[0]],
                                            true_candidate_ids=candidate_ids, sample_weight=sample_weight)
                        for metric in self._factorized_metrics]
        if compute_batch_metrics:
            updates += [metric.update_state(labels, logits, sample_weight=sample_weight)
                        for metric in self._batch_metrics]
        with tf.control_dependencies(updates):
            return tf.identity(loss)
