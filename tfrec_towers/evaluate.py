"""Evaluation over the whole item catalog with an exact (brute-force) index.

For each eval event (a query and its one true item) the rank r of the true item among all catalog
items is the number of items scoring strictly higher (0 = top). Then, per event,

    HR@K = [r < K],   NDCG@10 = [r < 10] / log2(r + 2),   MRR = 1 / (r + 1),   P@1 = [r = 0],

averaged over events; Recall@K averages HR@K per user first, then over users (with one relevant
item per event the two differ only in weighting). Two variants are reported: ``all_items`` ranks the
whole catalog; ``exclude_history`` first removes the user's training items (never the true item),
as a recommender would not re-recommend them. An eval item missing from the catalog has no rank
(``MISSING``): it is a miss at every K, however large, and ``targets_not_in_catalog`` counts them.

``evaluate_saved_model`` measures an export instead of the run's towers: the SavedModel itself, loaded in
process, answers each eval event through its ``filtered`` signature with the user's training items (never
the true item) as ``exclude_item_ids`` and k = its max-k, as a production caller would ask. r is then the
true item's position in that answer (``MISSING`` when absent), so HR@K (K <= max-k), NDCG@10, P@1 and
MRR@max-k are those of ``exclude_history`` as the export serves them: equal for a ``brute`` export, lower
by the index's recall for an approximate one.

Per-user metrics (the protocol of the LightGCN-style benchmarks, ``user_catalog_metrics``): each eval
user u has a set T_u of true items and one query; the whole catalog is ranked with u's training items
removed, and with top_K(u) the K best items,

    Recall@K = |top_K(u) & T_u| / |T_u|,
    NDCG@K   = sum_{r < K, top_K(u)[r] in T_u} 1 / log2(r + 2)  /  sum_{r < min(|T_u|, K)} 1 / log2(r + 2),

both averaged over users. Scores are computed for a chunk of users at a time (memory: chunk x
catalog floats), excluded items set to -inf.
"""
import collections
import json
import os
import time
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from tfrec_towers.config import Config
from tfrec_towers.data import reader
from tfrec_towers.data.inputs import decode, parse_spec, positives, scan_logs, user_histories
from tfrec_towers.embeddings import embed_catalog, embed_events
from tfrec_towers.run import RunDir, load_model

#: The rank of an eval target that is not in the catalog: never a hit, contributes 0 to NDCG and MRR.
MISSING = -1


def target_ranks(query: np.ndarray, items: np.ndarray, targets: np.ndarray,
                 exclude: Optional[Sequence[np.ndarray]] = None, chunk: int = 2048) -> np.ndarray:
    """Rank of ``items[targets[i]]`` for ``query[i]`` (count of items scoring strictly higher).

    ``targets[i] < 0`` (true item not in the catalog) gives ``MISSING``.
    ``exclude[i]`` lists item indices to drop from row i's ranking (the target itself is kept).
    """
    ranks = np.empty(len(query), dtype=np.int64)
    items_t = np.ascontiguousarray(items.T, dtype=np.float32)
    for start in range(0, len(query), chunk):
        stop = min(start + chunk, len(query))
        scores = np.asarray(query[start:stop], dtype=np.float32) @ items_t
        t = targets[start:stop]
        true = scores[np.arange(stop - start), np.maximum(t, 0)].copy()
        if exclude is not None:
            for row in range(stop - start):
                drop = exclude[start + row]
                if len(drop):
                    scores[row, drop] = -np.inf
        r = (scores > true[:, None]).sum(axis=1)
        ranks[start:stop] = np.where(t >= 0, r, MISSING)
    return ranks


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


def top_k(query: np.ndarray, items: np.ndarray, k: int, exclude: Optional[Sequence[np.ndarray]] = None,
          chunk: int = 1024) -> np.ndarray:
    """Indices of the ``k`` best-scoring items (dot product) for each query row, best first.

    ``exclude[i]`` lists item indices scored -inf for row i. Memory is ``chunk`` x len(items) floats
    (1024 x 40,981 x 4 B = 168 MB), whatever the number of queries.
    """
    k = min(k, items.shape[0])
    out = np.empty((len(query), k), dtype=np.int64)
    items_t = np.ascontiguousarray(items.T, dtype=np.float32)
    for start in range(0, len(query), chunk):
        stop = min(start + chunk, len(query))
        scores = np.asarray(query[start:stop], dtype=np.float32) @ items_t
        if exclude is not None:
            for row in range(stop - start):
                drop = exclude[start + row]
                if len(drop):
                    scores[row, drop] = -np.inf
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        out[start:stop] = np.take_along_axis(part, order, axis=1)
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


def evaluate_users(model, config: Config, eval_pattern: str, items_pattern: str, history,
                   ks: Sequence[int] = (20,), chunk: int = 1024, progress=print) -> Dict:
    """``user_catalog_metrics`` of a model on TFRecord logs; ``history`` is {user: item set} or the
    glob of the training logs whose positives are removed per user."""
    item_ids, item_emb = embed_catalog(model, config, items_pattern, progress)
    users, targets, query = embed_events(model, config, eval_pattern, progress)
    if isinstance(history, str):
        history = user_histories(config, history, progress)
    return user_catalog_metrics(query, item_ids, item_emb, users, targets, history, ks, chunk)


def evaluate_run(run_dir: str, eval_pattern: str, items_pattern: Optional[str] = None,
                 history_pattern: Optional[str] = None, output: Optional[str] = None, model=None,
                 progress: Callable[[str], None] = print) -> Dict:
    """Evaluate a trained run on ``eval_pattern``; write the metrics JSON (default RUN/metrics.json).

    The catalog is ``items_pattern`` (default: the run's items glob, else the distinct items of its
    training logs); the history excluded in ``exclude_history`` comes from ``history_pattern``
    (default: the run's training logs).
    """
    run = RunDir(run_dir)
    info, config = run.info(), run.config()
    model = model or load_model(run.path)
    start = time.time()
    items_pattern = items_pattern or info.get("items") or info["train"]
    history_pattern = history_pattern or info["train"]
    item_ids, item_emb = embed_catalog(model, config, items_pattern, progress)
    users, targets, query = embed_events(model, config, eval_pattern, progress)
    history = user_histories(config, history_pattern, progress)
    metrics = catalog_metrics(query, item_ids, item_emb, users, targets, history, config.eval.ks)
    metrics.update({"eval": eval_pattern, "items": items_pattern, "history": history_pattern,
                    "seconds": round(time.time() - start, 2)})
    return _write_metrics(metrics, output or run / "metrics.json", progress)


def export_version_dir(path: str) -> str:
    """A version directory (holding saved_model.pb), or BASE/NAME -> its latest version."""
    from tfrec_towers.export import layout

    if os.path.exists(os.path.join(path, layout.SAVED_MODEL_FILE)):
        return os.path.abspath(path)
    latest = layout.latest_version(path)
    if latest is None:
        raise FileNotFoundError(f"{path} is neither an export version (no {layout.SAVED_MODEL_FILE}) nor a model "
                                "directory with versions")
    return os.path.join(os.path.abspath(path), str(latest))


def saved_model_answers(version_dir: str, config: Config, eval_pattern: str, history: Dict[str, set],
                        progress=print):
    """(users [E], true items [E], answers [E, max-k]) of the export's ``filtered`` signature, loaded in this
    process, for the positive events of ``eval_pattern``: k = its max-k, ``exclude_item_ids`` = the user's
    ``history`` items except the event's true item."""
    import tensorflow as tf

    from tfrec_towers.export.layout import EXCLUDE_INPUT, K_INPUT

    signature = tf.saved_model.load(version_dir).signatures["filtered"]
    max_k = int(signature.structured_outputs["item_ids"].shape[1])
    user_key, item_key = config.data.user_id, config.features.item_id
    query_names = [f.name for f in config.features.query]
    users, targets, answers = [], [], []

    def on_batch(parsed):
        inputs = config.features.prepare(parsed)
        batch_users, batch_targets = decode(parsed[user_key].numpy()), decode(inputs[item_key].numpy())
        exclude = [sorted(history.get(u, set()) - {t}) for u, t in zip(batch_users, batch_targets)]
        padded = np.full((len(exclude), max([len(e) for e in exclude] + [1])), b"", dtype=object)
        for row, items in enumerate(exclude):
            padded[row, :len(items)] = [i.encode("utf-8") for i in items]
        out = signature(**{name: inputs[name] for name in query_names}, **{
            K_INPUT: tf.constant(max_k, tf.int32), EXCLUDE_INPUT: tf.constant(padded)})
        users.append(batch_users)
        targets.append(batch_targets)
        item_ids = out["item_ids"].numpy()
        answers.append(decode(item_ids.ravel()).reshape(item_ids.shape))

    scan_logs(config, reader.list_files(eval_pattern), parse_spec(config, user_key), on_batch,
              keep=positives(config), progress=progress)
    empty = np.empty([0], dtype=object)
    return (np.concatenate(users) if users else empty, np.concatenate(targets) if targets else empty,
            np.concatenate(answers) if answers else np.empty([0, max_k], dtype=object))


def evaluate_saved_model(export_dir: str, eval_pattern: str, run_dir: Optional[str] = None,
                         history_pattern: Optional[str] = None, output: Optional[str] = None,
                         progress: Callable[[str], None] = print) -> Dict:
    """HR@K etc. of an export's ``filtered`` signature (module docstring), the SavedModel run in process.

    ``export_dir``: a version directory, or BASE/NAME (its latest version). ``run_dir`` (default: the one
    recorded in the export) gives the data config and the default ``history_pattern`` (its training logs);
    the metrics JSON goes to ``output`` (default RUN/saved_model_metrics.json), the metrics under ``saved_model``.
    """
    from tfrec_towers.export.exporter import read_metadata

    start = time.time()
    version_dir = export_version_dir(export_dir)
    meta = read_metadata(version_dir)
    run = RunDir(run_dir or meta["run_dir"])
    info, config = run.info(), run.config()
    history_pattern = history_pattern or info["train"]
    history = user_histories(config, history_pattern, progress)
    users, targets, answers = saved_model_answers(version_dir, config, eval_pattern, history, progress)
    max_k = answers.shape[1]
    hits = answers == targets[:, None]
    ranks = np.where(hits.any(axis=1), hits.argmax(axis=1), MISSING)
    metrics = metrics_from_ranks(ranks, users, [k for k in config.eval.ks if k <= max_k])
    metrics[f"mrr@{max_k}"] = metrics.pop("mrr")  # a target past max-k adds 0, not 1 / (r + 1)
    if max_k < 10:
        metrics.pop("ndcg@10")
    out = {"events": int(len(users)), "users": int(len(set(users.tolist()))),
           "catalog_size": meta["catalog"]["num_items"], "export": version_dir, "index": meta["index"]["type"],
           "max_k": max_k, "saved_model": metrics, "eval": eval_pattern, "history": history_pattern,
           "seconds": round(time.time() - start, 2)}
    return _write_metrics(out, output or run / "saved_model_metrics.json", progress)


def _write_metrics(metrics: Dict, output: str, progress) -> Dict:
    """Write ``metrics`` as JSON to ``output``, print them; returns them."""
    with open(output, "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
    progress(format_metrics(metrics))
    progress(f"metrics written to {output}")
    return metrics


def format_metrics(metrics: Dict) -> str:
    lines = [f"{metrics['events']} events, {metrics['users']} users, catalog of {metrics['catalog_size']} items"]
    if metrics.get("targets_not_in_catalog"):
        lines.append(f"  {metrics['targets_not_in_catalog']} eval targets are not in the catalog (counted as misses)")
    for variant in ("all_items", "exclude_history", "saved_model"):
        if variant in metrics:
            lines.append(f"  {variant:16s} " + "  ".join(f"{k}={v:.4f}" for k, v in metrics[variant].items()
                                                         if not k.startswith("recall")))
    return "\n".join(lines)
