"""The pieces a retrieval loss is composed of, as ``tfrs/layers/loss.py`` holds TFRS's: the batch context,
the ``LogitTransform`` and ``AuxiliaryLoss`` interfaces, and the basic steps of the chain (temperature,
logQ correction, accidental-hit removal). Method-specific steps live in their own files beside it.
"""
import dataclasses
from typing import Dict, Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras


__all__ = ["AuxiliaryLoss", "LogQCorrection", "LogitTransform", "MIN_LOGIT", "RemoveAccidentalHits", "RetrievalContext",
           "Temperature", "Untracked", "equal_ids", "positive_temperature"]


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

    def positive_mean(self, values: tf.Tensor) -> tf.Tensor:
        """Mean of per-row ``values`` over positive rows (label 1, or all rows without labels)."""
        if self.labels is None:
            return tf.reduce_mean(values)
        mask = tf.cast(self.labels > 0, values.dtype)
        return tf.reduce_sum(values * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)

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


def equal_ids(rows: tf.Tensor, columns: tf.Tensor) -> tf.Tensor:
    """[R, C] bool: rows[i] == columns[j]. IDs are mapped to small integers first (``tf.unique`` of
    both), so the R x C comparison compares int32s: comparing the strings themselves cost ~35 ms of a
    ~55 ms step at 1024 rows x 2048 columns (Gowalla profile), the unique pass ~0.1 ms. Exact."""
    r = tf.reshape(rows, [-1])
    _, index = tf.unique(tf.concat([r, tf.reshape(columns, [-1])], axis=0))
    n = tf.shape(r)[0]
    return tf.equal(index[:n, None], index[None, n:])


def positive_temperature(temperature: float) -> float:
    """``temperature``, or ValueError when it is not > 0 (logits are divided by it)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return temperature


class Temperature(LogitTransform):
    """logits / tau. With L2-normalised towers the logits are cosines in [-1, 1]; a small tau
    (0.05-0.3) sharpens the softmax enough to separate the positive from hundreds of negatives.

    Example:

    >>> import tensorflow as tf
    >>> from tfrec_towers.tasks import RetrievalContext, Temperature
    >>> queries = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    >>> positives = tf.constant([[0.6, 0.8], [0.0, 1.0]])  # row i's positive candidate
    >>> logits = tf.linalg.matmul(queries, positives, transpose_b=True)
    >>> scaled, labels = Temperature(0.5)(logits, tf.eye(2), context=RetrievalContext(queries, positives))
    >>> print(scaled.numpy().round(2))
    [[1.2 0. ]
     [1.6 2. ]]
    """

    def __init__(self, temperature: float, **kwargs):
        super().__init__(**kwargs)
        self.temperature = positive_temperature(temperature)

    def call(self, logits, labels, context):
        return logits / self.temperature, labels


class LogQCorrection(LogitTransform):
    """logits_ij - log E_j (Yi et al. 2019): in-batch negatives are drawn with the items' frequency q,
    so without the correction popular items are over-penalised. No-op when E is not given.

    E_j is column j's expected count in the batch (B q_j in-batch, or the mixture's count with sampled
    negatives), which exceeds 1 for popular items: it is floored at 1e-12 but never capped. Capping it
    at 1, as ``tfrs.layers.loss.SamplingProbablityCorrection`` does (it expects a probability), would
    give every item with B q > 1 the same correction, so the popular items, the ones the correction is
    for, would no longer be told apart. A row-constant shift (log B) leaves the softmax unchanged.

    Example (column j's expected count E_j in the batch: 0.5 and 0.25):

    >>> import tensorflow as tf
    >>> from tfrec_towers.tasks import RetrievalContext, LogQCorrection
    >>> queries = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    >>> positives = tf.constant([[0.6, 0.8], [0.0, 1.0]])  # row i's positive candidate
    >>> context = RetrievalContext(queries, positives, candidate_sampling_probability=tf.constant([0.5, 0.25]))
    >>> logits = tf.linalg.matmul(queries, positives, transpose_b=True)
    >>> corrected, labels = LogQCorrection()(logits, tf.eye(2), context=context)
    >>> print(corrected.numpy().round(2))
    [[1.29 1.39]
     [1.49 2.39]]
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

    Example (both rows' positives are item "a": neither row's other column is a negative):

    >>> import tensorflow as tf
    >>> from tfrec_towers.tasks import RetrievalContext, RemoveAccidentalHits
    >>> queries = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    >>> positives = tf.constant([[0.6, 0.8], [0.0, 1.0]])  # row i's positive candidate
    >>> from tfrec_towers.tasks.chain import MIN_LOGIT
    >>> context = RetrievalContext(queries, positives, candidate_ids=tf.constant(["a", "a"]))
    >>> logits = tf.linalg.matmul(queries, positives, transpose_b=True)
    >>> masked, labels = RemoveAccidentalHits()(logits, tf.eye(2), context=context)
    >>> print(masked.numpy() == MIN_LOGIT)
    [[False  True]
     [ True False]]
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
        same = equal_ids(ids[:b], ids) & ~tf.cast(tf.eye(b, n), tf.bool)
        same = tf.pad(same, [[0, 0], [0, tf.shape(logits)[1] - n]])
        return tf.where(same, MIN_LOGIT, logits), labels
