"""NumPy helpers shared by the loss tests (test_pair, test_samtone, test_adaptive_temperature_margin)."""
import numpy as np


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def reduce(rows, w, reduction):
    """Weighted sum, or weighted mean, of per-row losses (w None: weights 1)."""
    w = np.ones_like(rows) if w is None else w
    return (w * rows).sum() if reduction == "sum" else (w * rows).sum() / w.sum()


def random_batch(seed=0, b=6, n=8, dim=5, same_queries=False, probabilities=False):
    """(q [b, dim], c [n, dim], row weights [b]) of unit vectors, and the columns' sampling probabilities
    [n] with ``probabilities``. Item rows 2 and 5 have identical features (different IDs); with
    ``same_queries`` query rows 1 and 3 too: duplicates that a loss must mask, not push apart."""
    rng = np.random.default_rng(seed)
    q, c = unit(rng.normal(size=(b, dim))), unit(rng.normal(size=(n, dim)))
    if same_queries:
        q[3] = q[1]
    c[5] = c[2]
    p = rng.uniform(0.01, 0.5, size=n).astype(np.float32) if probabilities else None
    w = rng.uniform(0.2, 2.0, size=b).astype(np.float32)
    return (q, c, p, w) if probabilities else (q, c, w)
