"""Embedding-space report of a trained run: do the two towers share one space, or sit apart?

Following section 4 of the SamToNe paper (Moiseev et al. 2023, "SamToNe: Improving Contrastive Loss
for Dual Encoder Retrieval Models with Same Tower Negatives"), which compares a dual encoder trained
with plain in-batch softmax against one trained with same-tower negatives (SamToNe):

* ``embedding_map.png``: a 2-D map (PCA, or t-SNE with scikit-learn) of query (user-tower) and item
  (candidate-tower) embeddings, fitted on both together. With in-batch softmax alone nothing pulls
  the two towers' outputs towards each other except the positive pairs, and they often occupy two
  separate regions (two clouds); same-tower negatives make them overlap into one shared space.
* ``similarity_histogram.png``: densities of the cosine similarity over random pairs of two queries
  sim(q_i, q_j) (i != j), of two items sim(p_i, p_j) and of a query and an item sim(q_i, p_j), plus
  each eval event's query with its own true item. When the same-tower similarities sit well above
  the cross-tower one, each tower lives in its own cone; SamToNe pushes sim(q_i, q_j) down.
* ``embedding_report.json``: counts, mean and standard deviation of each similarity, the cosine
  between the two towers' centroids (near 1: one shared region; low: separate regions), and the
  share of the variance the 2-D PCA map keeps (how faithful the picture is).

Queries are the eval events' query embeddings (``embeddings.embed_events``); items are the catalog's
(``embeddings.embed_catalog``). The map shows up to ``num_points`` of each; the similarities and the
centroids use all of them.
"""
import json
import os
from typing import Callable, Dict, Optional

import numpy as np

from tfrec_towers.evaluation.embeddings import embed_catalog, embed_events
from tfrec_towers.run import RunDir, load_model

__all__ = ["COLOURS", "METHODS", "format_report", "project_2d", "write_embedding_report"]


COLOURS = {"queries": "tab:blue", "items": "tab:orange", "query_query": "tab:blue", "item_item": "tab:orange",
           "query_item": "tab:green", "query_true_item": "tab:red"}
METHODS = ("pca", "tsne")


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _pairs(rng, n: int, m: int, count: int, distinct: bool):
    """``count`` random index pairs (i < n, j < m); with ``distinct`` (same set) i != j."""
    i = rng.integers(0, n, count)
    j = (i + rng.integers(1, n, count)) % n if distinct else rng.integers(0, m, count)
    return i, j


def _stats(x: np.ndarray) -> Dict[str, float]:
    return {"mean": float(x.mean()), "std": float(x.std()), "count": int(len(x))}


def project_2d(points: np.ndarray, method: str = "pca", seed: int = 0):
    """(N, 2) coordinates and, for PCA, the fraction of the variance the two components keep."""
    if method == "pca":
        centred = points - points.mean(axis=0)
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        total = float((s ** 2).sum())
        return centred @ vt[:2].T, (float((s[:2] ** 2).sum()) / total if total > 0 else 1.0)
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise ValueError("method 'tsne' needs scikit-learn: pip install scikit-learn, or use --method pca") from None
    perplexity = float(min(30.0, max(1.0, (len(points) - 1) / 3)))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points), None


def write_embedding_report(run_dir: str, out_dir: str, eval_pattern: Optional[str] = None,
                           items_pattern: Optional[str] = None, num_points: int = 2000, num_pairs: int = 20000,
                           method: str = "pca", seed: int = 0, model=None,
                           progress: Callable[[str], None] = print) -> Dict:
    """Write the map, the similarity histogram and the JSON numbers of a run to ``out_dir``; return them.

    ``eval_pattern`` / ``items_pattern`` default to the run's globs (run.json); without an items glob
    the catalog is the distinct items of the training logs, as in ``evaluate_run``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if num_points < 1 or num_pairs < 1:
        raise ValueError(f"points and pairs must be at least 1 (got {num_points}, {num_pairs})")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir} exists and is not a directory: give a new or existing directory")
    run = RunDir(run_dir)
    info, config = run.info(), run.config()
    eval_pattern = eval_pattern or info.get("eval")
    items_pattern = items_pattern or info.get("items") or info.get("train")
    if not eval_pattern:
        raise ValueError(f"{run.path} recorded no eval glob in run.json: pass --eval GLOB")
    if not items_pattern:
        raise ValueError(f"{run.path} recorded no items or train glob in run.json: pass --items GLOB")
    if method == "tsne":
        project_2d(np.zeros((4, 2)), "tsne")  # fail now, not after embedding, if scikit-learn is missing
    model = model or load_model(run.path)

    item_ids, items = embed_catalog(model, config, items_pattern, progress)
    _, targets, queries = embed_events(model, config, eval_pattern, progress)
    if len(queries) < 2 or len(items) < 2:
        raise ValueError(f"need at least 2 eval events and 2 catalog items (got {len(queries)}, {len(items)})")
    q, p = _unit(queries), _unit(items)
    rng = np.random.default_rng(seed)

    index = {item: n for n, item in enumerate(item_ids.tolist())}
    own = np.array([index.get(t, -1) for t in targets.tolist()])
    sims = {"query_query": np.einsum("nd,nd->n", *(q[k] for k in _pairs(rng, len(q), len(q), num_pairs, True))),
            "item_item": np.einsum("nd,nd->n", *(p[k] for k in _pairs(rng, len(p), len(p), num_pairs, True))),
            "query_item": np.einsum("nd,nd->n", q[rng.integers(0, len(q), num_pairs)],
                                    p[rng.integers(0, len(p), num_pairs)]),
            "query_true_item": np.einsum("nd,nd->n", q[own >= 0], p[own[own >= 0]])}
    q_map = q[np.sort(rng.choice(len(q), min(num_points, len(q)), replace=False))]
    p_map = p[np.sort(rng.choice(len(p), min(num_points, len(p)), replace=False))]
    coords, explained = project_2d(np.concatenate([q_map, p_map]), method, seed)
    centroid_cos = float((_unit(q.mean(axis=0, keepdims=True)) @ _unit(p.mean(axis=0, keepdims=True)).T)[0, 0])

    name = os.path.basename(run.path.rstrip(os.sep))
    os.makedirs(out_dir, exist_ok=True)
    files = {k: os.path.join(os.path.abspath(out_dir), f) for k, f in
             (("map", "embedding_map.png"), ("histogram", "similarity_histogram.png"), ("json", "embedding_report.json"))}
    _plot_map(coords[:len(q_map)], coords[len(q_map):], method, explained, name, files["map"])
    _plot_histogram(sims, name, files["histogram"])
    report = {"run": run.path, "eval": eval_pattern, "items": items_pattern, "method": method, "seed": seed,
              "counts": {"queries": int(len(q)), "items": int(len(p)), "queries_mapped": int(len(q_map)),
                         "items_mapped": int(len(p_map)), "pairs": int(num_pairs),
                         "events_with_item_in_catalog": int((own >= 0).sum())},
              "similarity": {k: _stats(v) if len(v) else None for k, v in sims.items()},
              "centroid_cosine": centroid_cos, "map_explained_variance": explained, "files": files}
    with open(files["json"], "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    progress(format_report(report))
    return report


def _figure():
    from matplotlib.figure import Figure  # no pyplot: Agg canvas, no display, no global backend change

    return Figure(figsize=(7, 6), dpi=100)


def _plot_map(q2, p2, method, explained, name, path):
    fig = _figure()
    ax = fig.add_subplot()
    for label, xy in (("queries", q2), ("items", p2)):
        ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.6, c=COLOURS[label], label=f"{label} ({len(xy)})")
    kept = f", {explained:.0%} of variance" if explained is not None else ""
    ax.set_title(f"{name}: query and item embeddings ({method.upper()}{kept})")
    ax.legend(loc="best", markerscale=3)
    fig.savefig(path, format="png")


def _plot_histogram(sims, name, path):
    fig = _figure()
    ax = fig.add_subplot()
    labels = {"query_query": "sim(q_i, q_j), i != j", "item_item": "sim(p_i, p_j), i != j",
              "query_item": "sim(q_i, p_j), random", "query_true_item": "sim(q_i, p_i+), true item"}
    bins = np.linspace(-1, 1, 61)
    for key, label in labels.items():
        if len(sims[key]):
            own = key == "query_true_item"
            ax.hist(sims[key], bins=bins, density=True, alpha=1.0 if own else 0.45, color=COLOURS[key],
                    histtype="step" if own else "stepfilled", linewidth=1.5, label=label)
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.set_title(f"{name}: same-tower vs cross-tower similarity")
    ax.legend(loc="best")
    fig.savefig(path, format="png")


def format_report(report: Dict) -> str:
    c, s = report["counts"], report["similarity"]
    lines = [f"{c['queries']} queries, {c['items']} items; map ({report['method']}) of {c['queries_mapped']} + "
             f"{c['items_mapped']} points" + (f", {report['map_explained_variance']:.1%} of variance"
                                              if report["map_explained_variance"] is not None else "")]
    lines += [f"  {k:16s} mean={v['mean']:+.4f} std={v['std']:.4f}" for k, v in s.items() if v]
    lines.append(f"  centroid cosine  {report['centroid_cosine']:+.4f}")
    lines += [f"{k} written to {v}" for k, v in report["files"].items()]
    return "\n".join(lines)
