"""The popularity prior of an export: ranking by ``q_u . v_i + w * log(1 + n_i)``.

``n_i`` is item i's positive events in logs of the run's schema that the caller picks (typically the last
days', e.g. ``tfrec-towers examples --dates FROM:TO``), so an item that is watched a lot *now* moves up
without retraining: the towers learn what a user likes over all of training, while what the catalog's
audience watches this week drifts (new releases). It is one more dimension of the index, ``[v_i, w log(1
+ n_i)]`` against ``[q_u, 1]`` (``retrieval_module.prior_queries``), so every index type (brute, portable,
ScaNN) ranks by the sum with its own search and filters; ``user_embedding``, ``item_embedding`` and
``score`` stay the towers' own. No TensorFlow here: the CLI reads ``DEFAULT_WEIGHT``.

``DEFAULT_WEIGHT`` 0.05 is in the units of a ``normalize: true`` model's scores (cosines). It was chosen
on MovieLens-100K's initial period only (``benchmarks/continuous.py``'s tuning carves, seed 0, HR@50 over
all events; the test slices were not used):

* four slices (``--end-share 0.5 --initial-share 0.6 --slices 4``), mean of slices 2-4, full / incremental
  / stale: none 0.349 / 0.355 / 0.344; 0.02: 0.354 / 0.361 / 0.348; 0.05: 0.360 / 0.365 / 0.351; 0.1:
  0.362 / 0.364 / 0.354; 0.2: 0.355 / 0.352 / 0.344; 0.4: 0.331 / 0.326 / 0.326;
* two slices (``--end-share 0.5 --initial-share 0.8 --slices 2``): slice 1 (one model) none 0.327, 0.05
  0.342, 0.1 0.337, 0.15 0.335; slice 2 none 0.354 / 0.383 / 0.370, 0.05 0.364 / 0.385 / 0.380, 0.1 0.368 /
  0.380 / 0.378.

0.05 and 0.1 tie over both (+3% on all events), the smaller moves rankings less. Checked once after the
choice on splits without a time window (``default.yaml``, seed 0, counts from all training logs, test
splits): MovieLens-100K ``tfrs`` (random 80/20) HR@10 / HR@50 0.2843 / 0.6214 without, 0.2888 / 0.6226 at
0.05, 0.2868 / 0.6162 at 0.1; ``last`` (943 events) 0.2174 / 0.5048 without, 0.2142 / 0.4952 at 0.05. The
prior is for recent logs: over all of training it repeats what the towers already learned. A model without
``normalize`` has scores of another scale: tune ``w`` on its validation logs (``evaluate --saved-model``
of exports with a few weights).

Items without an ID row of their own (not in the run's ID vocabulary: new in a ``refresh-items`` catalog,
or never in training) get the weight tau, the run's ``task.temperature``, instead of ``w``
(``new_item_weight``): the towers place such an item by its other features through the OOV row, which
knows nothing of how much it is watched, so the count is its only evidence of that, taken whole. Fixed by
that argument, not tuned; checked on the four-slice tuning carve (seed 0), a model never retrained with
the new catalog refreshed: HR@50 on the events of new items 0.086 with ``w`` for every item, 0.251 with
tau (0.231 / 0.088 pooled over the four slices), on all events 0.351 for both. On the test slices
(3 seeds, run once after the change): 0.134 +- 0.011 against 0.018 +- 0.006, all events 0.318 for both;
ranking by the last 14 days' counts alone gets 0.186 there.
"""
import math
from typing import Mapping, Optional, Tuple

import numpy as np

__all__ = ["DEFAULT_WEIGHT", "check_weight", "known_items", "new_item_weight", "popularity_prior", "run_prior",
           "with_prior"]

DEFAULT_WEIGHT = 0.05


def check_weight(weight: float) -> float:
    """``weight`` if finite, else a ValueError naming it."""
    if not math.isfinite(weight):
        raise ValueError(f"the popularity weight must be a finite number, got {weight}")
    return weight


def new_item_weight(config) -> Optional[float]:
    """The prior's weight for a catalog item the towers have no ID row for: the run's ``task.temperature``
    tau (None without one: such items get the common weight).

    Such an item's vector comes from its other features through the OOV row, which stands for every item
    the towers do not know: nothing in it says how much this item is watched, where a known item's row
    learned that over training (hence the small common weight). Scores s are trained as logits s / tau, so
    ``tau log(1 + n)`` adds ``log(1 + n)`` to the logit: the whole evidence of the count, not a share of it.
    Not tuned: the tuning period of ``benchmarks/continuous.py`` has no popular new items to tune it on."""
    temperature = getattr(config.task, "temperature", None)
    return float(temperature) if temperature else None


def known_items(ids: np.ndarray, stats, item_feature: str) -> Optional[np.ndarray]:
    """Whether each of ``ids`` has an ID row of its own: is in the run's vocabulary of ``item_feature``
    (``FeatureStats``); None for hashed IDs (every ID has a bucket)."""
    try:
        vocabulary = set(stats.vocabulary(item_feature))
    except KeyError:
        return None
    return np.array([str(i) in vocabulary for i in ids], dtype=bool)


def popularity_prior(ids: np.ndarray, counts: Mapping[str, int], weight: float = DEFAULT_WEIGHT,
                     known: Optional[np.ndarray] = None, unknown_weight: Optional[float] = None) -> np.ndarray:
    """``w_i * log(1 + counts[id])`` for each of ``ids`` (0 for an ID without events), float32: ``w_i`` is
    ``weight``, or ``unknown_weight`` for an ID whose ``known`` is False (``known_items``, ``new_item_weight``;
    either None: ``weight`` for every ID)."""
    n = np.array([counts.get(str(i), 0) for i in ids], dtype=np.float64)
    w = np.full(len(n), check_weight(weight))
    if known is not None and unknown_weight is not None:
        w = np.where(np.asarray(known, dtype=bool), w, check_weight(unknown_weight))
    return (w * np.log1p(n)).astype(np.float32)


def run_prior(ids: np.ndarray, counts: Mapping[str, int], weight: float, config,
              stats) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """The prior an export of a run ranks by: ``popularity_prior`` with the run's ID vocabulary
    (``known_items`` of its ``FeatureStats``) and ``new_item_weight``. Returns (prior, known)."""
    known = known_items(ids, stats, config.features.item_id)
    return popularity_prior(ids, counts, weight, known, new_item_weight(config)), known


def with_prior(embeddings: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """The index's item vectors: ``[v_i, prior_i]`` ([N, D + 1])."""
    return np.hstack([np.asarray(embeddings, np.float32), np.asarray(prior, np.float32)[:, None]])
