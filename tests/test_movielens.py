"""MovieLens-100K conversion on the real dataset, read back from the TFRecords with TensorFlow.

The dataset is never copied into the repository: it is read from $TFREC_TOWERS_ML100K (default
<repo>/../shared/datasets/ml-100k); the tests are skipped when it is not there.
"""
import bisect
import collections
import glob
import json
import os

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tfrec_towers.data.movielens import ENV_VAR, URL, convert_movielens, default_data_dir, tfrs_order

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get(ENV_VAR) or os.path.join(REPO, "..", "shared", "datasets", "ml-100k")
pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(DATA, "u.data")),
    reason=f"MovieLens-100K not found at {DATA}: set ${ENV_VAR} to the unzipped ml-100k folder ({URL})")


def u_data(path=os.path.join(DATA, "u.data")):
    return pd.read_csv(path, sep="\t", names=["user_id", "item_id", "rating", "timestamp"], dtype=str)


def convert(tmp_path_factory, name, **kwargs):
    out = tmp_path_factory.mktemp(name) / "logs"
    return convert_movielens(DATA, str(out), progress=None, **kwargs)


def load(meta, log_reader, splits=("train", "test", "items")):
    return [log_reader(meta["files"][split], meta["features"]["items" if split == "items" else "events"])
            for split in splits]


def num_records(pattern):
    records = tf.data.TFRecordDataset(glob.glob(pattern), compression_type="GZIP")
    return sum(len(batch) for batch in records.batch(65536))


def check_histories(train, events, cap):
    """Each event's history is exactly its user's ``train`` ratings strictly before it, most recent
    last, capped at ``cap`` (timestamps compared, as equal timestamps may come in either order)."""
    train_time = dict(zip(zip(train.user_id, train.item_id), train.timestamp.astype(np.int64)))
    user_times = collections.defaultdict(list)
    for (user, _), ts in train_time.items():
        user_times[user].append(ts)
    for times in user_times.values():
        times.sort()
    for user, ts, history in zip(events.user_id, events.timestamp, events.item_history):
        times = [train_time[(user, item)] for item in history]  # KeyError: not a train item of the user
        earlier = user_times[user][:bisect.bisect_left(user_times[user], ts)]
        assert times == (earlier[-cap:] if cap else [])


def check_split(meta, log_reader, test_ratings):
    """The test split holds exactly ``test_ratings``; the rest of u.data is train (counted), and test
    histories come from it."""
    (test,) = load(meta, log_reader, ["test"])
    test_pairs = set(zip(test_ratings.user_id, test_ratings.item_id))
    assert set(zip(test.user_id, test.item_id)) == test_pairs and len(test) == len(test_ratings)
    ratings = u_data()
    train = ratings[[pair not in test_pairs for pair in zip(ratings.user_id, ratings.item_id)]]
    assert meta["num_train"] == len(train) == num_records(meta["files"]["train"])
    check_histories(train, test, meta["history_len"])


@pytest.fixture(scope="module")
def tfrs(tmp_path_factory, log_reader):
    meta = convert(tmp_path_factory, "tfrs", protocol="tfrs", history_len=5)
    return (meta, *load(meta, log_reader))


def test_tfrs_split_counts_and_layout(tfrs):
    meta, train, test, items = tfrs
    assert (meta["num_train"], meta["num_test"], meta["num_items"], meta["num_users"]) == (80_000, 20_000, 1_682, 943)
    assert (len(train), len(test), len(items)) == (80_000, 20_000, 1_682)
    assert meta["protocol"] == "tfrs" and meta["history_len"] == 5 and meta["num_shards"] == 4
    assert len(glob.glob(meta["files"]["train"])) == 4 and len(glob.glob(meta["files"]["items"])) == 1
    with open(os.path.join(os.path.dirname(os.path.dirname(meta["files"]["train"])), "metadata.json")) as f:
        assert json.load(f) == meta
    assert (train.label == 1).all() and (test.label == 1).all()
    assert set(train.rating) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_tfrs_split_is_the_tutorial_procedure_on_u_data_order(tfrs):
    _, train, test, _ = tfrs
    ratings = u_data()
    order = tfrs_order(len(ratings))
    expected_test = ratings.iloc[order[80_000:]]
    assert set(zip(test.user_id, test.item_id)) == set(zip(expected_test.user_id, expected_test.item_id))
    first = ratings.iloc[order[0]]  # written in the shuffle's order: shard 0 starts with its first row
    assert (train.user_id[0], train.item_id[0]) == (first.user_id, first.item_id)


def test_histories_come_from_earlier_train_events_only(tfrs):
    _, train, test, _ = tfrs
    test_pairs = set(zip(test.user_id, test.item_id))
    for events in (train, test):
        assert not any((user, item) in test_pairs
                       for user, history in zip(events.user_id, events.item_history) for item in history)
        check_histories(train, events, cap=5)
        assert events.item_history.map(len).max() == 5
    assert (train.item_history.map(len) == 5).mean() > 0.9


def test_profile_and_item_fields(tfrs):
    _, train, test, items = tfrs
    events = pd.concat([train, test], ignore_index=True)
    row = events[(events.user_id == "196") & (events.item_id == "242")].iloc[0]  # u.data's first line
    assert (row.timestamp, row.rating, row.request_id) == (881250949, 3.0, "196-881250949")
    assert (row.user_age, row.user_age_bucket, row.user_gender, row.user_occupation, row.user_zip_prefix) == (
        49, "45-49", "M", "writer", "551")
    # The year is the release date's (24-Jan-1997), not the title's.
    assert (row.item_title, row.item_genres, row.item_year) == ("Kolya (1996)", ["Comedy"], 1997)
    catalog = items.set_index("item_id")
    assert catalog.loc["1"].item_title == "Toy Story (1995)"
    assert catalog.loc["1"].item_genres == ["Animation", "Children's", "Comedy"] and catalog.loc["1"].item_year == 1995
    assert catalog.loc["267"].item_genres == ["unknown"] and pd.isna(catalog.loc["267"].item_year)  # no date
    assert catalog.item_year.isna().sum() == 1
    assert set(events.user_age_bucket) == {"<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"}


def test_last_protocol_tests_each_users_latest_rating(tmp_path_factory, log_reader):
    meta = convert(tmp_path_factory, "last", protocol="last", history_len=10, num_shards=2)
    assert (meta["num_train"], meta["num_test"]) == (99_057, 943)
    ratings = u_data().astype({"timestamp": np.int64})
    ratings["row"] = np.arange(len(ratings))
    latest = ratings.sort_values(["user_id", "timestamp", "row"]).groupby("user_id").tail(1)  # ties: later row
    check_split(meta, log_reader, latest)


def test_files_protocol(tmp_path, log_reader):
    ratings = u_data()
    base, held_out = tmp_path / "my.base", tmp_path / "my.test"
    ratings[ratings.index % 10 != 0].to_csv(base, sep="\t", header=False, index=False)
    ratings[ratings.index % 10 == 0].to_csv(held_out, sep="\t", header=False, index=False)
    meta = convert_movielens(DATA, str(tmp_path / "logs"), protocol="files", train_file=str(base),
                             test_file=str(held_out), history_len=3, progress=None)
    assert (meta["num_train"], meta["num_test"]) == (90_000, 10_000)
    check_split(meta, log_reader, ratings[ratings.index % 10 == 0])

    with pytest.raises(ValueError, match="train_file and test_file"):
        convert_movielens(DATA, str(tmp_path / "other"), protocol="files", progress=None)


@pytest.mark.skipif(not os.path.exists(os.path.join(DATA, "ua.base")), reason="no ua.base / ua.test in the data folder")
def test_files_protocol_with_the_official_ua_split(tmp_path):
    meta = convert_movielens(DATA, str(tmp_path / "logs"), protocol="files", train_file="ua.base",
                             test_file="ua.test", progress=None)
    assert (meta["num_train"], meta["num_test"]) == (90_570, 9_430)


def test_refuses_to_overwrite(tmp_path):
    out = tmp_path / "logs"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        convert_movielens(DATA, str(out), progress=None)
    assert os.listdir(out) == ["keep.txt"]


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{ENV_VAR}.*{URL}"):
        convert_movielens(str(tmp_path / "nowhere"), str(tmp_path / "logs"), progress=None)
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "u.data").write_text("1\t1\t5\t100\n")
    with pytest.raises(FileNotFoundError, match="u.user"):
        convert_movielens(str(tmp_path / "partial"), str(tmp_path / "logs"), progress=None)
    with pytest.raises(ValueError, match="protocol"):
        convert_movielens(DATA, str(tmp_path / "logs"), protocol="random", progress=None)
    assert not (tmp_path / "logs").exists()


def test_events_by_time_and_write_time_window(tmp_path, log_reader):
    """Time-ordered events (issue 25's continuous benchmark): histories from all earlier ratings, and a
    time window written as event logs holds exactly that window's ratings."""
    from tfrec_towers.data.movielens import catalog_at, events_by_time, write_time_window
    from tfrec_towers.data.writer import EVENT_KINDS

    events, items = events_by_time(DATA, history_len=3)
    assert len(events) == 100_000 and len(items) == 1682
    assert (np.diff(events.timestamp.to_numpy()) >= 0).all()
    ratings = u_data()
    check_histories(ratings, events.sample(2000, random_state=0), cap=3)
    start, end = 885_000_000, 886_000_000
    paths = write_time_window(events, str(tmp_path / "window"), start, end, num_shards=2)
    assert len(paths) == 2 and all(os.path.exists(p) for p in paths)
    written = log_reader(str(tmp_path / "window-*"), EVENT_KINDS)
    ts = ratings.timestamp.astype(np.int64)
    expected = ratings[(ts >= start) & (ts < end)]
    assert len(written) == len(expected) > 0
    assert set(zip(written.user_id, written.item_id)) == set(zip(expected.user_id, expected.item_id))
    assert written.item_history.map(len).max() == 3
    with pytest.raises(ValueError, match="no event"):
        write_time_window(events, str(tmp_path / "empty"), 0, 1)
    # item_trend: log2 bucket of the item's ratings in the 14 days before (strictly earlier), on events
    # and, as of a moment, on the catalog; written to the logs like any item feature.
    week2, ts_all, ids = 14 * 86400, ratings.timestamp.astype(np.int64).to_numpy(), ratings.item_id.to_numpy()
    for _, e in events.sample(300, random_state=1).iterrows():
        n = int(np.sum((ids == e.item_id) & (ts_all >= e.timestamp - week2) & (ts_all < e.timestamp)))
        assert e.item_trend == int(np.floor(np.log2(1 + n)))
    assert events.item_trend.max() >= 5 and (written.item_trend >= 0).all()
    catalog = catalog_at(events, items, end)
    assert len(catalog) == len(items) and catalog.item_trend.max() >= 3
    for item_id, trend in catalog.sample(200, random_state=2)[["item_id", "item_trend"]].itertuples(index=False):
        n = int(np.sum((ids == item_id) & (ts_all >= end - week2) & (ts_all < end)))
        assert trend == int(np.floor(np.log2(1 + n)))


def test_the_library_has_no_data_path_of_its_own(monkeypatch, tmp_path):
    """An installed library computes no repository-relative path: without data_dir and $TFREC_TOWERS_ML100K
    it says what to give."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert default_data_dir() is None
    with pytest.raises(FileNotFoundError, match="no MovieLens-100K directory"):
        convert_movielens(None, str(tmp_path / "out"), progress=None)
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert default_data_dir() == str(tmp_path)
