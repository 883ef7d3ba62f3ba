"""Exposure-unclicked negatives: items a user (or request) was shown and did not click.

Production logs hold impressions with label 0; they are the closest thing to a true negative the logs
offer (shown, judged, passed over), unlike a random item the user may never have seen. Each training
row draws ``per_row`` of its key's unclicked items as extra negatives of the batch. Which events count
as unclicked is ``field < below`` (default: the label field < 1); on MovieLens, where every rating is
a positive, ``rating < 3`` reads a low rating as "seen and disliked".
"""
import collections
from typing import Optional

import numpy as np
import tensorflow as tf

from tfrec_towers.data import reader
from tfrec_towers.negatives.catalog import ItemCatalog, KeyedItems


__all__ = ["collect_unclicked"]


def field_kind(files, field: str, compression: str) -> tf.dtypes.DType:
    """The dtype of ``field`` in the first record that has it (int64, float32 or string)."""
    for path in files:
        for raw in reader.record_dataset(path, compression, limit=20):
            feature = tf.train.Example.FromString(raw.numpy()).features.feature.get(field)
            if feature is not None:
                return {"int64_list": tf.int64, "float_list": tf.float32,
                        "bytes_list": tf.string}[feature.WhichOneof("kind")]
    raise ValueError(f"no training record has the field {field!r}")


def collect_unclicked(config, files, catalog: ItemCatalog, key: str, field: Optional[str] = None,
                      below: float = 1.0, progress=print) -> KeyedItems:
    """One pass over the training logs: key -> catalog rows of its events with ``field < below``."""
    field = field or config.data.label
    if not field:
        raise ValueError("exposure negatives need negatives.exposure_field or data.label to tell unclicked events")
    item_id = config.features.item_id
    kind = field_kind(files, field, config.data.compression)
    spec = {key: tf.io.FixedLenFeature([], tf.string), item_id: config.features.by_name[item_id].parse_feature(),
            field: tf.io.FixedLenFeature([], kind)}
    lists = collections.defaultdict(list)
    events = 0

    def on_batch(parsed):
        nonlocal events
        mask = parsed[field].numpy() < below
        events += int(mask.sum())
        keys = parsed[key].numpy()[mask]
        items = np.asarray(config.features.prepare({item_id: parsed[item_id]})[item_id]).reshape(-1)[mask]
        for k, i in zip(keys, items):
            lists[k.decode("utf-8", "replace")].append(i.decode("utf-8", "replace"))

    reader.scan(files, spec, on_batch, config.data.compression, config.data.corrupt_records, progress=progress)
    rows = {k: catalog.indices_of(v) for k, v in lists.items()}
    missing = sum(int((r < 0).sum()) for r in rows.values())
    rows = {k: r[r >= 0] for k, r in rows.items()}
    progress(f"exposure negatives: {events} events with {field} < {below} over {len(rows)} {key}s"
             + (f"; {missing} of their items are not in the catalog and were left out" if missing else ""))
    return KeyedItems(rows, catalog.size, "exposure")
