"""Exact (brute-force) dot-product scoring of queries against a whole catalog, a chunk of queries at a time,
with items excluded per query: the one loop behind ``target_ranks`` (the rank of each query's true item)
and ``top_k`` (each query's best items). NumPy only (no TensorFlow).

Memory is ``chunk`` x catalog floats, whatever the number of queries (1024 x 40,981 x 4 B = 168 MB).
"""
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np

__all__ = ["MISSING", "scored_chunks", "target_ranks", "top_k"]


#: The rank of an eval target that is not in the catalog: never a hit, contributes 0 to NDCG and MRR.
MISSING = -1


def scored_chunks(query: np.ndarray, items: np.ndarray, exclude: Optional[Sequence[np.ndarray]] = None,
                  chunk: int = 1024, targets: Optional[np.ndarray] = None
                  ) -> Iterator[Tuple[int, int, np.ndarray, Optional[np.ndarray]]]:
    """(start, stop, scores, true) for consecutive chunks of ``query`` rows: ``scores`` [stop - start,
    len(items)] float32 dot products with every item, ``-inf`` at the item indices ``exclude[i]`` lists for
    row i; ``true`` each row's score of ``items[targets[i]]`` read before the exclusions (item 0 where
    ``targets[i] < 0``), None without ``targets``."""
    items_t = np.ascontiguousarray(items.T, dtype=np.float32)
    for start in range(0, len(query), chunk):
        stop = min(start + chunk, len(query))
        scores = np.asarray(query[start:stop], dtype=np.float32) @ items_t
        true = None
        if targets is not None:
            true = scores[np.arange(stop - start), np.maximum(targets[start:stop], 0)].copy()
        if exclude is not None:
            for row in range(stop - start):
                drop = exclude[start + row]
                if len(drop):
                    scores[row, drop] = -np.inf
        yield start, stop, scores, true


def target_ranks(query: np.ndarray, items: np.ndarray, targets: np.ndarray,
                 exclude: Optional[Sequence[np.ndarray]] = None, chunk: int = 2048) -> np.ndarray:
    """Rank of ``items[targets[i]]`` for ``query[i]`` (count of items scoring strictly higher).

    ``targets[i] < 0`` (true item not in the catalog) gives ``MISSING``.
    ``exclude[i]`` lists item indices to drop from row i's ranking (the target itself is kept).
    """
    ranks = np.empty(len(query), dtype=np.int64)
    for start, stop, scores, true in scored_chunks(query, items, exclude, chunk, targets):
        r = (scores > true[:, None]).sum(axis=1)
        ranks[start:stop] = np.where(targets[start:stop] >= 0, r, MISSING)
    return ranks


def top_k(query: np.ndarray, items: np.ndarray, k: int, exclude: Optional[Sequence[np.ndarray]] = None,
          chunk: int = 1024) -> np.ndarray:
    """Indices of the ``k`` best-scoring items (dot product) for each query row, best first.

    ``exclude[i]`` lists item indices scored -inf for row i. Memory is ``chunk`` x len(items) floats
    (1024 x 40,981 x 4 B = 168 MB), whatever the number of queries.
    """
    k = min(k, items.shape[0])
    out = np.empty((len(query), k), dtype=np.int64)
    for start, stop, scores, _ in scored_chunks(query, items, exclude, chunk):
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        out[start:stop] = np.take_along_axis(part, order, axis=1)
    return out
