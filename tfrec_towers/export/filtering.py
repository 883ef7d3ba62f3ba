"""Filtered top-k, the part every index type shares: per-row k, excluded and allowed item IDs.

A production request reads "the top k_b for this user, not the items in ``exclude_item_ids``, only
among ``allowed_item_ids``". The exported signatures (``retrieval_module.py``) answer it inside the
SavedModel, in stock TF ops, so real TF Serving answers it too. The index types implement
``Index.filtered`` with the helpers here:

* ``check_k``: k, a scalar or [B], checked in the graph (1 <= k_b <= max-k), as a [B] vector;
* ``catalog_positions``: item IDs -> positions in the index's storage (a ``StaticHashTable``; unknown IDs
  and the padding "" -> -1, ignored);
* ``sorted_exclusions`` and ``is_excluded``: per-row sorted positions and a membership test by binary
  search (``tf.searchsorted``), O(C log M) for C candidates and M exclusions;
* ``finish``: the dense answer, max-k wide, ``count`` = min(k_b, candidates left), the rest padded
  with id "" and score -inf;
* ``DepthSchedule``: for the approximate indexes, how many partitions to probe so that the best k_b
  items *after* exclusion are found as reliably as the unfiltered top-k (see ``portable_index.py``).
"""
from typing import Sequence, Tuple

import numpy as np
import tensorflow as tf

__all__ = ["DepthSchedule", "NEG_INF", "answer_depth", "catalog_positions", "check_allowed", "check_k", "deeper_probes",
           "finish", "is_excluded", "mask_positions", "scatter_rows", "sorted_exclusions"]


NEG_INF = float("-inf")


def _text(value: tf.Tensor) -> tf.Tensor:
    """A number as a string tensor: an ``Assert`` whose data are only strings and int32 runs unguarded
    (other dtypes wrap it in a conditional, a function call per request)."""
    return tf.strings.as_string(value)


def check_k(k: tf.Tensor, batch: tf.Tensor, max_k: int) -> tf.Tensor:
    """``k`` (a scalar or [B], any integer dtype) -> int32 [B]; an InvalidArgumentError naming ``k`` unless
    it is a scalar or has B values, each in [1, max_k]. One check, few ops: it runs on every request."""
    k = tf.cast(k, tf.int64)  # checked before any narrowing, so 2**32 + 1 is not taken for 1
    flat = tf.reshape(k, [-1])
    rank, size = tf.rank(k), tf.size(flat, out_type=tf.int32)
    low, high = tf.reduce_min(flat), tf.reduce_max(flat)
    # one Assert (each op costs ~3 us at batch 1): a scalar, or one value per row, each in [1, max_k]
    checks = [tf.debugging.Assert(
        (rank <= 1) & (tf.equal(rank, 0) | tf.equal(size, batch)) & (low >= 1) & (high <= max_k), [
            f"input `k` must be >= 1 and <= {max_k}, the export's maximum (export --max-k), as a scalar or a vector "
            "[B] (one k per row); got rank", rank, "with", size, "values for", batch, "rows, min", _text(low), "max",
            _text(high)])]
    with tf.control_dependencies(checks):
        return tf.cast(tf.broadcast_to(flat, [batch]), tf.int32)


def check_allowed(allowed: tf.Tensor, batch: tf.Tensor) -> tf.Tensor:
    """``allowed_item_ids`` [A] (one list for every row) or [B, A] -> [1, A] or [B, A]; InvalidArgumentError
    naming the input otherwise."""
    rank = tf.rank(allowed)
    checks = [
        tf.debugging.Assert(tf.logical_or(tf.equal(rank, 1), tf.equal(rank, 2)),
                            ["input `allowed_item_ids` must be [A] (shared) or [B, A] (per row); got rank", rank]),
        tf.debugging.Assert(tf.logical_or(tf.equal(rank, 1), tf.equal(tf.shape(allowed)[0], batch)), [
            "input `allowed_item_ids` of rank 2 must have one row per query row: got", tf.shape(allowed)[0],
            "rows for", batch]),
    ]
    with tf.control_dependencies(checks):
        return tf.reshape(allowed, [-1, tf.shape(allowed)[-1]])


def catalog_positions(table: tf.lookup.StaticHashTable, ids: tf.Tensor) -> tf.Tensor:
    """Positions (int64) of item IDs in an index's storage; -1 for unknown IDs and for the padding ""."""
    found = table.lookup(ids)
    return tf.where(tf.equal(ids, ""), tf.constant(-1, tf.int64), found)


def sorted_exclusions(positions: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """[B, M] excluded positions (-1: none) -> ([B, M + 1] sorted ascending, a sentinel -1 first, so that a
    row is never empty; [B] number of distinct excluded items)."""
    batch = tf.shape(positions)[0]
    padded = tf.concat([tf.fill([batch, 1], tf.constant(-1, tf.int64)), positions], axis=1)
    ordered = tf.sort(padded, axis=1)
    first = tf.concat([tf.ones([batch, 1], tf.bool), tf.not_equal(ordered[:, 1:], ordered[:, :-1])], axis=1)
    distinct = tf.reduce_sum(tf.cast(tf.logical_and(first, ordered >= 0), tf.int32), axis=1)
    return ordered, distinct


def is_excluded(ordered: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
    """Whether each of [B, C] candidate positions is among its row's ``sorted_exclusions`` (binary search)."""
    at = tf.searchsorted(ordered, positions, side="left", out_type=tf.int32)
    at = tf.minimum(at, tf.shape(ordered)[1] - 1)
    return tf.logical_and(tf.equal(tf.gather(ordered, at, batch_dims=1), positions), positions >= 0)


def mask_positions(scores: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
    """[B, N] scores with -inf at the [B, M] positions (-1: none) of each row: O(M), not O(N).

    ``scores`` must be a fresh tensor no other op reads (a matmul's output): it is updated in place
    (``InplaceUpdate``, a stock op, on a flat view), since ``tensor_scatter_nd_update`` copies it (256 MB,
    +20% of a 64 x 1M brute-force search). Views too large for its int32 index fall back to that copy.
    """
    where = tf.where(positions >= 0)  # [V, 2]: (row, slot)
    columns = tf.gather_nd(positions, where)
    num_items = tf.cast(tf.shape(scores, out_type=tf.int64)[1], tf.int64)
    size = tf.size(scores, out_type=tf.int64)

    def in_place():
        flat = tf.reshape(scores, [-1, 1])
        cells = tf.cast(where[:, 0] * num_items + columns, tf.int32)
        flat = tf.raw_ops.InplaceUpdate(x=flat, i=cells, v=tf.fill(tf.stack([tf.size(cells), 1]), NEG_INF))
        return tf.reshape(flat, tf.shape(scores))

    def copied():
        cells = tf.stack([where[:, 0], columns], axis=1)
        return tf.tensor_scatter_nd_update(scores, cells, tf.fill(tf.shape(cells)[:1], NEG_INF))

    return tf.cond(size < np.iinfo(np.int32).max, in_place, copied)


def kth_score(best: tf.Tensor, count: tf.Tensor, k: tf.Tensor) -> tf.Tensor:
    """Score of each row's k_b-th answer, -inf when fewer than k_b were found."""
    at = tf.maximum(k - 1, 0)
    kth = tf.gather(best, at[:, None], batch_dims=1)[:, 0]
    return tf.where(count >= k, kth, NEG_INF)


def finish(scores: tf.Tensor, positions: tf.Tensor, k: tf.Tensor, max_k: int, ranked: bool = False,
           wide: bool = False):
    """[B, C] candidate scores (-inf: not a candidate) and positions -> ([B, max_k] scores, [B, max_k]
    positions, [B] count): best first, ``count`` = min(k_b, candidates), past it score -inf and position -1.
    ``ranked``: the candidates are already [B, max_k] best first (no second top-k); ``wide``: C >= max_k
    (no padding: fewer ops, which at batch 1 cost more than the data)."""
    if wide:
        best, at = tf.math.top_k(scores, k=max_k)
        positions = tf.gather(positions, at, batch_dims=1)
    elif not ranked:
        width = tf.minimum(tf.shape(scores)[1], max_k)
        best, at = tf.math.top_k(scores, k=width)
        positions = tf.gather(positions, at, batch_dims=1)
        pad = [[0, 0], [0, max_k - width]]
        best = tf.pad(best, pad, constant_values=NEG_INF)
        positions = tf.pad(positions, pad, constant_values=-1)
    else:
        best = scores
    found = tf.reduce_sum(tf.cast(tf.math.is_finite(best), tf.int32), axis=1)
    count = tf.minimum(k, found)
    keep = tf.range(max_k)[None, :] < count[:, None]
    best = tf.ensure_shape(tf.where(keep, best, NEG_INF), [None, max_k])
    positions = tf.ensure_shape(tf.where(keep, positions, tf.constant(-1, positions.dtype)), [None, max_k])
    return best, positions, count


def answer_depth(k: tf.Tensor, best: tf.Tensor, count: tf.Tensor, excluded_scores: tf.Tensor) -> tf.Tensor:
    """[B] depth of each row's k_b-th answer in the unfiltered ranking: k_b + the excluded items scoring at
    least it (``excluded_scores`` [B, M], -inf: none)."""
    kth = kth_score(best, count, k)
    above = tf.logical_and(excluded_scores >= kth[:, None], tf.math.is_finite(excluded_scores))
    return k + tf.reduce_sum(tf.cast(above, tf.int32), axis=1)


def deeper_probes(schedule: "DepthSchedule", k: tf.Tensor, best: tf.Tensor, count: tf.Tensor,
                  excluded_scores: tf.Tensor, distinct: tf.Tensor, num_items: int) -> Tuple[tf.Tensor, tf.Tensor]:
    """([B] partitions each row needs, [B] its depth), from a first pass's answers (``best``, ``count``).

    Depth = k_b + the excluded items scoring at least the first pass's k_b-th answer (``excluded_scores``
    [B, M], -inf: none); that answer is at most the true one, so the depth is never underestimated. A row
    with fewer than min(k_b, items left) answers needs every partition.
    """
    depth = answer_depth(k, best, count, excluded_scores)
    short = count < tf.minimum(k, num_items - distinct)
    return tf.where(short, schedule.num_partitions, schedule.probe(depth)), depth


def scatter_rows(full: Sequence[tf.Tensor], rows: tf.Tensor, part: Sequence[tf.Tensor]):
    """Replace ``rows`` of each tensor of ``full`` by the matching tensor of ``part``."""
    return tuple(tf.tensor_scatter_nd_update(f, rows[:, None], p) for f, p in zip(full, part))


class DepthSchedule:
    """How many partitions an approximate index probes for a filtered row, by its *depth*.

    A row asking for k_b items after excluding m_b items that score above its k_b-th answer needs the
    catalog's exact top-(k_b + m_b), not its top-k_b: its answers lie that deep in the unfiltered ranking
    (m_b = 500 excluded items that are all among the user's top 500 put the answers at ranks 500-600).
    ``depths`` [G] ascending and ``probes`` [G] non-decreasing: a row of depth d probes the entry of the
    first grid depth >= d; past the last one, every partition (``num_partitions``).
    """

    def __init__(self, depths: Sequence[int], probes: Sequence[int], num_partitions: int):
        depths, probes = np.asarray(depths, np.int32), np.asarray(probes, np.int32)
        if depths.shape != probes.shape or np.any(np.diff(depths) <= 0) or np.any(np.diff(probes) < 0):
            raise ValueError(f"a depth schedule needs ascending depths and non-decreasing probes, got "
                             f"{depths.tolist()} / {probes.tolist()}")
        self.depths, self.probes, self.num_partitions = depths, np.minimum(probes, num_partitions), int(num_partitions)

    #: Depths up to this share past the first grid depth keep its probe count: a row whose answers sit
    #: a few places below the unfiltered top-k (a few excluded items among the top k, the common case)
    #: finds them in nearly the same partitions, and a second search for each such row cost the ScaNN
    #: index +25% at batch 64 with 500 random exclusions on 1M items (``benchmarks/serving.py``).
    SLACK = 0.1

    def table(self) -> np.ndarray:
        """Partitions to probe for every depth 0 .. last grid depth, then every partition: the first
        entry's up to ``SLACK`` past its depth, then interpolated between the grid's entries and rounded."""
        depths = np.arange(int(self.depths[-1]) + 1)
        grid, probes = self.depths, self.probes
        flat = int(grid[0] + self.SLACK * grid[0])
        if len(grid) > 1 and grid[0] < flat < grid[1]:
            grid, probes = np.insert(grid, 1, flat), np.insert(probes, 1, probes[0])
        probes = np.round(np.interp(depths, grid, probes)).astype(np.int32)
        return np.append(probes, self.num_partitions).astype(np.int32)

    def probe(self, depth: tf.Tensor) -> tf.Tensor:
        """[B] depths -> [B] int32 partitions to probe (``table``: one lookup)."""
        table = self.table()
        return tf.gather(tf.constant(table), tf.minimum(tf.cast(depth, tf.int32), len(table) - 1))

    def deepest(self, probes: int) -> float:
        """The largest depth this schedule serves with at most ``probes`` partitions (inf: every depth)."""
        table = self.table()
        return float(np.sum(table <= probes) - 1) if table[-1] > probes else float("inf")

    def to_dict(self) -> dict:
        return {"depths": self.depths.tolist(), "probes": self.probes.tolist()}
