"""In-batch hard-negative mining, as ``tfrs.tasks.Retrieval(num_hard_negatives=k)``: each row keeps its
positive and its k highest-scoring negatives; the softmax then spends its gradient on the negatives the
model currently confuses with the positive, not on the easy bulk. (Offline mining from a previous
run's index is ``tfrec_towers.negatives.hard_negative_mining.mine_hard_negatives``.)
"""
import tensorflow_recommenders as tfrs

from tfrec_towers.tasks.chain import LogitTransform


__all__ = ["HardNegativeMining"]


class HardNegativeMining(LogitTransform):
    """Keep each row's positive and its ``k`` largest negative logits (columns shrink to k + 1)."""

    changes_columns = True

    def __init__(self, k: int, **kwargs):
        super().__init__(**kwargs)
        if k < 1:
            raise ValueError(f"hard negatives: k must be >= 1, got {k}")
        self.k = k
        self.mining = tfrs.layers.loss.HardNegativeMining(k)

    def call(self, logits, labels, context):
        return self.mining(logits, labels)
