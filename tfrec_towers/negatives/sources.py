"""The negatives of a batch, mixed by count: in-batch, catalog (uniform, popularity), per key
(exposure-unclicked, mined), each source a few lines here; see the modules named after each method."""
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfrec_towers.negatives.catalog import ItemCatalog, KeyedItems
from tfrec_towers.negatives.exposure import collect_unclicked
from tfrec_towers.negatives.mixed_negative_sampling import mixture_expected_counts


__all__ = ["Negatives", "build_negatives", "popularity_distribution"]


def popularity_distribution(catalog: ItemCatalog, counts: Dict[str, int], power: float = 0.75) -> np.ndarray:
    """q(y) ~ count(y)^power over the catalog (items never seen in training: never drawn). power 0.75
    is word2vec's: between uniform (0) and the raw popularity that in-batch negatives already give (1)."""
    weights = np.array([counts.get(i, 0) for i in catalog.ids], dtype=np.float64) ** power
    if weights.sum() <= 0:
        raise ValueError("popularity negatives: no catalog item has a training count")
    return weights / weights.sum()


class Negatives(keras.layers.Layer):
    """Draws a batch's extra negatives (catalog rows) and gives each column's expected count.

    Args:
      catalog: the item catalog (features of every item).
      in_batch: whether the other rows' positives are negatives.
      catalog_sources: (name, draws per batch, distribution over catalog rows) of catalog sources.
      keyed_sources: (KeyedItems, key feature, draws per row) of per-key sources.
    """

    def __init__(self, catalog: Optional[ItemCatalog], in_batch: bool = True,
                 catalog_sources: Sequence[Tuple[str, int, np.ndarray]] = (),
                 keyed_sources: Sequence[Tuple[KeyedItems, str, int]] = (), **kwargs):
        super().__init__(**kwargs)
        self.catalog, self.in_batch = catalog, in_batch
        self.catalog_sources = [(name, n, tf.constant(q, tf.float32)) for name, n, q in catalog_sources]
        self._keyed = list(keyed_sources)
        self._logits = [tf.math.log(tf.reshape(tf.cast(q, tf.float32), [1, -1])) for _, _, q in self.catalog_sources]

    def sample(self, features) -> Optional[tf.Tensor]:
        """Catalog rows of this batch's extra negatives: catalog sources, then per-key sources."""
        parts: List[tf.Tensor] = []
        for (_, n, _), logits in zip(self.catalog_sources, self._logits):
            parts.append(tf.reshape(tf.random.categorical(logits, n, dtype=tf.int64), [-1]))
        for keyed, key, n in self._keyed:
            if key not in features:
                raise KeyError(f"{keyed.name} negatives are keyed by '{key}', which is not in the batch")
            parts.append(keyed.sample(features[key], n))
        return tf.concat(parts, axis=0) if parts else None

    def expected_counts(self, candidate_ids: tf.Tensor, in_batch_expected: tf.Tensor) -> tf.Tensor:
        """Each column's expected count E[y] under the mixture (see mixed_negative_sampling)."""
        if not self.in_batch:
            in_batch_expected = tf.zeros_like(in_batch_expected)
        if not self.catalog_sources:
            return tf.maximum(in_batch_expected, 1e-8)
        rows = self.catalog.index_of(candidate_ids)
        return mixture_expected_counts(in_batch_expected, rows, [(n, q) for _, n, q in self.catalog_sources])


def build_negatives(config, stats, train_files, items_pattern: Optional[str], progress=print,
                    mine: Optional[Callable] = None) -> Optional[Negatives]:
    """The configured sources (None when only in-batch negatives are used). ``mine`` is the offline
    miner for ``negatives.mined`` (``tfrec_towers.mining.mine_hard_negatives``, a job that loads a
    previous run: passed in by training, so that negatives never import the jobs above them)."""
    n = config.negatives
    if not (n.uniform or n.popularity or n.exposure or n.mined) and n.in_batch:
        return None
    if not (n.uniform or n.popularity or n.exposure or n.mined):
        raise ValueError("negatives.in_batch is off and no other negative source is configured")
    if not items_pattern:
        raise ValueError("sampled negatives (negatives.uniform/popularity/exposure/mined) need the item catalog: "
                         "give the items files (--items)")
    catalog = ItemCatalog.from_files(config, items_pattern, progress)
    catalog_sources, keyed = [], []
    if n.uniform:
        catalog_sources.append(("uniform", n.uniform, np.full(catalog.size, 1.0 / catalog.size)))
    if n.popularity:
        catalog_sources.append(("popularity", n.popularity,
                                popularity_distribution(catalog, stats.item_counts, n.popularity_power)))
    if n.exposure:
        keyed.append((collect_unclicked(config, train_files, catalog, n.exposure_key, n.exposure_field,
                                        n.exposure_below, progress), n.exposure_key, n.exposure))
    if n.mined:
        if not n.mined_from:
            raise ValueError("negatives.mined needs negatives.mined_from: the run directory of a previous model")
        if mine is None:
            raise ValueError("negatives.mined needs a miner (train passes tfrec_towers.mining.mine_hard_negatives)")
        pattern = ",".join(train_files)
        keyed.append((mine(n.mined_from, pattern, items_pattern, catalog, n.mined_top_k, progress),
                      config.data.user_id, n.mined))
    return Negatives(catalog, n.in_batch, catalog_sources, keyed)
