"""The evaluation job: a trained run's towers (or its export) applied to eval logs, then ``metrics``.

``evaluate_run`` embeds the catalog with the candidate tower and the eval events with the query tower
(``embeddings``) and writes ``metrics.catalog_metrics`` (``all_items`` and ``exclude_history``) to
RUN/metrics.json; ``evaluate_users`` gives ``metrics.user_catalog_metrics`` of a model on TFRecord logs.

``evaluate_saved_model`` measures an export instead of the run's towers: the SavedModel itself, loaded in
process, answers each eval event through its ``filtered`` signature with the user's training items (never
the true item) as ``exclude_item_ids`` and k = its max-k, as a production caller would ask. r is then the
true item's position in that answer (``MISSING`` when absent), so HR@K (K <= max-k), NDCG@10, P@1 and
MRR@max-k are those of ``exclude_history`` as the export serves them: equal for a ``brute`` export, lower
by the index's recall for an approximate one.
"""
import json
import os
import time
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from tfrec_towers.config import Config
from tfrec_towers.data import reader
from tfrec_towers.data.inputs import decode, parse_spec, positives, scan_logs, user_histories
from tfrec_towers.evaluation.embeddings import embed_catalog, embed_events
from tfrec_towers.evaluation.metrics import MISSING, catalog_metrics, metrics_from_ranks, user_catalog_metrics
from tfrec_towers.run import RunDir, load_model


__all__ = ["evaluate_run", "evaluate_saved_model", "evaluate_users", "export_version_dir", "format_metrics",
           "saved_model_answers"]


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
    An export with a popularity prior is measured as it ranks (its logs and weight are in the JSON): export
    with a few weights and compare them on validation logs to choose one.
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
           "popularity_prior": meta.get("popularity_prior"), "seconds": round(time.time() - start, 2)}
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
