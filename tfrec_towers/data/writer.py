"""Rows -> tf.Example TFRecords, and the event-log layout that every generator writes.

The log schema (shared by the MovieLens converter and the synthetic generator) is ``EVENT_KINDS`` and
``ITEM_KINDS``; ``write_log_dataset`` writes it in the layout readers expect::

    OUT/train/part-00000-of-0000N.tfrecord.gz   events (GZIP, N shards)
    OUT/test/part-00000-of-0000N.tfrecord.gz
    OUT/items/part-00000-of-00001.tfrecord.gz   the item catalog
    OUT/metadata.json                           counts, protocol, absolute file globs, feature kinds

Writing speed: a serialized message is the concatenation of its fields, and protobuf parsers merge
concatenated messages, so a row is written as the concatenation of one-feature Examples. Each
(column, value) cell is serialized once and reused (user and item fields repeat on every event),
which writes 2-3x faster than building a message per row, and makes the bytes deterministic.
"""
import itertools
import json
import math
import operator
import os
import shutil
import tempfile
import time
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd
import tensorflow as tf

__all__ = ["AGE_BUCKETS", "EVENT_KINDS", "ITEM_KINDS", "KINDS", "age_bucket", "check_out_dir", "past_items",
           "recent_counts", "serialize", "to_example", "trend_bucket", "write_log_dataset", "write_tfrecords"]


KINDS = ("int64", "float", "bytes")

#: Kinds of the event features. ``device`` is written by the synthetic generator only.
EVENT_KINDS: Dict[str, str] = {
    "user_id": "bytes", "item_id": "bytes", "timestamp": "int64", "label": "int64", "rating": "float",
    "request_id": "bytes", "user_age": "int64", "user_age_bucket": "bytes", "user_gender": "bytes",
    "user_occupation": "bytes", "user_zip_prefix": "bytes", "item_title": "bytes", "item_genres": "bytes",
    "item_year": "int64", "item_history": "bytes", "device": "bytes", "item_trend": "int64",
}
#: Kinds of the item-catalog features (``item_trend`` where a time-ordered protocol writes it).
ITEM_KINDS: Dict[str, str] = {k: EVENT_KINDS[k] for k in ("item_id", "item_title", "item_genres", "item_year",
                                                          "item_trend")}

#: MovieLens' age buckets (as in ML-1M's users.dat), used for ``user_age_bucket``.
AGE_BUCKETS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
_AGE_EDGES = np.array([18, 25, 35, 45, 50, 56])

# Distinct cells cached per column; beyond it a column's values (timestamps, histories) rarely repeat.
_CACHE_SIZE = 1 << 16


def age_bucket(ages) -> np.ndarray:
    """Raw ages -> ``AGE_BUCKETS`` labels (object array of str)."""
    return np.asarray(AGE_BUCKETS, dtype=object)[np.searchsorted(_AGE_EDGES, np.asarray(ages), side="right")]


# --- one row -> serialized tf.Example -------------------------------------------------------------

def _scalar_kind(value) -> Optional[str]:
    if isinstance(value, (bool, int, np.integer, np.bool_)):
        return "int64"
    if isinstance(value, (float, np.floating)):
        return "float"
    if isinstance(value, (str, bytes)):
        return "bytes"
    return None


_ARRAY_KINDS = {"i": "int64", "u": "int64", "b": "int64", "f": "float", "U": "bytes", "S": "bytes"}


def _list_kind(values: list) -> Optional[str]:
    """The one kind of all elements (ints among floats are floats); bytes for an empty list."""
    found = {_scalar_kind(v) for v in values}
    if not found:
        return "bytes"
    if found == {"int64", "float"}:
        return "float"
    return found.pop() if len(found) == 1 else None


def _is_nan(value) -> bool:
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def _convert(value, kind: str):
    """One element as ``kind`` wants it; TypeError (caught by the caller) if it cannot be."""
    if kind == "int64":
        if isinstance(value, (bool, int, np.integer, np.bool_)):
            return int(value)
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return int(value)
    elif kind == "float":
        if isinstance(value, (bool, int, float, np.integer, np.floating, np.bool_)):
            return float(value)
    elif isinstance(value, bytes):
        return value
    elif isinstance(value, str):
        return value.encode("utf-8")
    elif isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(value).encode("utf-8")  # an integer ID forced to bytes
    raise TypeError


def _feature(name: str, value, kind: Optional[str]) -> Optional[tf.train.Feature]:
    """The feature for one cell, or None when the value is missing (the feature is then absent).

    Missing: None, pandas NA, or a NaN in an int64/bytes column (pandas' marker for a missing value
    there). A NaN in a float column is a value and is kept.
    """
    if value is None or value is pd.NA or (kind in ("int64", "bytes") and _is_nan(value)):
        return None
    if isinstance(value, np.ndarray):
        values = value.tolist()
        kind = kind or _ARRAY_KINDS.get(value.dtype.kind) or _list_kind(values)
    elif isinstance(value, (list, tuple)):
        values = list(value)
        kind = kind or _list_kind(values)
    else:
        values = [value]
        kind = kind or _scalar_kind(value)
    if kind is None:
        raise TypeError(f"column {name!r}: cannot write {type(value).__name__} value {value!r} to a "
                        "tf.Example (use int, float, str, bytes, or a list of one of them)")
    try:
        return _build(kind, values)
    except (TypeError, ValueError):  # not the plain Python type protobuf takes: convert, or fail
        pass
    try:
        return _build(kind, [_convert(v, kind) for v in values])
    except (TypeError, ValueError) as e:
        raise type(e)(f"column {name!r}: cannot write {value!r} as {kind}"
                      + (f" ({e})" if str(e) else "")) from None


def _build(kind: str, values: list) -> tf.train.Feature:
    if kind == "int64":  # operator.index: bools as ints (protobuf deprecates them), never floats
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[operator.index(v) for v in values]))
    if kind == "float":
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))
    values = [v.encode("utf-8") if isinstance(v, str) else v for v in values]
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _cell(name: str, value, kind: Optional[str]) -> bytes:
    """One value as a serialized one-feature Example (empty when the feature is absent)."""
    feature = _feature(name, value, kind)
    if feature is None:
        return b""
    return tf.train.Example(features=tf.train.Features(feature={name: feature})).SerializeToString()


class _Encoder:
    """Serializes rows, given column-wise, as concatenated one-feature Examples.

    int64 and bytes cells are cached per column (across calls); floats are not, since 0.0 and -0.0
    are equal keys but different values.
    """

    def __init__(self, kinds: Optional[Mapping[str, str]] = None):
        bad = {k: v for k, v in (kinds or {}).items() if v not in KINDS}
        if bad:
            raise ValueError(f"kinds must be one of {KINDS}, got {bad}")
        self.kinds = dict(kinds or {})
        self._caches: Dict[str, dict] = {}

    def _column(self, name: str, values: list) -> List[bytes]:
        kind = self.kinds.get(name)
        if kind not in ("int64", "bytes"):
            return [_cell(name, v, kind) for v in values]
        keys = [tuple(v) if isinstance(v, (list, np.ndarray)) else v for v in values]
        try:
            distinct = dict(zip(keys, values))
        except TypeError:  # an unhashable value: no caching (and most likely an error below)
            return [_cell(name, v, kind) for v in values]
        cache = self._caches.setdefault(name, {})
        cells = {k: cache[k] if k in cache else _cell(name, v, kind) for k, v in distinct.items()}
        if len(cache) < _CACHE_SIZE:
            cache.update(cells)
        return [cells[k] for k in keys]

    def encode(self, columns: Mapping[str, list]) -> List[bytes]:
        """{column: values of n rows} -> n serialized Examples."""
        return [b"".join(row) for row in zip(*(self._column(name, values) for name, values in columns.items()))]


def to_example(row: Mapping, kinds: Optional[Mapping[str, str]] = None) -> tf.train.Example:
    """One row (column -> value) as a tf.train.Example.

    int/bool -> int64_list, float -> float_list (NaN kept: the reader rejects it, naming the feature),
    str/bytes -> bytes_list (str as UTF-8), a list/tuple/array -> a list of its elements' kind,
    None/pandas NA -> feature absent. ``kinds`` ({column: "int64"|"float"|"bytes"}) forces a column's
    kind, and gives empty lists theirs (bytes otherwise). Unsupported values raise TypeError naming
    the column.
    """
    (serialized,) = _Encoder(kinds).encode({name: [value] for name, value in row.items()})
    return tf.train.Example.FromString(serialized)


def serialize(row: Mapping, kinds: Optional[Mapping[str, str]] = None) -> bytes:
    """One row as serialized tf.Example bytes, columns in name order: the same row always gives the
    same bytes (``to_example``'s conventions)."""
    (serialized,) = _Encoder(kinds).encode({name: [row[name]] for name in sorted(row)})
    return serialized


# --- many rows -> sharded TFRecord files ----------------------------------------------------------

_CHUNK = 8192  # rows encoded at a time: bounds memory, whatever the number of rows


def _dataframe_kinds(df: pd.DataFrame) -> Dict[str, str]:
    kinds = {}
    for name, dtype in df.dtypes.items():
        if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_integer_dtype(dtype):
            kinds[name] = "int64"
        elif pd.api.types.is_float_dtype(dtype):
            kinds[name] = "float"
        elif pd.api.types.is_string_dtype(dtype) and not pd.api.types.is_object_dtype(dtype):
            kinds[name] = "bytes"
    return kinds  # object columns: inferred per value


def _column_chunks(rows: Union[pd.DataFrame, Iterable[Mapping]]) -> Iterator[Dict[str, list]]:
    """Rows as chunks of {column: Python values}. A key missing from a dict row is an absent feature;
    a NaN in a DataFrame's object column is pandas' missing value, hence absent too."""
    if isinstance(rows, pd.DataFrame):
        for lo in range(0, len(rows), _CHUNK):
            chunk = rows.iloc[lo:lo + _CHUNK]
            yield {name: ([None if _is_nan(v) else v for v in chunk[name].tolist()]
                          if pd.api.types.is_object_dtype(chunk[name].dtype) else chunk[name].tolist())
                   for name in rows.columns}
        return
    rows = iter(rows)
    while True:
        chunk = list(itertools.islice(rows, _CHUNK))
        if not chunk:
            return
        names = list(dict.fromkeys(name for row in chunk for name in row))
        yield {name: [row.get(name) for row in chunk] for name in names}


def write_tfrecords(rows: Union[pd.DataFrame, Iterable[Mapping]], path_prefix: str, num_shards: int = 1,
                    compression: str = "GZIP", kinds: Optional[Mapping[str, str]] = None) -> List[str]:
    """Write rows as tf.Examples to ``num_shards`` files, round-robin; returns the paths.

    Files are ``path_prefix + "-00000-of-0000N.tfrecord"`` (+ ``.gz`` with GZIP). A DataFrame's dtypes
    give the column kinds (object columns are inferred per value); ``kinds`` overrides them.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if compression not in ("GZIP", "ZLIB", ""):
        raise ValueError(f"compression must be GZIP, ZLIB or '' (none), got {compression!r}")
    if isinstance(rows, pd.DataFrame):
        kinds = {**_dataframe_kinds(rows), **(kinds or {})}
    encoder = _Encoder(kinds)
    suffix = ".tfrecord" + (".gz" if compression == "GZIP" else "")
    paths = [f"{path_prefix}-{i:05d}-of-{num_shards:05d}{suffix}" for i in range(num_shards)]
    os.makedirs(os.path.dirname(os.path.abspath(path_prefix)), exist_ok=True)
    # zlib level 1: about 4x faster to write than the default 6, for files about 20% larger.
    options = tf.io.TFRecordOptions(compression_type=compression, compression_level=1 if compression else None)
    writers = [tf.io.TFRecordWriter(p, options=options) for p in paths]
    try:
        written = 0
        for columns in _column_chunks(rows):
            for record in encoder.encode(columns):
                writers[written % num_shards].write(record)
                written += 1
    finally:
        for w in writers:
            w.close()
    return paths



# --- the event-log layout -------------------------------------------------------------------------

def past_items(users: Sequence, items: Sequence, timestamps: Sequence[int], source: Sequence[bool],
               max_len: int) -> List[list]:
    """For each event, the items of the same user's ``source`` events with a strictly earlier timestamp.

    Most recent last, capped at the ``max_len`` most recent; equal timestamps keep row order. The
    generators pass the training positives as sources, so that no test event ever leaks into a
    history. Sorting once and binary-searching makes this O(n log n).
    """
    codes = pd.factorize(np.asarray(users, dtype=object))[0].astype(np.int64)
    times = np.unique(np.asarray(timestamps, dtype=np.int64), return_inverse=True)[1].reshape(-1)
    span = times.max(initial=0) + 1
    key = codes * span + times  # (user, time rank) as one sortable integer
    src = np.flatnonzero(np.asarray(source, dtype=bool))
    src = src[np.argsort(key[src], kind="stable")]  # ties keep row order
    src_key = key[src]
    end = np.searchsorted(src_key, key, side="left")
    first = np.searchsorted(src_key, codes * span, side="left")
    start = np.maximum(first, end - max_len)
    src_items = np.asarray(items, dtype=object)[src].tolist()
    return [src_items[s:e] for s, e in zip(start.tolist(), end.tolist())]


def recent_counts(items: Sequence, timestamps: Sequence[int], at_items: Sequence, at_times: Sequence[int],
                  seconds: int) -> np.ndarray:
    """For each (item, time) of ``at_items``/``at_times``: how many events (``items``/``timestamps``) are of
    that item with ``time - seconds <= timestamp < time`` (strictly before: an event never counts
    itself). Sorting once and binary-searching makes this O(n log n)."""
    codes, _ = pd.factorize(np.concatenate([np.asarray(items, dtype=object), np.asarray(at_items, dtype=object)]))
    codes = codes.astype(np.int64)
    ts, at = np.asarray(timestamps, dtype=np.int64), np.asarray(at_times, dtype=np.int64)
    lo = min(ts.min(initial=0), at.min(initial=0) - seconds)
    span = max(ts.max(initial=0), at.max(initial=0)) - lo + 1
    key = np.sort(codes[:len(ts)] * span + (ts - lo))  # (item, time) as one sortable integer
    at_key = codes[len(ts):] * span + (at - lo)
    return (np.searchsorted(key, at_key, side="left") - np.searchsorted(key, at_key - seconds, side="left"))


def trend_bucket(counts) -> np.ndarray:
    """Event counts -> ``floor(log2(1 + n))`` (0, 1, 2-3, 4-7, ... -> 0, 1, 2, 3, ...): a categorical
    feature of an item's recent popularity whose few values all occur in training, so an item the
    model never saw still gets a trained embedding for "how much it is watched now"."""
    return np.floor(np.log2(1 + np.asarray(counts, dtype=np.float64))).astype(np.int64)


def _glob(out_dir: str, split: str) -> str:
    return os.path.join(out_dir, split, "part-*.tfrecord.gz")


def check_out_dir(out_dir: str, overwrite: bool) -> None:
    """Refuse a non-empty ``out_dir`` unless ``overwrite`` (generators call it first, to fail fast)."""
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)) and not overwrite:
        raise FileExistsError(f"{os.path.abspath(out_dir)} exists and is not empty; pass overwrite=True "
                              "(--overwrite) to replace it")


def write_log_dataset(out_dir: str, train: pd.DataFrame, test: pd.DataFrame, items: pd.DataFrame,
                      metadata: Mapping, num_shards: int = 4, overwrite: bool = False,
                      progress: Optional[Callable[[str], None]] = print,
                      kinds: Mapping[str, str] = EVENT_KINDS) -> dict:
    """Write train/test events and the item catalog in the layout above; returns the metadata.

    Rows are written in the order given; ``kinds`` gives each column's tf.Example kind (the log
    schema by default; other converters pass their own). ``metadata`` is completed with the counts, ``num_shards``,
    absolute ``files`` globs and the feature kinds. Everything is written to a temporary sibling
    directory renamed into place at the end, so a crash never leaves a half-written ``out_dir``; a
    non-empty ``out_dir`` is only replaced with ``overwrite=True``.
    """
    out_dir = os.path.abspath(out_dir)
    check_out_dir(out_dir, overwrite)
    progress = progress or (lambda message: None)
    parent, name = os.path.split(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the renamed dataset should be readable like any
    started = time.time()
    try:
        for split, rows, shards in (("train", train, num_shards), ("test", test, num_shards), ("items", items, 1)):
            progress(f"writing {len(rows)} {split} records ...")
            write_tfrecords(rows, os.path.join(tmp, split, "part"), shards, "GZIP", kinds)
        meta = {**metadata, "num_train": len(train), "num_test": len(test), "num_items": len(items),
                "num_shards": num_shards,
                "files": {split: _glob(out_dir, split) for split in ("train", "test", "items")},
                "features": {"events": {c: kinds[c] for c in train.columns if c in kinds},
                             "items": {c: kinds[c] for c in items.columns if c in kinds}}}
        with open(os.path.join(tmp, "metadata.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
        if not os.path.lexists(out_dir):
            os.rename(tmp, out_dir)
        else:  # empty, or overwrite=True: move it aside, swap the new one in, then delete the old
            aside = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
            os.rename(out_dir, os.path.join(aside, name))
            try:
                os.rename(tmp, out_dir)
            except BaseException:
                os.rename(os.path.join(aside, name), out_dir)
                os.rmdir(aside)
                raise
            shutil.rmtree(aside)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(f"wrote {out_dir} ({meta['num_train']} train, {meta['num_test']} test, "
             f"{meta['num_items']} items) in {time.time() - started:.1f}s")
    return meta
