"""Retrieval metrics over the whole item catalog (exact scores, ``scoring``): NumPy only, no TensorFlow.

For each eval event (a query and its one true item) the rank r of the true item among all catalog
items is the number of items scoring strictly higher (0 = top). Then, per event,

    HR@K = [r < K],   NDCG@10 = [r < 10] / log2(r + 2),   MRR = 1 / (r + 1),   P@1 = [r = 0],

averaged over events; Recall@K averages HR@K per user first, then over users (with one relevant
item per event the two differ only in weighting). Two variants are reported: ``all_items`` ranks the
whole catalog; ``exclude_history`` first removes the user's training items (never the true item),
as a recommender would not re-recommend them. An eval item missing from the catalog has no rank
(``MISSING``): it is a miss at every K, however large, and ``targets_not_in_catalog`` counts them.

Per-user metrics (the protocol of the LightGCN-style benchmarks, ``user_catalog_metrics``): each eval
user u has a set T_u of true items and one query; the whole catalog is ranked with u's training items
removed, and with top_K(u) the K best items,

    Recall@K = |top_K(u) & T_u| / |T_u|,
    NDCG@K   = sum_{r < K, top_K(u)[r] in T_u} 1 / log2(r + 2)  /  sum_{r < min(|T_u|, K)} 1 / log2(r + 2),

both averaged over users. Scores are computed for a chunk of users at a time (memory: chunk x
catalog floats), excluded items set to -inf.
"""
import collections
import time
from typing import Dict, Optional, Sequence

import numpy as np

from tfrec_towers.evaluation.scoring import MISSING, target_ranks, top_k

__all__ = ["MISSING", "catalog_metrics", "metrics_from_ranks", "recall_ndcg", "target_ranks", "top_k",
           "user_catalog_metrics"]


def metrics_from_ranks(ranks: np.ndarray, users: np.ndarray, ks: Sequence[int]) -> Dict[str, float]:
    """The per-event metrics of the module docstring; a ``MISSING`` rank is a miss everywhere."""
    found = ranks != MISSING
    out = {}
    for k in ks:
        hit = (found & (ranks < k)).astype(np.float64)
        out[f"hr@{k}"] = float(hit.mean())
        per_user = collections.defaultdict(list)
        for u, h in zip(users, hit):
            per_user[u].append(h)
        out[f"recall@{k}"] = float(np.mean([np.mean(v) for v in per_user.values()]))
    r = np.where(found, ranks, 0).astype(np.float64)
    out["ndcg@10"] = float(np.mean(np.where(found & (ranks < 10), 1.0 / np.log2(r + 2.0), 0.0)))
    out["mrr"] = float(np.mean(np.where(found, 1.0 / (r + 1.0), 0.0)))
    out["p@1"] = float(np.mean(found & (ranks == 0)))
    return out


def catalog_metrics(query: np.ndarray, item_ids: np.ndarray, item_emb: np.ndarray, users: np.ndarray,
                    targets: np.ndarray, history: Optional[Dict[str, set]], ks: Sequence[int]) -> Dict:
    """Both variants of the metrics, from query embeddings and the catalog's embeddings."""
    index = {item: n for n, item in enumerate(item_ids.tolist())}
    target_idx = np.array([index.get(t, -1) for t in targets.tolist()], dtype=np.int64)
    out = {"events": int(len(users)), "users": int(len(set(users.tolist()))), "catalog_size": int(len(item_ids)),
           "targets_not_in_catalog": int((target_idx < 0).sum()),
           "all_items": metrics_from_ranks(target_ranks(query, item_emb, target_idx), users, ks)}
    if history is not None:
        excluded = {u: np.array(sorted(index[i] for i in items if i in index), dtype=np.int64)
                    for u, items in history.items()}
        empty = np.empty(0, dtype=np.int64)
        exclude = [excluded.get(u, empty) for u in users.tolist()]
        exclude = [e[e != t] if t >= 0 else e for e, t in zip(exclude, target_idx)]
        out["exclude_history"] = metrics_from_ranks(target_ranks(query, item_emb, target_idx, exclude), users, ks)
    return out


def recall_ndcg(top: np.ndarray, targets: Sequence[np.ndarray], k: int,
                num_targets: Optional[Sequence[int]] = None) -> Dict[str, np.ndarray]:
    """Per-user Recall@k and NDCG@k (module docstring) from ranked lists ``top`` (users x >= k) and
    each user's true item indices. ``num_targets[u]`` (default len(targets[u])) is |T_u|; it may
    exceed len(targets[u]) when true items are missing from the catalog (they count as misses)."""
    discount = 1.0 / np.log2(np.arange(k) + 2.0)
    ideal = np.concatenate([[0.0], np.cumsum(discount)])
    recall, ndcg = np.zeros(len(targets)), np.zeros(len(targets))
    for u, t in enumerate(targets):
        n = len(t) if num_targets is None else int(num_targets[u])
        if n == 0:
            raise ValueError(f"user row {u} has no true item: leave such users out")
        hit = np.isin(top[u, :k], t)
        recall[u] = hit.sum() / n
        ndcg[u] = (hit * discount[:hit.size]).sum() / ideal[min(n, k)]
    return {f"recall@{k}": recall, f"ndcg@{k}": ndcg}


def user_catalog_metrics(query: np.ndarray, item_ids: np.ndarray, item_emb: np.ndarray, users: np.ndarray,
                         targets: np.ndarray, history: Optional[Dict[str, set]], ks: Sequence[int] = (20,),
                         chunk: int = 1024) -> Dict:
    """Per-user Recall@K and NDCG@K over the whole catalog, the user's ``history`` items removed.

    ``users``/``targets``/``query`` are per eval event (as ``embed_events`` gives them); a user's
    query is that of their first event (the query features of a user's eval events are the same
    when they depend on the user only, as in ``user_item_lists``' test logs).
    """
    started = time.time()
    index = {item: n for n, item in enumerate(item_ids.tolist())}
    order, first = np.unique(users, return_index=True)
    rows = {u: n for n, u in enumerate(order.tolist())}
    true = [[] for _ in rows]
    counts = np.zeros(len(rows), dtype=np.int64)
    missing = 0
    for u, t in zip(users.tolist(), targets.tolist()):
        r = rows[u]
        counts[r] += 1
        if t in index:
            true[r].append(index[t])
        else:
            missing += 1
    true = [np.unique(np.array(t, dtype=np.int64)) for t in true]
    empty = np.empty(0, dtype=np.int64)
    exclude = None
    if history is not None:
        exclude = [np.array(sorted(index[i] for i in history.get(u, ()) if i in index), dtype=np.int64)
                   for u in order.tolist()]
        exclude = [e[~np.isin(e, t)] if len(e) else empty for e, t in zip(exclude, true)]
    top = top_k(query[first], item_emb, max(ks), exclude, chunk)
    out = {"users": int(len(order)), "events": int(len(users)), "catalog_size": int(len(item_ids)),
           "targets_not_in_catalog": int(missing)}
    for k in ks:
        for name, values in recall_ndcg(top, true, k, counts).items():
            out[name] = float(values.mean())
    out["seconds"] = round(time.time() - started, 2)
    return out
