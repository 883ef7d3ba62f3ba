"""Vocabularies and statistics computed in one pass over the training logs, saved with the model.

* vocabularies: per vocabulary source (an ID/categorical feature, plus every sequence feature that
  names it in ``vocab_from``), values by descending count, cut by ``min_count`` / ``max_vocab``;
* numeric features: mean and standard deviation of the finite values;
* item counts: how often each item ID is a training positive; q(item) = count / total is the
  sampling probability used by the logQ correction;
* trigram document frequencies, per ``num_buckets`` of the ``tfidf`` text features: in how many
  texts each hashed trigram occurs, over every such text of the logs (both sides: query and document
  texts share one table, so that shared and separate towers weight a trigram alike), or over the
  catalog's documents (``data.idf_from: items``, ``add_catalog_texts``).

Each feature type says which of these it needs (``Feature.vocab_source``, ``counts_moments``,
``idf_buckets``); the accumulator sees parsed batches and never the readers that make them.
A warm-started run (``train --warm-start``) continues the previous run's statistics: ``continue_stats``.
"""
import collections
import json
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from tfrec_towers.features import spec as S
from tfrec_towers.features.spec import select
from tfrec_towers.features.dssm_word_hashing import word_hash


__all__ = ["FeatureStats", "StatsAccumulator", "continue_stats"]


def _flat(values) -> np.ndarray:
    if isinstance(values, tf.RaggedTensor):
        values = values.flat_values
    return np.asarray(values).reshape(-1)


class FeatureStats:
    """What the encoders need from the training data: ``vocabulary(name)``, ``numeric(name)``."""

    def __init__(self, num_examples: int = 0, vocab_counts: Optional[Dict[str, Dict[str, int]]] = None,
                 numeric_stats: Optional[Dict[str, Dict[str, float]]] = None,
                 item_counts: Optional[Dict[str, int]] = None, vocab_limits: Optional[Dict] = None,
                 num_filtered: Optional[int] = None, text_df: Optional[Dict[str, Dict]] = None,
                 vocab_order: Optional[Dict[str, List[str]]] = None, vocab_seen: Optional[Dict[str, Dict]] = None,
                 generation: int = 0):
        self.num_examples = num_examples
        #: Events of the logs that the label filter removed (0: training can skip the filter; None: unknown).
        self.num_filtered = num_filtered
        self.vocab_counts = vocab_counts or {}
        self.numeric_stats = numeric_stats or {}
        self.item_counts = item_counts or {}
        self.vocab_limits = vocab_limits or {}
        #: str(num_buckets) -> {"texts": n, "df": {bucket: texts containing it}}
        self.text_df = text_df or {}
        #: Warm-started runs: source -> its vocabulary in index order (the previous run's, new values
        #: appended), so that every index keeps its embedding row; None: ranked by count.
        self.vocab_order = vocab_order or {}
        #: Vocabularies with ``max_vocab``: value -> the last generation whose logs held it (eviction order).
        self.vocab_seen = vocab_seen or {}
        #: How many runs these statistics continue (0: trained from scratch).
        self.generation = generation

    def idf(self, num_buckets: int) -> np.ndarray:
        """[num_buckets] ln((1 + n) / (1 + df)) + 1: scikit-learn's smoothed IDF (never 0, so that a
        trigram of every text still counts, and a bucket unseen in training gets the largest weight)."""
        key = str(num_buckets)
        if key not in self.text_df:
            raise KeyError(f"no trigram document frequencies were computed for num_buckets {num_buckets} "
                           "(a tfidf text feature)")
        d = self.text_df[key]
        df = np.zeros(num_buckets, np.float64)
        df[np.array([int(b) for b in d["df"]], np.int64)] = list(d["df"].values())
        return (np.log((1.0 + d["texts"]) / (1.0 + df)) + 1.0).astype(np.float32)

    def vocabulary(self, name: str) -> List[str]:
        if name not in self.vocab_counts:
            raise KeyError(f"no vocabulary was computed for feature '{name}'")
        if name in self.vocab_order:
            return list(self.vocab_order[name])
        min_count, max_vocab = self.vocab_limits.get(name, (1, None))
        ranked = sorted(self.vocab_counts[name].items(), key=lambda kv: (-kv[1], kv[0]))
        return [v for v, c in ranked if c >= min_count][:max_vocab]

    def numeric(self, name: str) -> Tuple[float, float]:
        if name not in self.numeric_stats:
            raise KeyError(f"no statistics were computed for numeric feature '{name}'")
        s = self.numeric_stats[name]
        return s["mean"], s["std"]

    def item_probabilities(self) -> Tuple[List[str], np.ndarray]:
        """Item IDs and their training-positive frequency q = count / total."""
        ids = sorted(self.item_counts)
        counts = np.array([self.item_counts[i] for i in ids], dtype=np.float64)
        return ids, counts / max(counts.sum(), 1.0)

    # --- persistence -----------------------------------------------------------------------------
    def to_dict(self) -> Dict:
        return {"num_examples": self.num_examples, "vocab_counts": self.vocab_counts,
                "numeric": self.numeric_stats, "item_counts": self.item_counts,
                "vocab_limits": {k: list(v) for k, v in self.vocab_limits.items()}, "num_filtered": self.num_filtered,
                "text_df": self.text_df, "vocab_order": self.vocab_order, "vocab_seen": self.vocab_seen,
                "generation": self.generation}

    def save(self, path: str) -> None:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "FeatureStats":
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        return cls(d["num_examples"], d["vocab_counts"], d["numeric"], d["item_counts"],
                   {k: tuple(v) for k, v in d.get("vocab_limits", {}).items()}, d.get("num_filtered"),
                   d.get("text_df"), d.get("vocab_order"), d.get("vocab_seen"), d.get("generation", 0))


class StatsAccumulator:
    """Feed parsed batches (``reader.scan``'s callback); ``result()`` gives the FeatureStats."""

    def __init__(self, spec: "S.FeatureSpec", keep=None, log_texts: bool = True):
        """``log_texts`` False: the logs' texts do not count towards the trigram document frequencies
        (they come from the catalog: ``add_catalog_texts``)."""
        self.spec, self.keep, self.log_texts = spec, keep, log_texts
        self.count = self.filtered = 0
        self.vocab = collections.defaultdict(collections.Counter)
        self.items = collections.Counter()
        self.moments = {f.name: np.zeros(3) for f in spec.features if f.counts_moments}
        self.tfidf = [f for f in spec.features if f.idf_buckets]
        self.df = {f.idf_buckets: np.zeros(f.idf_buckets, np.int64) for f in self.tfidf}
        self.texts = collections.Counter()
        self.catalog_ids = set()

    def __call__(self, parsed: Dict[str, tf.Tensor]) -> None:
        if self.keep is not None:
            before = int(parsed[self.spec.item_id].shape[0])
            parsed = select(parsed, self.keep(parsed))
            self.filtered += before - int(parsed[self.spec.item_id].shape[0])
        self.count += int(parsed[self.spec.item_id].shape[0])
        for f in self.spec.features:
            source = f.vocab_source
            if source is not None and not self.spec.by_name[source].vocabulary:
                self._count(self.vocab[source], _flat(parsed[f.name]))
            if f.name in self.moments:
                x = _flat(parsed[f.name]).astype(np.float64)
                x = x[np.isfinite(x)]
                self.moments[f.name] += (x.size, x.sum(), np.square(x).sum())
        if self.log_texts:
            self._count_texts(parsed, self.tfidf)
        self._count(self.items, _flat(parsed[self.spec.item_id]))

    def add_catalog_texts(self, parsed: Dict[str, tf.Tensor]) -> None:
        """A parsed batch of catalog records: each item's first record counts its candidate tfidf texts."""
        ids = _flat(parsed[self.spec.item_id]).tolist()
        rows = []
        for row, item in enumerate(ids):
            if item not in self.catalog_ids:
                self.catalog_ids.add(item)
                rows.append(row)
        if rows:
            self._count_texts({k: tf.gather(v, rows) for k, v in parsed.items()},
                              [f for f in self.tfidf if f.name in parsed])

    def _count_texts(self, parsed: Dict[str, tf.Tensor], features) -> None:
        for f in features:
            n = f.idf_buckets
            ids = word_hash(tf.reshape(parsed[f.name], [-1]), n)
            pairs = np.unique(ids.value_rowids().numpy() * n + ids.flat_values.numpy())
            self.df[n] += np.bincount(pairs % n, minlength=n)
            self.texts[n] += int(ids.nrows())

    @staticmethod
    def _count(counter: collections.Counter, values: np.ndarray) -> None:
        if values.size == 0:
            return
        uniq, counts = np.unique(values, return_counts=True)
        keys = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in uniq.tolist()]
        counter.update(dict(zip(keys, counts.tolist())))

    def result(self) -> FeatureStats:
        numeric = {}
        for name, (n, total, sq) in self.moments.items():
            if n == 0:
                raise ValueError(f"numeric feature '{name}' has no finite value in the training logs")
            mean = float(total / n)
            numeric[name] = {"mean": mean, "std": float(np.sqrt(max(sq / n - mean * mean, 0.0))), "count": int(n)}
        limits = {f.name: (f.min_count, f.max_vocab) for f in self.spec.features if f.vocab_source == f.name}
        text_df = {str(n): {"texts": self.texts[n], "df": {str(b): int(df[b]) for b in np.flatnonzero(df)}}
                   for n, df in self.df.items()}
        return FeatureStats(self.count, {k: dict(v) for k, v in self.vocab.items()}, numeric,
                            dict(self.items), limits, self.filtered, text_df)


def continue_stats(previous: FeatureStats, new: FeatureStats) -> Tuple[FeatureStats, Dict[str, Dict]]:
    """The statistics of a run warm-started from ``previous`` and trained on the logs ``new`` counted.

    Rule: every count adds up (value and item counts, trigram document frequencies, numeric moments),
    so IDF, q(item) and numeric normalisation are those of all the logs seen so far; the example count
    is the new logs' (it sets this run's steps). Each vocabulary keeps the previous one's order, so every
    old value keeps its index (its embedding row and optimizer slots carry over), and values new to it
    that pass ``min_count`` on the summed counts are appended by descending count. Where ``max_vocab``
    leaves no room, a value of the new logs takes the index of an evicted one: values absent from the
    new logs, least recently seen first, then the least counted (a value the logs no longer hold is the
    one a model misses least); the rest go to the OOV row.

    Returns (stats, changes) with changes[source] = {"old_size", "size", "added", "evicted": [(index,
    old value, new value)]} for each vocabulary.
    """
    generation = previous.generation + 1
    vocab_counts = {k: dict(collections.Counter(previous.vocab_counts.get(k, {})) + collections.Counter(new.vocab_counts.get(k, {})))
                    for k in {**previous.vocab_counts, **new.vocab_counts}}
    limits = {**previous.vocab_limits, **new.vocab_limits}
    order, seen, changes = {}, {}, {}
    for source, counts in vocab_counts.items():
        old = previous.vocabulary(source) if source in previous.vocab_counts else []
        min_count, max_vocab = limits.get(source, (1, None))
        in_new = new.vocab_counts.get(source, {})
        known = set(old)
        added = [v for v, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count and v not in known]
        values, evicted = list(old), []
        room = len(added) if max_vocab is None else max(0, max_vocab - len(values))
        values += added[:room]
        if max_vocab is not None:
            last = dict(previous.vocab_seen.get(source, {}))
            last.update({v: generation for v in in_new})
            candidates = sorted((i for i, v in enumerate(old) if v not in in_new),
                                key=lambda i: (last.get(old[i], 0), counts.get(old[i], 0), old[i]))
            for i, value in zip(candidates, [v for v in added[room:] if v in in_new]):
                evicted.append((i, values[i], value))
                values[i] = value
            seen[source] = {v: last.get(v, 0) for v in values}
        order[source] = values
        changes[source] = {"old_size": len(old), "size": len(values), "added": len(values) - len(old) + len(evicted),
                           "evicted": evicted}
    numeric = {}
    for name in {**previous.numeric_stats, **new.numeric_stats}:
        parts = [s for s in (previous.numeric_stats.get(name), new.numeric_stats.get(name)) if s]
        n = sum(p.get("count", 0) for p in parts)
        if not n:  # statistics saved before counts were kept: the new logs' stand
            numeric[name] = dict(parts[-1])
            continue
        mean = sum(p["count"] * p["mean"] for p in parts) / n
        second = sum(p["count"] * (p["std"] ** 2 + p["mean"] ** 2) for p in parts) / n
        numeric[name] = {"mean": mean, "std": float(np.sqrt(max(second - mean * mean, 0.0))), "count": n}
    text_df = {}
    for key in {**previous.text_df, **new.text_df}:
        a, b = previous.text_df.get(key, {"texts": 0, "df": {}}), new.text_df.get(key, {"texts": 0, "df": {}})
        text_df[key] = {"texts": a["texts"] + b["texts"],
                        "df": dict(collections.Counter(a["df"]) + collections.Counter(b["df"]))}
    items = dict(collections.Counter(previous.item_counts) + collections.Counter(new.item_counts))
    stats = FeatureStats(new.num_examples, vocab_counts, numeric, items, limits, new.num_filtered, text_df,
                         order, seen, generation)
    return stats, changes
