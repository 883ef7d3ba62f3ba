"""SVD initialisation (``train.svd_init``): the user-ID and item-ID embedding tables start from a truncated
SVD of the training interactions instead of random values.

    A = D_u^-1/2 R D_i^-1/2 ~ U_r S_r V_r^T    (R: the binary user x item matrix of the positive training
                                                events, D_u, D_i: its row and column sums; r: the tables' width)
    user-ID row = U_r S_r^1/2,   item-ID row = V_r S_r^1/2

each table then rescaled so that its mean row norm is ``train.svd_init`` times that of its random initial
rows. A is the matrix spectral collaborative filtering reads (LightGCN's propagation, GF-CF's low-pass
filter): its top singular vectors already place users near their items, so training starts most of the way
there. Rows without a positive event (catalog items never seen, OOV rows) keep their random values, and a
table wider than the rank keeps its random values in the columns beyond it. The SVD is randomised (Halko,
Martinsson and Tropp 2011, algorithm 4.4: ``ITERATIONS`` power iterations, each re-orthonormalised) on
TensorFlow's sparse product: 25 s for Gowalla's 30K x 41K matrix of 720K events (2 cores, shared).

What it does to ``cf`` (benchmarks/README, Gowalla "Tenth round"): at 3x the rows move relatively less per
Adam step (its steps are ~lr whatever the row's norm), so more of the start survives. On Gowalla valid
Recall@20 rises to 0.2043 after 2 epochs (random start: 0.1827) and 0.2173 after 8 (0.2104; 1x: 0.2112),
but on Gowalla test it fell to 0.1808 / NDCG 0.1447 (3 seeds) against 0.1827 / 0.1531, so the packaged
configs start random (``train.svd_init: 0``, the default) and the option is for short schedules.
"""
import time
from typing import Callable, Dict, List, Tuple

import numpy as np
import tensorflow as tf

from tfrec_towers.config import Config
from tfrec_towers.features.encoders import LookupEmbedding, vocabulary_tables

__all__ = ["ITERATIONS", "OVERSAMPLE", "svd_init", "truncated_svd"]

#: Power iterations of the randomised SVD: A's spectrum decays slowly (Gowalla's 256th singular value is
#: half the first), which the plain range finder blurs. On Gowalla's train split at rank 256, against
#: ARPACK (scipy's svds): 4 iterations give singular values within 5% and a top-256 subspace overlap
#: ||V^T V_exact||^2 / 256 of 0.84; 6 (with 64 extra columns) within 3% and 0.91 (top 128: 0.998).
ITERATIONS = 6
#: Extra columns of the random range finder beyond the rank (Halko et al.'s p).
OVERSAMPLE = 64


def truncated_svd(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, shape: Tuple[int, int], rank: int,
                  seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U [n, rank], s [rank] descending, V [m, rank]) of the sparse [n, m] matrix with ``values`` at
    (``rows``, ``cols``): A ~ U diag(s) V^T, randomised (module docstring). ``rank`` <= min(n, m)."""
    if not 0 < rank <= min(shape):
        raise ValueError(f"truncated_svd: rank must be in [1, {min(shape)}] for a {shape[0]} x {shape[1]} matrix, got {rank}")
    a = tf.sparse.reorder(tf.sparse.SparseTensor(np.stack([rows, cols], 1).astype(np.int64),
                                                 values.astype(np.float32), shape))
    width = min(rank + OVERSAMPLE, min(shape))
    omega = np.random.default_rng(seed).standard_normal((shape[1], width)).astype(np.float32)
    y = tf.sparse.sparse_dense_matmul(a, omega)
    for _ in range(ITERATIONS):
        q, _ = tf.linalg.qr(y)
        q, _ = tf.linalg.qr(tf.sparse.sparse_dense_matmul(a, q, adjoint_a=True))
        y = tf.sparse.sparse_dense_matmul(a, q)
    q, _ = tf.linalg.qr(y)                                   # [n, w], A ~ Q Q^T A
    s, w, z = tf.linalg.svd(tf.sparse.sparse_dense_matmul(a, q, adjoint_a=True))  # A^T Q = W S Z^T
    return (tf.matmul(q, z)[:, :rank].numpy(), s[:rank].numpy(), w[:, :rank].numpy())  # A ~ (Q Z) S W^T


def _tables(model, source: str) -> List[LookupEmbedding]:
    tables = [layer for layer in vocabulary_tables(model) if layer.vocab_source == source]
    if not tables:
        raise ValueError(f"train.svd_init: no embedding table with a vocabulary keyed by '{source}' (an id feature "
                         "looked up through its vocabulary, not hash_buckets); set train.svd_init: 0")
    return tables


def svd_init(model, config: Config, histories: Dict[str, set], progress: Callable[[str], None] = print) -> Dict[str, int]:
    """Sets the tables of ``data.user_id``'s and the item ID's vocabularies (module docstring) from
    ``histories`` (user -> set of item IDs: ``data.inputs.user_histories`` of the training logs); returns
    {table source: rows set}."""
    start = time.perf_counter()
    sides = {"user": _tables(model, config.data.user_id), "item": _tables(model, config.features.item_id)}
    index = {}
    for side, tables in sides.items():
        vocab = tables[0].lookup.get_vocabulary(include_special_tokens=False)
        index[side] = {value: tables[0].num_oov + k for k, value in enumerate(vocab)}
    pairs = [(index["user"][u], index["item"][i]) for u, items in histories.items() if u in index["user"]
             for i in items if i in index["item"]]
    if not pairs:
        raise ValueError("train.svd_init: no positive training event has a user and an item in the vocabularies")
    user_rows, item_rows = np.array(pairs, np.int64).T
    users, u = np.unique(user_rows, return_inverse=True)   # table rows with an event; u, i: their matrix rows, columns
    items, i = np.unique(item_rows, return_inverse=True)
    du, di = np.bincount(u).astype(np.float32), np.bincount(i).astype(np.float32)
    values = 1.0 / np.sqrt(du[u] * di[i])
    width = min(t.dim for ts in sides.values() for t in ts)
    rank = min(width, len(users), len(items))
    left, s, right = truncated_svd(u, i, values, (len(users), len(items)), rank, seed=config.train.seed)
    root = np.sqrt(s)
    done = {}
    for side, rows, factors in (("user", users, left * root), ("item", items, right * root)):
        norm = np.linalg.norm(factors, axis=1).mean()
        for table in sides[side]:
            weights = table.embedding.embeddings
            value = weights.numpy()
            target = np.linalg.norm(value[rows, :rank], axis=1).mean() * config.train.svd_init
            value[rows, :rank] = factors * (target / max(norm, 1e-12))
            weights.assign(value)
            done[table.vocab_source] = len(rows)
    progress(f"svd_init: rank-{rank} SVD of {len(pairs)} positive events ({len(users)} users x {len(items)} items; "
             f"singular values {s[0]:.3f} .. {s[-1]:.3f}) set the user-ID and item-ID tables in "
             f"{time.perf_counter() - start:.1f} s")
    return done
