"""The item catalog as tensors (candidate-side features of every item), and per-key item lists.

Sampled negatives are catalog rows passed through the item tower, so the catalog keeps each item's
model inputs; ``gather(indices)`` returns a batch of them. The tensors live in non-trainable
variables held outside Keras' tracking: they are rebuilt from the item files, never checkpointed,
and a large catalog does not become a constant inside every traced graph.
"""
from typing import Dict, Iterable, List, Sequence

import numpy as np
import tensorflow as tf

from tfrec_towers.data import reader
from tfrec_towers.data.inputs import first_occurrences
from tfrec_towers.tasks.chain import Untracked


__all__ = ["ItemCatalog", "KeyedItems"]


class ItemCatalog:
    """Item IDs, their index, and their prepared candidate-side features.

    ``from_files`` reads every item once; duplicate IDs keep their first record.
    """

    def __init__(self, ids: Sequence[str], features: Dict[str, tf.Tensor]):
        if not len(ids):
            raise ValueError("the item catalog is empty")
        self.ids = np.asarray(ids, dtype=object)
        self.size = len(ids)
        self._v = Untracked(ids=tf.Variable(tf.constant(list(ids), tf.string), trainable=False, name="catalog_ids"),
                             features={k: tf.Variable(v, trainable=False, name=f"catalog_{k}")
                                       for k, v in features.items()})
        init = tf.lookup.KeyValueTensorInitializer(tf.constant(list(ids), tf.string),
                                                   tf.range(self.size, dtype=tf.int64))
        self.index_table = tf.lookup.StaticHashTable(init, default_value=-1)

    @classmethod
    def from_files(cls, config, pattern: str, progress=print) -> "ItemCatalog":
        spec, item_id = config.features, config.features.item_id
        parsed: Dict[str, List[tf.Tensor]] = {}
        reader.scan(reader.list_files(pattern), spec.parse_spec("candidate"),
                    lambda batch: [parsed.setdefault(k, []).append(v) for k, v in batch.items()],
                    config.data.compression, config.data.corrupt_records, progress=progress)
        if not parsed:
            raise ValueError(f"the item files {pattern} hold no item")
        features = spec.prepare({k: tf.concat(v, axis=0) for k, v in parsed.items()})
        ids = np.array([v.decode("utf-8", "replace") for v in features[item_id].numpy().reshape(-1)], dtype=object)
        first = first_occurrences(ids)
        progress(f"item catalog: {len(first)} items from {pattern}")
        return cls(ids[first], {k: tf.gather(v, first) for k, v in features.items()})

    def gather(self, indices: tf.Tensor) -> Dict[str, tf.Tensor]:
        """Model inputs of the items at ``indices``."""
        return {k: tf.gather(v, indices) for k, v in self._v.features.items()}

    def ids_at(self, indices: tf.Tensor) -> tf.Tensor:
        return tf.gather(self._v.ids, indices)

    def index_of(self, ids: tf.Tensor) -> tf.Tensor:
        """Catalog row of each ID (-1 when the ID is not in the catalog)."""
        return self.index_table.lookup(ids)

    def indices_of(self, ids: Iterable[str]) -> np.ndarray:
        """NumPy version of ``index_of`` for building tables (-1 for unknown IDs)."""
        position = {v: i for i, v in enumerate(self.ids)}
        return np.array([position.get(v, -1) for v in ids], dtype=np.int64)


class KeyedItems:
    """Key (a user or request) -> list of catalog rows; ``sample(keys, n)`` draws n per key.

    A key with no list (or an unknown key) gets uniform catalog rows instead, so every row always has
    n extra negatives and the batch keeps a fixed shape; ``coverage`` says how many keys have lists.
    """

    def __init__(self, lists: Dict[str, Sequence[int]], catalog_size: int, name: str):
        lists = {k: np.asarray(v, dtype=np.int64) for k, v in lists.items() if len(v)}
        if not lists:
            raise ValueError(f"{name} negatives: no key has any item")
        keys = sorted(lists)
        lengths = np.array([len(lists[k]) for k in keys], dtype=np.int64)
        self.name, self.catalog_size, self.coverage = name, catalog_size, len(keys)
        self.starts = tf.constant(np.concatenate([[0], np.cumsum(lengths)[:-1]]), tf.int64)
        self.lengths = tf.constant(lengths)
        self.values = tf.constant(np.concatenate([lists[k] for k in keys]), tf.int64)
        init = tf.lookup.KeyValueTensorInitializer(tf.constant(keys, tf.string), tf.range(len(keys), dtype=tf.int64))
        self.table = tf.lookup.StaticHashTable(init, default_value=-1)

    def sample(self, keys: tf.Tensor, n: int) -> tf.Tensor:
        """[len(keys) * n] catalog rows: n uniform draws (with replacement) from each key's list."""
        row = self.table.lookup(tf.reshape(keys, [-1]))
        row = tf.repeat(row, n)
        known = row >= 0
        safe = tf.maximum(row, 0)
        length = tf.gather(self.lengths, safe)
        offset = tf.cast(tf.floor(tf.random.uniform(tf.shape(row)) * tf.cast(length, tf.float32)), tf.int64)
        picked = tf.gather(self.values, tf.gather(self.starts, safe) + tf.minimum(offset, length - 1))
        fallback = tf.random.uniform(tf.shape(row), 0, self.catalog_size, dtype=tf.int64)
        return tf.where(known, picked, fallback)
