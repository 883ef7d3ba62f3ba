"""Offline hard-negative mining, a job run before training (``negatives.mined``): the most confusable
items for each user, from a previous run's model. (In-batch mining is the logit transform
``tfrec_towers.tasks.hard_negative_mining.HardNegativeMining``.)

``mine_hard_negatives``: a previous run's model scores the whole catalog for each user
  (from the user's latest training event); the top ``top_k`` items that are not among the user's
  training positives form that user's pool, and each training row draws from its user's pool. This
  is the usual "mine from the last model's index" step of production retrieval, excluding positives
  so a liked item is never pushed away.
"""
import numpy as np

from tfrec_towers.evaluation.embeddings import embed_catalog, embed_events
from tfrec_towers.negatives.catalog import ItemCatalog, KeyedItems
from tfrec_towers.run import RunDir, load_model


__all__ = ["mine_hard_negatives"]


def mine_hard_negatives(run_dir: str, train_pattern: str, items_pattern: str, catalog: ItemCatalog,
                        top_k: int = 100, progress=print) -> KeyedItems:
    """user -> catalog rows of the previous run's top ``top_k`` items that are not the user's positives."""
    run = RunDir(run_dir)
    config, model = run.config(), load_model(run_dir)
    item_ids, item_embeddings = embed_catalog(model, config, items_pattern, progress)
    users, items, queries = embed_events(model, config, train_pattern, progress)
    latest = {u: i for i, u in enumerate(users)}  # the user's last event in log order
    positives = {}
    for u, i in zip(users, items):
        positives.setdefault(u, set()).add(i)
    order = sorted(latest)
    scores = queries[[latest[u] for u in order]] @ item_embeddings.T
    pools = {}
    for row, user in enumerate(order):
        ranked = item_ids[np.argsort(-scores[row], kind="stable")]
        pool = [i for i in ranked[:top_k + len(positives[user])] if i not in positives[user]][:top_k]
        pools[user] = catalog.indices_of(pool)
    pools = {u: r[r >= 0] for u, r in pools.items()}
    progress(f"mined hard negatives: top {top_k} non-positive items of {len(pools)} users from {run.path}")
    return KeyedItems(pools, catalog.size, "mined")
