"""MovieLens-100K -> event logs in the project's schema (see ``writer.py``).

The data is read from a local copy, never redistributed: the ``data_dir`` given, else
``$TFREC_TOWERS_ML100K``. It can be fetched with ``download_movielens_100k``.

Every rating is a positive event (``label=1``, ``rating`` = the stars); ``request_id`` is
``"{user}-{timestamp}"``. Events are written in the order of the TFRS tutorial's seed-42 shuffle of
the rating rows, whatever the protocol, so a reader with a small shuffle buffer still sees users and
times mixed, and the order is deterministic.
"""
import os
import shutil
import tempfile
import time
import urllib.request
import zipfile
from typing import Callable, List, Optional, Tuple

import numpy as np
import pandas as pd
import tensorflow as tf

from tfrec_towers.data.writer import (EVENT_KINDS, age_bucket, check_out_dir, past_items, recent_counts,
                                      trend_bucket, write_log_dataset, write_tfrecords)

__all__ = ["URL", "ENV_VAR", "PROTOCOLS", "GENRES", "default_data_dir", "download_movielens_100k", "tfrs_order",
           "convert_movielens", "events_by_time", "catalog_at", "write_time_window"]

URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
ENV_VAR = "TFREC_TOWERS_ML100K"
PROTOCOLS = ("tfrs", "last", "files")
#: The 19 genre flags of u.item, in the order of u.genre.
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
          "War", "Western")
_RATING_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]


def default_data_dir() -> Optional[str]:
    """``$TFREC_TOWERS_ML100K``, or None: an installed library knows no place of its own for the data
    (the repository's benchmarks and tests fall back to the checkout's ``../shared/datasets``)."""
    return os.environ.get(ENV_VAR) or None


def download_movielens_100k(dest: str) -> str:
    """Download and unzip ML-100K into ``dest``; returns ``dest/ml-100k`` (set ``$TFREC_TOWERS_ML100K`` to it)."""
    os.makedirs(dest, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        archive = os.path.join(tmp, "ml-100k.zip")
        with urllib.request.urlopen(URL) as response, open(archive, "wb") as f:
            shutil.copyfileobj(response, f)
        with zipfile.ZipFile(archive) as z:
            z.extractall(dest)
    return os.path.join(dest, "ml-100k")


def _require(path: Optional[str]) -> str:
    if not path:
        raise FileNotFoundError(
            f"no MovieLens-100K directory: give one (--data-dir, data_dir) or set ${ENV_VAR} to the unzipped "
            f"ml-100k directory; the dataset is downloadable from {URL} "
            "(tfrec_towers.data.movielens.download_movielens_100k does that).")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"MovieLens-100K file or directory not found: {path}. Point ${ENV_VAR} (or data_dir) at the "
            f"unzipped ml-100k directory; the dataset is downloadable from {URL} "
            "(tfrec_towers.data.movielens.download_movielens_100k does that).")
    return path


def _read_ratings(path: str) -> pd.DataFrame:
    df = pd.read_csv(_require(path), sep="\t", names=_RATING_COLUMNS, dtype=str)
    return df.astype({"rating": np.float64, "timestamp": np.int64})


def _read_users(data_dir: str) -> pd.DataFrame:
    users = pd.read_csv(_require(os.path.join(data_dir, "u.user")), sep="|", dtype=str, keep_default_na=False,
                        names=["user_id", "user_age", "user_gender", "user_occupation", "zip"])
    users["user_age"] = users["user_age"].astype(np.int64)
    users["user_age_bucket"] = age_bucket(users["user_age"])
    users["user_zip_prefix"] = users.pop("zip").str[:3]
    return users


def _read_items(data_dir: str) -> pd.DataFrame:
    """u.item -> item_id, item_title, item_genres (names of the set flags), item_year (NA if unknown)."""
    raw = pd.read_csv(_require(os.path.join(data_dir, "u.item")), sep="|", encoding="latin-1", header=None,
                      dtype=str, keep_default_na=False)
    flags = raw.iloc[:, 5:5 + len(GENRES)].to_numpy() == "1"
    dates = raw[2].str.strip()
    return pd.DataFrame({
        "item_id": raw[0],
        "item_title": raw[1],
        "item_genres": [[g for g, on in zip(GENRES, row) if on] for row in flags],
        # "01-Jan-1995" -> 1995; an empty release date stays missing.
        "item_year": pd.array([int(d[-4:]) if d else None for d in dates], dtype="Int64"),
    })


def tfrs_order(n: int) -> np.ndarray:
    """The TFRS tutorial's shuffle: ``tf.random.set_seed(42)``, then ``shuffle(n, seed=42)`` of ``range(n)``.

    Resets TensorFlow's global seed, as the tutorial does (the shuffle depends on it).
    """
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    tf.random.set_seed(42)
    ds = tf.data.Dataset.range(n).shuffle(n, seed=42, reshuffle_each_iteration=False)
    return next(iter(ds.batch(n))).numpy()


def _test_mask(ratings: pd.DataFrame, protocol: str, order: np.ndarray, num_test_file_rows: int) -> np.ndarray:
    is_test = np.zeros(len(ratings), dtype=bool)
    if protocol == "tfrs":
        is_test[order[len(ratings) * 4 // 5:]] = True
    elif protocol == "last":  # each user's latest rating; among equal timestamps the later row
        by_time = np.lexsort((np.arange(len(ratings)), ratings["timestamp"].to_numpy(), ratings["user_id"].to_numpy()))
        users = ratings["user_id"].to_numpy()[by_time]
        last = np.append(users[1:] != users[:-1], True)
        is_test[by_time[last]] = True
    else:  # files: the test file's rows were appended after the train file's
        is_test[len(ratings) - num_test_file_rows:] = True
    return is_test


def convert_movielens(data_dir: Optional[str], out_dir: str, protocol: str = "tfrs", history_len: int = 50,
                      train_file: Optional[str] = None, test_file: Optional[str] = None, num_shards: int = 4,
                      overwrite: bool = False, progress: Optional[Callable[[str], None]] = print) -> dict:
    """Convert MovieLens-100K to train/test event logs and an item catalog; returns the metadata.

    Args:
      data_dir: the unzipped ml-100k directory (None: ``default_data_dir()``).
      out_dir: where the dataset goes (see ``writer.write_log_dataset`` for the layout).
      protocol: how ratings are split:
        ``"tfrs"``: the TFRS retrieval tutorial's 80/20 random split (80,000 / 20,000). The tutorial
        shuffles tfds's record order, which we cannot read here, so the same procedure is applied to
        u.data's order: same sizes and method, not the same rows.
        ``"last"``: each user's latest rating (ties: the later row of u.data) is the test event (943).
        ``"files"``: ``train_file`` and ``test_file`` in u.data format (e.g. ua.base / ua.test);
        relative paths are taken from ``data_dir``.
      history_len: cap of ``item_history`` (the user's most recent training ratings strictly before
        the event); 50 is about a median user's whole training history (65 ratings, 80% in train)
        while keeping the records of heavy raters (up to 737 ratings) small.
      num_shards: files per split; 4 lets a reader interleave files on a few cores.
      overwrite: replace a non-empty ``out_dir``.
      progress: called with a line per step (None: silent).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if history_len < 0:
        raise ValueError(f"history_len must be >= 0, got {history_len}")
    check_out_dir(out_dir, overwrite)
    progress = progress or (lambda message: None)
    started = time.time()
    data_dir = os.path.abspath(_require(data_dir or default_data_dir()))
    if protocol == "files":
        if not (train_file and test_file):
            raise ValueError("protocol 'files' needs train_file and test_file (e.g. 'ua.base' and 'ua.test')")
        test_part = _read_ratings(os.path.join(data_dir, test_file))
        ratings = pd.concat([_read_ratings(os.path.join(data_dir, train_file)), test_part], ignore_index=True)
        num_test_rows = len(test_part)
    else:
        if train_file or test_file:
            raise ValueError(f"train_file/test_file are only used by protocol 'files', not {protocol!r}")
        ratings, num_test_rows = _read_ratings(os.path.join(data_dir, "u.data")), 0
    users, items = _read_users(data_dir), _read_items(data_dir)
    for column, known in (("user_id", users), ("item_id", items)):
        unknown = set(ratings[column]) - set(known[column])
        if unknown:
            raise ValueError(f"ratings refer to {len(unknown)} {column}(s) missing from {data_dir}, "
                             f"e.g. {sorted(unknown)[:5]}")
    progress(f"read {len(ratings)} ratings, {len(users)} users, {len(items)} items from {data_dir}")

    order = tfrs_order(len(ratings))
    is_test = _test_mask(ratings, protocol, order, num_test_rows)
    events = ratings.assign(label=np.int64(1), request_id=ratings["user_id"] + "-" + ratings["timestamp"].astype(str))
    events = events.merge(users, on="user_id", how="left").merge(items, on="item_id", how="left")
    events["item_history"] = past_items(events["user_id"], events["item_id"], events["timestamp"],
                                        ~is_test, history_len)
    events = events.iloc[order]
    test_in_order = is_test[order]
    metadata = {"source": "movielens-100k", "protocol": protocol, "data_dir": data_dir,
                "num_users": int(ratings["user_id"].nunique()), "history_len": history_len,
                "order": "TFRS tutorial shuffle of the rating rows (seed 42)"}
    if protocol == "files":
        metadata.update(train_file=train_file, test_file=test_file)
    meta = write_log_dataset(out_dir, events[~test_in_order], events[test_in_order], items, metadata,
                             num_shards=num_shards, overwrite=overwrite, progress=progress)
    progress(f"converted MovieLens-100K ({protocol}) in {time.time() - started:.1f}s")
    return meta


def events_by_time(data_dir: Optional[str] = None, history_len: int = 50,
                   trend_days: float = 14) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """(events, items): every rating of u.data as a positive event in the log schema, sorted by timestamp
    (u.data's row order among equal ones), and the item catalog (u.item), for time-ordered protocols
    such as continuous training (``benchmarks/continuous.py``; write windows with ``write_time_window``).

    ``item_history`` is the user's items of *all* ratings with a strictly earlier timestamp, the
    ``history_len`` most recent (most recent last): the context a deployed model has at that time.
    ``item_trend`` is ``trend_bucket`` of the item's ratings in the ``trend_days`` days before the event
    (strictly earlier): what a daily item-statistics job knows at that time; ``catalog_at`` gives the
    catalog with the same feature at a moment, for embedding the items then.
    """
    data_dir = os.path.abspath(_require(data_dir or default_data_dir()))
    ratings = _read_ratings(os.path.join(data_dir, "u.data"))
    events = ratings.assign(label=np.int64(1), request_id=ratings["user_id"] + "-" + ratings["timestamp"].astype(str))
    events = events.merge(_read_users(data_dir), on="user_id", how="left")
    items = _read_items(data_dir)
    events = events.merge(items, on="item_id", how="left")
    events["item_history"] = past_items(events["user_id"], events["item_id"], events["timestamp"],
                                        np.ones(len(events), dtype=bool), history_len)
    events["item_trend"] = trend_bucket(recent_counts(events["item_id"], events["timestamp"], events["item_id"],
                                                      events["timestamp"], int(trend_days * 86400)))
    order = np.argsort(events["timestamp"].to_numpy(), kind="stable")
    return events.iloc[order].reset_index(drop=True), items


def catalog_at(events: pd.DataFrame, items: pd.DataFrame, time: int, trend_days: float = 14) -> pd.DataFrame:
    """The catalog ``items`` with ``item_trend`` as of ``time`` (unix seconds): ``trend_bucket`` of each
    item's events in ``[time - trend_days, time)``, as ``events_by_time`` computes it for every event."""
    ids = items["item_id"].to_numpy(dtype=object)
    counts = recent_counts(events["item_id"], events["timestamp"], ids, np.full(len(ids), int(time)),
                           int(trend_days * 86400))
    return items.assign(item_trend=trend_bucket(counts))


def write_time_window(events: pd.DataFrame, path_prefix: str, start: Optional[int] = None, end: Optional[int] = None,
                      num_shards: int = 1, seed: int = 0) -> List[str]:
    """Write the events with ``start <= timestamp < end`` (None: unbounded) as GZIP TFRecord event logs
    (``writer.write_tfrecords``: ``path_prefix-0000i-of-0000N.tfrecord.gz``), in a seeded random order
    so that a reader with a small shuffle buffer still sees times mixed; returns the paths. Raises
    ValueError for an empty window (a log without records cannot be trained on).

    ``events`` as ``events_by_time`` gives them (or any rows of the log schema); an item catalog is
    written with ``write_tfrecords(items, prefix, 1, "GZIP", ITEM_KINDS)``.
    """
    keep = np.ones(len(events), dtype=bool)
    if start is not None:
        keep &= events["timestamp"].to_numpy() >= start
    if end is not None:
        keep &= events["timestamp"].to_numpy() < end
    if not keep.any():
        raise ValueError(f"no event with {start} <= timestamp < {end}")
    window = events[keep]
    window = window.iloc[np.random.default_rng(seed).permutation(len(window))]
    return write_tfrecords(window, path_prefix, num_shards, "GZIP", EVENT_KINDS)
