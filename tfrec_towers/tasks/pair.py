"""PAIR's passage-centric term (Ren et al., "PAIR: Leveraging Passage-Centric Similarity Relation for
Improving Dense Passage Retrieval", Findings of ACL 2021).

The query-centric softmax says "q_i is closer to p_i than to other items". PAIR adds the
passage-centric relation "p_i is closer to its query q_i than to other items p_j": with the item as
anchor, its query as positive and the batch's other positive items (same tower) as negatives,

    L_p,i = -log( e^{s(p_i,q_i)/tau} / ( e^{s(p_i,q_i)/tau} + sum_{j != i} e^{s(p_i,p_j)/tau} ) ),  s = cosine

and trains L = (1 - alpha) L_q + alpha L_p, alpha = 0.1.
"""
import tensorflow as tf

from tfrec_towers.tasks.chain import AuxiliaryLoss, positive_temperature
from tfrec_towers.tasks.masks import same_entity
from tfrec_towers.tasks.reduction import anchor_softmax_loss, check_reduction, reduce_rows, row_weights
from tfrec_towers.tasks.similarity import cosine, row_cosine


__all__ = ["PassageCentricLoss"]


class PassageCentricLoss(AuxiliaryLoss):
    """L_p over the batch's B (query, positive item) rows; the task adds ``weight * L_p``.

    Negatives p_j that are the same item as the anchor (equal ``candidate_ids[:B]``, when given, or
    identical embeddings) are excluded: a duplicate is not a negative. Rows are weighted by
    ``sample_weight`` (and rows whose event label is 0, which have no positive pair, get weight 0).

    Args:
      temperature: tau; the paper's softmax shares the query-centric loss's scale, so use the chain's.
      weight: alpha, 0.1 as in the paper. Only ``alpha * L_p`` is added here: the (1 - alpha) factor of
        L_q is the task's ``query_weight`` (set it to 1 - alpha to reproduce the paper exactly).
      reduction: "sum" over rows (the scale of the TFRS task's summed cross-entropy) or "mean"
        (weighted mean over rows).
    """

    def __init__(self, temperature: float, weight: float = 0.1, reduction: str = "sum", **kwargs):
        super().__init__(weight=weight, **kwargs)
        self.temperature, self.reduction = positive_temperature(temperature), check_reduction(reduction)

    def call(self, context):
        items, queries = context.positive_embeddings, context.query_embeddings
        ids = None if context.candidate_ids is None else context.candidate_ids[:tf.shape(queries)[0]]
        per_row = anchor_softmax_loss(row_cosine(items, queries) / self.temperature,
                                      cosine(items, items) / self.temperature, same_entity(items, ids))
        return reduce_rows(per_row, row_weights(context), self.reduction)
