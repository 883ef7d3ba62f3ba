"""The three index types of an export, each ``index(queries [B, D]) -> (scores [B, k], ids [B, k])``.

* ``brute``: exact scores against every item (stock ops; best up to ~1e5-1e6 items per query batch);
* ``portable``: IVF + int8 + exact re-rank in stock ops (``portable_index.py``), loadable by stock
  TF Serving;
* ``scann``: TFRS's ScaNN layer (tree + asymmetric hashing + re-rank), ScaNN's custom ops: needs a
  ScaNN-enabled TF Serving or a Python server that imports ``scann`` (TFRS issue #182).
ScaNN gets the same catalog tuning as ``portable`` (leaves ~ sqrt(N), probe count ``tune_probe``).
"""
import inspect
from typing import Optional

import numpy as np
import tensorflow as tf

from tfrec_towers.export.index import Index
from tfrec_towers.export.layout import INDEX_TYPES
from tfrec_towers.export.portable_index import RECALL_TARGET, PortableIndex, partition, tuned_params
from tfrec_towers.export.top_k import SPLITS, split_top_k


class BruteForceIndex(Index):
    """Exact top-K: ``scores = q E^T`` over the whole catalog.

    E is stored transposed ([D, N]): ``q @ E_t`` streams the catalog once, as fast as NumPy's
    matrix-vector product (``q @ E^T`` was 1.1x slower at 1M x 64); large catalogs are ranked with
    ``split_top_k`` (several threads).
    """

    kind = "brute"
    MIN_SPLIT_ITEMS = 1 << 16  # below this one TopK is fast enough

    def __init__(self, ids: np.ndarray, embeddings: np.ndarray, k: int, name: str = "brute_force_index"):
        super().__init__(ids, embeddings, k, name)
        self.split = len(ids) >= max(self.MIN_SPLIT_ITEMS, SPLITS * self.k)
        self.embeddings_t = tf.Variable(np.ascontiguousarray(np.asarray(embeddings, np.float32).T),
                                        trainable=False, name="embeddings_t")
        self.ids = self.id_variable(ids)

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


class ScannIndex(Index):
    """``tfrs.layers.factorized_top_k.ScaNN`` over the catalog, leaves and re-ranking tuned to its size."""

    kind = "scann"

    def __init__(self, ids: np.ndarray, embeddings: np.ndarray, k: int, num_partitions: Optional[int] = None,
                 num_probe: Optional[int] = None, num_rerank: Optional[int] = None, name: str = "scann_index"):
        super().__init__(ids, embeddings, k, name)
        require_scann()
        import tensorflow_recommenders as tfrs  # after scann: TFRS builds its ScaNN layer only when scann imports

        n = len(ids)
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


#: index type (``--index``) -> its class.
INDEXES = {cls.kind: cls for cls in (ScannIndex, PortableIndex, BruteForceIndex)}
if tuple(INDEXES) != INDEX_TYPES:  # layout names them without TensorFlow (the CLI's --index): one list
    raise RuntimeError(f"export.layout.INDEX_TYPES {INDEX_TYPES} != the index classes' kinds {tuple(INDEXES)}")


def index_class(kind: str) -> type:
    """The class of index type ``kind``; an unknown type is a ValueError listing the known ones."""
    if kind not in INDEXES:
        raise ValueError(f"index type must be one of {INDEX_TYPES}, got {kind!r}")
    return INDEXES[kind]


def build_index(kind: str, ids: np.ndarray, embeddings: np.ndarray, k: int, **params) -> Index:
    """An index of type ``kind`` over (ids, embeddings); ``params`` override the tuned defaults."""
    cls = index_class(kind)
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "ids", "embeddings", "k", "name")]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"the {kind} index takes {allowed or 'no parameters'}, got {unknown}")
    return cls(ids, embeddings, k, **params)
