"""What every index type of an export shares, in the spirit of ``tfrs.layers.factorized_top_k.TopK``
and keras-rs's retrieval layers: a fixed catalog of (ids, embeddings), ``k``, the parameters it was
built with, and two call contracts, best first:

* ``index(queries [B, D]) -> (scores [B, k], ids [B, k])``: the top k of the whole catalog;
* ``index.filtered(queries, k [B], exclude_item_ids [B, M], allowed_item_ids=None) -> (scores [B, K],
  ids [B, K], count [B])``: the top k_b of each row after its exclusions, among its allowed items when
  given, K = ``max_k`` wide, padded past ``count`` with id "" and score -inf (``filtering.py``).
"""
from typing import ClassVar, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from tfrec_towers.export import filtering


__all__ = ["Index"]


class Index(tf.Module):
    """Base of the index types: checks the catalog once and holds ``k`` (at most the catalog size),
    ``max_k`` (the widest filtered answer, at most the catalog size), ``params`` (the tuned or given
    build parameters, reported in the export's metadata) and the ID -> position table of the filters.

    Subclasses set ``self.ids`` (IDs in storage order), call ``self.position_table(ids)`` and implement
    ``__call__``, ``_exclude_top_k`` and ``vectors``.
    """

    kind: ClassVar[str] = ""

    def __init__(self, ids: np.ndarray, embeddings: np.ndarray, k: int, name: str, max_k: Optional[int] = None):
        super().__init__(name=name)
        n = len(ids)
        if n == 0:
            raise ValueError("cannot build an index over an empty catalog")
        shape = np.shape(embeddings)
        if len(shape) != 2 or shape[0] != n:
            raise ValueError(f"the catalog's embeddings must be [{n}, D] for its {n} ids, got shape {shape}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if max_k is not None and max_k < 1:
            raise ValueError(f"max_k must be at least 1, got {max_k}")
        self.k = min(int(k), n)
        self.max_k = min(int(max_k or k), n)
        self.num_items = n
        self.params: Dict = {}
        self.schedule: Optional[filtering.DepthSchedule] = None  # approximate indexes: probes by depth

    @property
    def tuned_k(self) -> int:
        """The k the index is tuned for: the widest answer it gives (``k`` or ``max_k``)."""
        return max(self.k, self.max_k)

    @staticmethod
    def id_variable(ids: np.ndarray, name: str = "ids") -> tf.Variable:
        """The catalog's IDs as a string variable (saved with the index)."""
        return tf.Variable(np.asarray(ids, dtype=object).astype(bytes), trainable=False, name=name)

    def position_table(self, ids: np.ndarray) -> None:
        """``self.positions``: item ID -> its position in ``ids`` (the storage order), -1 if unknown.

        A stock-op ``StaticHashTable`` (HashTableV2, LookupTableFindV2), initialized when the SavedModel
        loads. IDs must be unique: a table cannot map one ID to two positions.
        """
        keys = np.asarray(ids, dtype=object).astype(bytes)
        unique, counts = np.unique(keys, return_counts=True)
        if len(unique) != len(keys):
            raise ValueError(f"the catalog's ids must be unique; {unique[counts > 1][0].decode(errors='replace')!r} "
                             f"appears {counts.max()} times")
        self.positions = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.range(len(keys), dtype=tf.int64)),
            default_value=-1)

    def __call__(self, queries: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        raise NotImplementedError

    # --- filtered top-k ---------------------------------------------------------------------------
    def vectors(self, positions: tf.Tensor) -> tf.Tensor:
        """Float embeddings [..., D] of items at storage ``positions`` (>= 0)."""
        raise NotImplementedError

    def _exclude_top_k(self, queries: tf.Tensor, k: tf.Tensor, excluded: tf.Tensor, distinct: tf.Tensor,
                       requested: tf.Tensor):
        """The filtered top-k without an allowed set: ([B, K] scores, [B, K] positions, [B] count);
        ``excluded``/``distinct`` are ``filtering.sorted_exclusions`` of the row's excluded positions,
        ``requested`` the request's M (>= every row's ``distinct``, known before the ID lookup: a search
        sized by it need not wait for the lookup)."""
        raise NotImplementedError

    def filtered(self, queries: tf.Tensor, k: tf.Tensor, exclude_item_ids: tf.Tensor,
                 allowed_item_ids: Optional[tf.Tensor] = None):
        """[B, D] queries, k (scalar or [B]), [B, M] excluded IDs and optionally the allowed IDs ([A] or
        [B, A]) -> ([B, max_k] scores, [B, max_k] ids, [B] count); see the module docstring."""
        batch = tf.shape(queries)[0]
        k = filtering.check_k(k, batch, self.max_k)
        excluded, distinct = filtering.sorted_exclusions(
            filtering.catalog_positions(self.positions, exclude_item_ids))
        if allowed_item_ids is None:
            scores, positions, count = self._exclude_top_k(queries, k, excluded, distinct,
                                                           tf.shape(exclude_item_ids)[1])
        else:
            allowed = filtering.check_allowed(allowed_item_ids, batch)
            scores, positions, count = self._allowed_top_k(queries, k, excluded, allowed)
        ids = tf.where(positions >= 0, tf.gather(self.ids, tf.maximum(positions, 0)), "")
        return scores, ids, count

    def _allowed_top_k(self, queries, k, excluded, allowed_ids):
        """Exact scores of the allowed items ([1, A] shared or [B, A]): unknown, duplicate and excluded
        ones dropped. Exact for every index type, at O(A D) per row (the allowed set is scored, not searched)."""
        positions = tf.sort(filtering.catalog_positions(self.positions, allowed_ids), axis=1)  # [B' , A]
        rows = tf.shape(positions)[0]
        repeat = tf.concat([tf.zeros([rows, 1], tf.bool), tf.equal(positions[:, 1:], positions[:, :-1])], axis=1)
        vectors = self.vectors(tf.maximum(positions, 0))  # [B', A, D]
        scores = tf.matmul(queries[:, None, :], vectors, transpose_b=True)[:, 0, :]  # [B, A] (B' = 1 broadcasts)
        positions = tf.broadcast_to(positions, tf.shape(scores, out_type=tf.int32))
        repeat = tf.broadcast_to(repeat, tf.shape(scores, out_type=tf.int32))
        drop = repeat | (positions < 0) | filtering.is_excluded(excluded, positions)
        return filtering.finish(tf.where(drop, filtering.NEG_INF, scores), positions, k, self.max_k)
