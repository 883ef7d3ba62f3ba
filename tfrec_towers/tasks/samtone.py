"""SamToNe: same-tower negatives (Moiseev et al., "SamToNe: Improving Contrastive Loss for Dual Encoder
Retrieval Models with Same Tower Negatives", Findings of ACL 2023).

The in-batch softmax only compares a query with items, so nothing keeps two queries' embeddings apart:
the query space may cluster in a region unrelated to the item space. SamToNe adds the batch's other
queries to the denominator as negatives of the same tower:

    L_i = -log( e^{s(q_i,p_i)/tau} / ( sum_j e^{s(q_i,p_j)/tau} + sum_{j != i} e^{s(q_i,q_j)/tau} ) ),  s = cosine

which regularises the embedding spaces to overlap (the paper's analysis) and improves retrieval.
"""
import tensorflow as tf

from tfrec_towers.tasks.masks import same_entity
from tfrec_towers.tasks.similarity import cosine
from tfrec_towers.tasks.chain import MIN_LOGIT, LogitTransform, positive_temperature


__all__ = ["SameTowerNegatives"]


class SameTowerNegatives(LogitTransform):
    """Appends B columns s(q_i, q_j) / tau (cosines of the batch's queries) to the logits, labels 0.

    Masked (``MIN_LOGIT``): the diagonal (a query is not its own negative) and every same-entity pair,
    i.e. equal ``context.query_ids`` (when given) or identical query embeddings: the same user or the
    same query twice in a batch is a duplicate, not a negative, and must not be pushed away from itself.

    The item side is the same layer in the reverse direction (the task passes ``context.reversed()``,
    whose queries are the positive items), giving s(p_i, p_j). Later steps leave the appended columns
    alone. Put it after the temperature, logQ and accidental-hit steps, which apply to the item columns.

    Args:
      temperature: tau of the appended columns; use the chain's temperature so that both kinds of
        negative are on one scale, as in the paper (one tau for the whole softmax).

    Example (B = 2 rows: 2 query-query columns appended, labelled 0):

    >>> import tensorflow as tf
    >>> from tfrec_towers.tasks import RetrievalContext, SameTowerNegatives
    >>> queries = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    >>> positives = tf.constant([[0.6, 0.8], [0.0, 1.0]])  # row i's positive candidate
    >>> logits = tf.linalg.matmul(queries, positives, transpose_b=True)
    >>> extended, labels = SameTowerNegatives(0.5)(logits, tf.eye(2), context=RetrievalContext(queries, positives))
    >>> print(extended.shape, labels.numpy())
    (2, 4) [[1. 0. 0. 0.]
     [0. 1. 0. 0.]]
    """

    changes_columns = True

    def __init__(self, temperature: float, **kwargs):
        super().__init__(**kwargs)
        self.temperature = positive_temperature(temperature)

    def call(self, logits, labels, context):
        queries = context.query_embeddings
        extra = cosine(queries, queries) / self.temperature
        extra = tf.where(same_entity(queries, context.query_ids), tf.cast(MIN_LOGIT, extra.dtype), extra)
        b = tf.shape(queries)[0]
        return (tf.concat([logits, tf.cast(extra, logits.dtype)], 1),
                tf.concat([labels, tf.zeros([b, b], labels.dtype)], 1))
