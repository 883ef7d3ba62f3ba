"""The three index types of an export, each ``index(queries [B, D]) -> (scores [B, k], ids [B, k])``.

* ``brute``: exact scores against every item (stock ops; best up to ~1e5-1e6 items per query batch);
* ``portable``: IVF + int8 + exact re-rank in stock ops (``portable_index.py``), loadable by stock
  TF Serving;
* ``scann``: TFRS's ScaNN layer (tree + asymmetric hashing + re-rank), ScaNN's custom ops: needs a
  ScaNN-enabled TF Serving or a Python server that imports ``scann`` (TFRS issue #182).
ScaNN gets the same catalog tuning as ``portable`` (leaves ~ sqrt(N), probe count ``tune_probe``).
"""
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from tfrec_towers.export.portable_index import RECALL_TARGET, PortableIndex, partition, tuned_params
from tfrec_towers.export.top_k import SPLITS, split_top_k

INDEX_TYPES = ("scann", "portable", "brute")


class BruteForceIndex(tf.Module):
    """Exact top-K: ``scores = q E^T`` over the whole catalog.

    E is stored transposed ([D, N]): ``q @ E_t`` streams the catalog once, as fast as NumPy's
    matrix-vector product (``q @ E^T`` was 1.1x slower at 1M x 64); large catalogs are ranked with
    ``split_top_k`` (several threads).
    """

    MIN_SPLIT_ITEMS = 1 << 16  # below this one TopK is fast enough

    def __init__(self, ids: np.ndarray, embeddings: np.ndarray, k: int, name: str = "brute_force_index"):
        super().__init__(name=name)
        if len(ids) == 0:
            raise ValueError("cannot build an index over an empty catalog")
        self.k = min(k, len(ids))
        self.params: Dict = {}
        self.split = len(ids) >= max(self.MIN_SPLIT_ITEMS, SPLITS * self.k)
        self.embeddings_t = tf.Variable(np.ascontiguousarray(np.asarray(embeddings, np.float32).T),
                                        trainable=False, name="embeddings_t")
        self.ids = tf.Variable(np.asarray(ids, dtype=object).astype(bytes), trainable=False, name="ids")

    def __call__(self, queries):
        scores = tf.matmul(queries, self.embeddings_t)
        best, idx = split_top_k(scores, self.k) if self.split else tf.math.top_k(scores, k=self.k)
        return best, tf.gather(self.ids, idx)


SCANN_EXTRA = "pip install 'tfrec_towers[scann]'"


class ScannMissingError(ImportError, ValueError):
    """The ``scann`` index without the ``scann`` extra (a ValueError too, so the CLI prints one line)."""


def require_scann():
    """``import scann`` (registers its TF ops), or fail naming the extra that brings it."""
    try:
        import scann  # noqa: F401
    except ImportError as e:
        raise ScannMissingError(f"index 'scann' needs ScaNN, an optional extra that is not installed ({e}): "
                                f"{SCANN_EXTRA} (it brings TensorFlow 2.20, which scann 1.4.2's ops need), "
                                "or use index 'portable'") from e


class ScannIndex(tf.Module):
    """``tfrs.layers.factorized_top_k.ScaNN`` over the catalog, leaves and re-ranking tuned to its size."""

    def __init__(self, ids: np.ndarray, embeddings: np.ndarray, k: int, num_partitions: Optional[int] = None,
                 num_probe: Optional[int] = None, num_rerank: Optional[int] = None, name: str = "scann_index"):
        super().__init__(name=name)
        require_scann()
        import tensorflow_recommenders as tfrs

        n = len(ids)
        if n == 0:
            raise ValueError("cannot build an index over an empty catalog")
        self.k = min(k, n)
        embeddings = np.asarray(embeddings, np.float32)
        # ScaNN's asymmetric hashing (4 bits per 2 dimensions) ranks more coarsely than int8: at 1M x 64
        # (benchmarks/serving.py) it re-ranks 15k items and still loses ~1.3% of the top-100 that the
        # probed k-means partitions hold, so its probe count aims 1.5% higher than portable's.
        num_rerank = num_rerank or max(15 * self.k, 100)
        self.params = params = (tuned_params(n, self.k, num_partitions, num_probe, num_rerank) if num_probe else
                                partition(embeddings, self.k, num_partitions, None, num_rerank,
                                          recall_target=min(1.0, RECALL_TARGET + 0.015))[0])
        self.layer = tfrs.layers.factorized_top_k.ScaNN(
            k=self.k, num_leaves=params["num_partitions"], num_leaves_to_search=params["num_probe"],
            num_reordering_candidates=params["num_rerank"], dimensions_per_block=2)
        self.layer.index(tf.constant(embeddings, tf.float32), tf.constant(np.asarray(ids, dtype=object).astype(bytes)))

    def __call__(self, queries):
        return self.layer(queries)


def build_index(kind: str, ids: np.ndarray, embeddings: np.ndarray, k: int, **params) -> tf.Module:
    """An index of type ``kind`` over (ids, embeddings); ``params`` override the tuned defaults."""
    if kind == "brute":
        if params:
            raise ValueError(f"the brute index takes no parameters, got {sorted(params)}")
        return BruteForceIndex(ids, embeddings, k)
    if kind == "portable":
        return PortableIndex(ids, embeddings, k, **params)
    if kind == "scann":
        return ScannIndex(ids, embeddings, k, **params)
    raise ValueError(f"index type must be one of {INDEX_TYPES}, got {kind!r}")
