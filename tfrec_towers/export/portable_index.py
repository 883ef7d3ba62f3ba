"""A top-K index made of stock TensorFlow ops only, so that stock TF Serving can load it.

Inverted-file search with int8 scoring and exact re-ranking (the IVF + quantisation + reorder
recipe of ScaNN/FAISS, written in plain TF ops):

1. build: k-means splits the N item embeddings into P partitions (P ~ sqrt(N), the usual IVF choice
   that balances centroid scoring against partition scanning); items are stored sorted by partition;
   each dimension is quantised symmetrically to int8, ``c_id = round(x_id / s_d)``, ``s_d = max_i |x_id| / 127``;
2. query q: score the centroids, probe the ``num_probe`` best partitions (unless given, the fewest
   that hold 96% of the exact top-k of sample catalog items: ``tune_probe``);
3. approximate scores of the probed items ``sum_d (q_d s_d) c_id`` (the scale folded into the query);
4. exact float32 scores ``q . x_i`` of the ``num_rerank`` best approximate items, top-k of those.

Every step is a stock op (MatMul, TopKV2, RaggedRange, GatherV2, Cast, While), unlike ScaNN's custom ops.
"""
import math
from typing import Optional

import numpy as np
import tensorflow as tf

from tfrec_towers.export.index import Index

RECALL_TARGET = 0.96  # of the tuned probe count: the benchmark's 0.95 plus the estimate's sampling error


def tuned_params(num_items: int, k: int, num_partitions: Optional[int] = None, num_probe: Optional[int] = None,
                 num_rerank: Optional[int] = None) -> dict:
    """Partitioning tuned to the catalog unless given: P = round(sqrt(N)); re-rank max(4k, 100) items;
    probe at least enough partitions to hold ~2x the re-rank shortlist (``tune_probe`` raises it to the
    recall target). Values are clamped to what the catalog allows (P <= N, probe <= P, k <= re-rank <= N)."""
    p = num_partitions or max(1, int(round(math.sqrt(num_items))))
    p = min(p, num_items)
    rerank = max(k, min(num_rerank or max(4 * k, 100), num_items))
    probe = num_probe or math.ceil(2 * rerank * p / num_items)
    return {"num_partitions": p, "num_probe": min(probe, p), "num_rerank": rerank}


def tune_probe(embeddings: np.ndarray, centroids: np.ndarray, assign: np.ndarray, k: int,
               recall_target: float = RECALL_TARGET, sample: int = 500, seed: int = 0) -> int:
    """Smallest number of probed partitions whose items hold ``recall_target`` of the exact top-k.

    ``sample`` catalog items stand in for queries (their own item left out of their top-k): for each
    exact neighbour j of query q, r_j = rank of j's partition among q's centroid scores; recall(probe)
    = mean[r_j < probe], so probe = the ``recall_target`` quantile of r, plus one. How many partitions
    must be probed depends on how clustered the embeddings are (0.2% or 18% of them for two 1M-item
    catalogs in ``benchmarks/serving.py``), so a fixed fraction either wastes time or loses recall.
    """
    n = len(embeddings)
    queries = np.random.default_rng(seed).choice(n, min(sample, n), replace=False)
    q = embeddings[queries]
    kk, step = min(k + 1, n), max(1, (1 << 24) // n)  # exact top-(k+1); <= 16M scores at a time
    best_i = np.concatenate([np.argpartition(-(q[i:i + step] @ embeddings.T), kk - 1, axis=1)[:, :kk]
                             for i in range(0, len(q), step)])
    rank_of_partition = np.argsort(np.argsort(-(q @ centroids.T), axis=1), axis=1)
    ranks = [rank_of_partition[row, assign[nbrs[nbrs != self_i]]] for row, (nbrs, self_i)
             in enumerate(zip(best_i, queries))]
    ranks = np.sort(np.concatenate(ranks))
    if not len(ranks):
        return 1
    return int(ranks[min(len(ranks) - 1, math.ceil(recall_target * len(ranks)) - 1)]) + 1


def kmeans(x: np.ndarray, num_clusters: int, iterations: int = 20, sample_size: int = 100_000,
           seed: int = 0) -> np.ndarray:
    """Lloyd's k-means (k-means++ seeding) on a sample of at most ``sample_size`` rows -> centroids."""
    rng = np.random.default_rng(seed)
    if len(x) > sample_size:
        x = x[rng.choice(len(x), sample_size, replace=False)]
    centroids = [x[rng.integers(len(x))]]
    dist = ((x - centroids[0]) ** 2).sum(1)
    for _ in range(1, num_clusters):
        total = dist.sum()
        nxt = x[rng.choice(len(x), p=dist / total)] if total > 0 else x[rng.integers(len(x))]
        centroids.append(nxt)
        dist = np.minimum(dist, ((x - nxt) ** 2).sum(1))
    centroids = np.stack(centroids)
    for _ in range(iterations):
        assign = assign_clusters(x, centroids)
        for c in range(num_clusters):
            members = x[assign == c]
            if len(members):
                centroids[c] = members.mean(0)
    return centroids


def assign_clusters(x: np.ndarray, centroids: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Nearest centroid (squared L2) of each row, in chunks to bound memory."""
    c_sq = (centroids ** 2).sum(1)
    return np.concatenate([np.argmin(c_sq[None, :] - 2 * x[i:i + chunk] @ centroids.T, axis=1)
                           for i in range(0, len(x), chunk)]) if len(x) else np.zeros([0], np.int64)


def partition(embeddings: np.ndarray, k: int, num_partitions: Optional[int] = None, num_probe: Optional[int] = None,
              num_rerank: Optional[int] = None, seed: int = 0, recall_target: float = RECALL_TARGET):
    """k-means partitions of the catalog and the tuned parameters -> (params, centroids, assignment)."""
    params = tuned_params(len(embeddings), k, num_partitions, num_probe, num_rerank)
    centroids = kmeans(embeddings, params["num_partitions"], seed=seed)
    assign = assign_clusters(embeddings, centroids)
    if not num_probe:
        tuned = tune_probe(embeddings, centroids, assign, k, recall_target, seed=seed)
        params["num_probe"] = min(params["num_partitions"], max(params["num_probe"], tuned))
    return params, centroids, assign


class PortableIndex(Index):
    """IVF + int8 + exact re-rank top-K over a fixed catalog; ``index(queries)`` -> (scores, ids)."""

    kind = "portable"

    def __init__(self, ids: np.ndarray, embeddings: np.ndarray, k: int, num_partitions: Optional[int] = None,
                 num_probe: Optional[int] = None, num_rerank: Optional[int] = None, seed: int = 0,
                 name: str = "portable_index"):
        super().__init__(ids, embeddings, k, name)
        embeddings = np.asarray(embeddings, np.float32)
        self.params, centroids, assign = partition(embeddings, self.k, num_partitions, num_probe, num_rerank, seed)
        order = np.argsort(assign, kind="stable")
        counts = np.bincount(assign, minlength=len(centroids))
        scale = np.abs(embeddings).max(0) / 127.0
        scale[scale == 0] = 1.0
        sorted_emb = embeddings[order]
        self.centroids = tf.Variable(centroids.astype(np.float32), trainable=False, name="centroids")
        self.offsets = tf.Variable(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), trainable=False,
                                   name="offsets")
        self.scale = tf.Variable(scale.astype(np.float32), trainable=False, name="scale")
        self.codes = tf.Variable(np.clip(np.round(sorted_emb / scale), -127, 127).astype(np.int8),
                                 trainable=False, name="codes")
        self.embeddings = tf.Variable(sorted_emb, trainable=False, name="embeddings")
        self.ids = self.id_variable(np.asarray(ids, dtype=object)[order])

    def _shortlist(self, query_and_probe):
        """One query: approximate scores of its probed partitions' items -> the ``num_rerank`` best
        (positions, approximate scores); padded with (0, -inf) when fewer items were probed."""
        query, probe = query_and_probe
        num_rerank = self.params["num_rerank"]
        rows = tf.ragged.range(tf.gather(self.offsets[:-1], probe), tf.gather(self.offsets[1:], probe)).flat_values
        approx = tf.linalg.matvec(tf.cast(tf.gather(self.codes, rows), tf.float32), query * self.scale)
        pad = tf.maximum(num_rerank - tf.shape(rows)[0], 0)
        approx = tf.pad(approx, [[0, pad]], constant_values=float("-inf"))
        rows = tf.pad(rows, [[0, pad]])
        best, pos = tf.math.top_k(approx, k=num_rerank)
        return tf.gather(rows, pos), best

    def __call__(self, queries: tf.Tensor):
        """[B, D] query embeddings -> ([B, k] scores, [B, k] item ids), best first.

        Queries are scanned one at a time (``map_fn``), so memory stays O(probed items x D) whatever the
        batch size; the exact re-rank is batched.
        """
        _, probe = tf.math.top_k(tf.matmul(queries, self.centroids, transpose_b=True), k=self.params["num_probe"])
        shortlist, approx = tf.map_fn(self._shortlist, (queries, probe), parallel_iterations=4,
                                      fn_output_signature=(tf.TensorSpec([None], tf.int64),
                                                           tf.TensorSpec([None], tf.float32)))
        exact = tf.einsum("bd,brd->br", queries, tf.gather(self.embeddings, shortlist))
        exact = tf.where(tf.math.is_finite(approx), exact, float("-inf"))  # padding stays last
        scores, best = tf.math.top_k(exact, k=self.k)
        ids = tf.where(tf.math.is_finite(scores), tf.gather(self.ids, tf.gather(shortlist, best, batch_dims=1)), "")
        return scores, ids
