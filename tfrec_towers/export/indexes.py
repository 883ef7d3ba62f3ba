"""The three index types of an export, each ``index(queries [B, D]) -> (scores [B, k], ids [B, k])``
and ``index.filtered(queries, k, exclude_item_ids[, allowed_item_ids])`` (``index.py``, ``filtering.py``).

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

from tfrec_towers.export import filtering
from tfrec_towers.export.index import Index
from tfrec_towers.export.portable_index import (EXTRA_DEPTH, RECALL_TARGET, PortableIndex, linear_schedule,
                                                partition, tuned_params)
from tfrec_towers.export.top_k import SPLITS, split_top_k


__all__ = ["BruteForceIndex", "INDEXES", "ScannIndex", "ScannMissingError", "build_index", "index_class"]


class BruteForceIndex(Index):
    """Exact top-K: ``scores = q E^T`` over the whole catalog.

    E is stored transposed ([D, N]): ``q @ E_t`` streams the catalog once, as fast as NumPy's
    matrix-vector product (``q @ E^T`` was 1.1x slower at 1M x 64); large catalogs are ranked with
    ``split_top_k`` (several threads).

    Example:

    >>> import numpy as np
    >>> import tensorflow as tf
    >>> from tfrec_towers.export.indexes import BruteForceIndex
    >>> ids = np.array(["a", "b", "c"])
    >>> embeddings = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
    >>> scores, top = BruteForceIndex(ids, embeddings, k=2)(tf.constant([[1.0, 0.0]]))
    >>> print(scores.numpy().round(2), top.numpy())
    [[1.  0.6]] [[b'a' b'c']]
    """

    kind = "brute"
    MIN_SPLIT_ITEMS = 1 << 16  # below this one TopK is fast enough

    def __init__(self, ids: np.ndarray, embeddings: np.ndarray, k: int, name: str = "brute_force_index",
                 max_k: Optional[int] = None):
        super().__init__(ids, embeddings, k, name, max_k=max_k)
        self.split = len(ids) >= max(self.MIN_SPLIT_ITEMS, SPLITS * self.k)
        self.split_filtered = len(ids) >= max(self.MIN_SPLIT_ITEMS, SPLITS * self.max_k)
        self.embeddings_t = tf.Variable(np.ascontiguousarray(np.asarray(embeddings, np.float32).T),
                                        trainable=False, name="embeddings_t")
        self.ids = self.id_variable(ids)
        self.position_table(ids)

    def __call__(self, queries):
        scores = tf.matmul(queries, self.embeddings_t)
        best, idx = split_top_k(scores, self.k) if self.split else tf.math.top_k(scores, k=self.k)
        return best, tf.gather(self.ids, idx)

    def vectors(self, positions):
        flat = tf.reshape(positions, [-1])
        columns = tf.transpose(tf.gather(self.embeddings_t, flat, axis=1))  # [X, D]
        return tf.reshape(columns, tf.concat([tf.shape(positions, out_type=tf.int32), [-1]], axis=0))

    def _exclude_top_k(self, queries, k, excluded, distinct, requested):
        """Exact: the excluded items' scores are set to -inf (a scatter, O(M)) before the top-k."""
        scores = filtering.mask_positions(tf.matmul(queries, self.embeddings_t), excluded)
        best, idx = (split_top_k(scores, self.max_k) if self.split_filtered
                     else tf.math.top_k(scores, k=self.max_k))
        return filtering.finish(best, tf.cast(idx, tf.int64), k, self.max_k, ranked=True)


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
    """``tfrs.layers.factorized_top_k.ScaNN`` over the catalog, leaves and re-ranking tuned to its size.

    Example (needs the ``scann`` extra; ScaNN trains on the catalog, so it wants more than a few items):

    >>> import numpy as np
    >>> import tensorflow as tf
    >>> from tfrec_towers.export.indexes import ScannIndex
    >>> embeddings = np.random.default_rng(0).normal(size=(500, 8)).astype(np.float32)
    >>> ids = np.array([f"item{i}" for i in range(500)])
    >>> scores, top = ScannIndex(ids, embeddings, k=10)(tf.constant(embeddings[:2]))
    >>> print(scores.shape, top.shape)
    (2, 10) (2, 10)
    """

    kind = "scann"

    def __init__(self, ids: np.ndarray, embeddings: np.ndarray, k: int, num_partitions: Optional[int] = None,
                 num_probe: Optional[int] = None, num_rerank: Optional[int] = None, name: str = "scann_index",
                 max_k: Optional[int] = None):
        super().__init__(ids, embeddings, k, name, max_k=max_k)
        require_scann()
        import tensorflow_recommenders as tfrs  # after scann: TFRS builds its ScaNN layer only when scann imports

        n, k = len(ids), self.tuned_k
        embeddings = np.asarray(embeddings, np.float32)
        # ScaNN's asymmetric hashing (4 bits per 2 dimensions) ranks more coarsely than int8: at 1M x 64
        # (benchmarks/serving.py) it re-ranks 15k items and still loses ~1.3% of the top-100 that the
        # probed k-means partitions hold, so its probe count aims 1.5% higher than portable's.
        num_rerank = num_rerank or max(15 * k, 100)
        if num_probe:
            self.params = params = tuned_params(n, k, num_partitions, num_probe, num_rerank)
            self.schedule = linear_schedule(k, params["num_probe"], params["num_partitions"], k + EXTRA_DEPTH)
        else:
            self.params, _, _, self.schedule = partition(embeddings, k, num_partitions, None, num_rerank,
                                                         recall_target=min(1.0, RECALL_TARGET + 0.015))
            params = self.params
        self.layer = tfrs.layers.factorized_top_k.ScaNN(
            k=self.k, num_leaves=params["num_partitions"], num_leaves_to_search=params["num_probe"],
            num_reordering_candidates=params["num_rerank"], dimensions_per_block=2)
        self.layer.index(tf.constant(embeddings, tf.float32), tf.constant(np.asarray(ids, dtype=object).astype(bytes)))
        self.ids = self.layer._identifiers
        self.dim = embeddings.shape[1]
        self.position_table(ids)

    def __call__(self, queries):
        return self.layer(queries)

    def vectors(self, positions):
        """From the searcher's own float copy of the catalog (kept for its re-ranking): no second copy."""
        dataset = tf.reshape(self.layer._serialized_searcher.dataset, [-1, self.dim])
        return tf.gather(dataset, positions)

    #: The first pass fetches this many answers past max_k (at most the request's M): excluded items
    #: rarely reach the top unless they are the query's favourites, and ScaNN's cost grows with the
    #: answers it returns (1M x 64, batch 64: 34 ms for 100, 45 ms for 600).
    FIRST_PASS_MARGIN = 32

    def _exclude_top_k(self, queries, k, excluded, distinct, requested):
        """ScaNN's best ``fetch`` answers with the excluded ones dropped (a prefix of a longer fetch's).
        A first pass fetches max_k + min(M, ``FIRST_PASS_MARGIN``) from the unfiltered search's leaves;
        rows that need more get one more search (``_more_passes``)."""
        from scann.scann_ops.py import scann_ops

        searcher = scann_ops.searcher_from_module(self.layer._serialized_searcher)
        # sized by the request, not by ``distinct``: the search then runs while the IDs are looked up
        fetch = tf.minimum(self.num_items, self.max_k + tf.minimum(requested, self.FIRST_PASS_MARGIN))
        first, excluded_scores = self._search(searcher, queries, k, excluded, fetch)
        short = first[2] < tf.minimum(k, self.num_items - distinct)
        more = tf.reduce_any(short)
        deepest = self.schedule.deepest(self.params["num_probe"])
        if deepest < float("inf"):  # a row this deep needs more leaves than the first pass searched
            depth = filtering.answer_depth(k, first[0], first[2], excluded_scores)
            more = more | tf.reduce_any(depth > int(deepest))
        # One branch on the common path (no row short, none deeper): at batch 1 every op counts (~3 us).
        return tf.cond(more, lambda: self._more_passes(searcher, queries, k, excluded, distinct, first,
                                                       excluded_scores, short),
                       lambda: first)

    def _more_passes(self, searcher, queries, k, excluded, distinct, first, excluded_scores, short):
        """One more search for each row that needs it, fetching max_k + M. A row the first pass left
        short of k_b answers has its k_b-th answer at depth <= k_b + its M excluded items (all of them
        above it); another row's depth is known (``answer_depth``). Rows whose depth the unfiltered
        leaves serve (``DepthSchedule``) search them again; deeper rows search the leaves their depth
        needs, with a re-rank shortlist grown in proportion. Rows still short after it (a catalog whose
        searched leaves hold too few items) search every leaf."""
        depth = tf.where(short, k + distinct, filtering.answer_depth(k, first[0], first[2], excluded_scores))
        need = self.schedule.probe(depth)
        base = self.params["num_probe"]

        def again(answer, rows, leaves, pre_reorder):
            found, _ = self._search(searcher, tf.gather(queries, rows), tf.gather(k, rows), tf.gather(excluded, rows),
                                    self._over_fetch(tf.gather(distinct, rows)), leaves, pre_reorder)
            return filtering.scatter_rows(answer, rows, found)

        def rows_where(mask):
            return tf.cast(tf.where(mask)[:, 0], tf.int32)

        over = rows_where(short & (need <= base))  # the unfiltered leaves hold their answers: fetch deeper
        answer = tf.cond(tf.size(over) > 0, lambda: again(first, over, base, self.params["num_rerank"]), lambda: first)
        deep = rows_where(need > base)
        answer = tf.cond(tf.size(deep) > 0,
                         lambda: again(answer, deep, tf.reduce_max(tf.gather(need, deep)),
                                       self._pre_reorder(tf.reduce_max(tf.gather(depth, deep)))),
                         lambda: answer)
        left = rows_where(answer[2] < tf.minimum(k, self.num_items - distinct))
        return tf.cond(tf.size(left) > 0,
                       lambda: again(answer, left, self.params["num_partitions"], self.num_items),
                       lambda: answer)

    def _pre_reorder(self, depth):
        """Re-rank shortlist for answers ``depth`` deep: as many per answer as the unfiltered search."""
        return tf.cast(tf.math.ceil(self.params["num_rerank"] * tf.cast(depth, tf.float32) / self.tuned_k), tf.int32)

    def _over_fetch(self, distinct):
        """Answers to fetch so that every row keeps max_k after its exclusions: max_k + M (batch max)."""
        return tf.minimum(self.num_items, self.max_k + tf.reduce_max(distinct))

    def _search(self, searcher, queries, k, excluded, fetch, leaves=None, pre_reorder=None):
        """ScaNN's best ``fetch`` of the catalog from ``leaves`` (default: the unfiltered search's), the
        excluded ones dropped -> (``filtering.finish``'s answer, [B, fetch] the excluded ones' scores, -inf
        elsewhere)."""
        leaves = self.params["num_probe"] if leaves is None else leaves
        pre_reorder = self.params["num_rerank"] if pre_reorder is None else pre_reorder
        found = searcher.search_batched_parallel(
            queries, final_num_neighbors=fetch, leaves_to_search=leaves,
            pre_reorder_num_neighbors=tf.minimum(self.num_items, tf.maximum(pre_reorder, fetch)))
        positions, scores = tf.cast(found.indices, tf.int64), found.distances  # padding: NaN scores
        dropped = filtering.is_excluded(excluded, positions)
        # fetch >= max_k (max_k <= the catalog): the candidates are at least max_k wide
        answer = filtering.finish(tf.where(dropped | tf.math.is_nan(scores), filtering.NEG_INF, scores), positions,
                                  k, self.max_k, wide=True)
        return answer, tf.where(dropped, scores, filtering.NEG_INF)


#: index type (``--index``) -> its class, which names its type too (``Index.kind``). A dict literal: the CLI
#: offers the names without TensorFlow, from ``tfrec_towers.choices.INDEX_TYPES``, which reads them here.
INDEXES = {"scann": ScannIndex, "portable": PortableIndex, "brute": BruteForceIndex}
if any(cls.kind != kind for kind, cls in INDEXES.items()):
    raise RuntimeError("export.indexes.INDEXES: each class's kind must be its key")


def index_class(kind: str) -> type:
    """The class of index type ``kind``; an unknown type is a ValueError listing the known ones."""
    if kind not in INDEXES:
        raise ValueError(f"index type must be one of {tuple(INDEXES)}, got {kind!r}")
    return INDEXES[kind]


def build_index(kind: str, ids: np.ndarray, embeddings: np.ndarray, k: int, max_k: Optional[int] = None,
                **params) -> Index:
    """An index of type ``kind`` over (ids, embeddings); ``params`` override the tuned defaults. ``max_k``
    (default k): the widest answer of the filtered signatures; the index is tuned for max(k, max_k)."""
    cls = index_class(kind)
    allowed = [p for p in inspect.signature(cls.__init__).parameters
               if p not in ("self", "ids", "embeddings", "k", "name", "max_k")]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"the {kind} index takes {allowed or 'no parameters'}, got {unknown}")
    return cls(ids, embeddings, k, max_k=max_k, **params)
