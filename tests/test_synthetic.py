"""Synthetic logs: determinism, counts, schema, split and histories, and a learnable signal."""
import collections
import glob
import os

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import numpy as np
import pytest

from tfrec_towers.data.synthetic import DEVICES, GENRE_WORDS, GENRES, generate_synthetic
from tfrec_towers.data.writer import AGE_BUCKETS

SMALL = dict(num_users=150, num_items=100, num_requests=3000, exposures_per_request=8, history_len=10,
             num_shards=2, progress=None)


@pytest.fixture(scope="module")
def logs(tmp_path_factory, log_reader):
    meta = generate_synthetic(str(tmp_path_factory.mktemp("synthetic") / "logs"), seed=3, **SMALL)
    events = meta["features"]["events"]
    return (meta, log_reader(meta["files"]["train"], events), log_reader(meta["files"]["test"], events),
            log_reader(meta["files"]["items"], meta["features"]["items"]))


def file_bytes(meta):
    out = {}
    for split in ("train", "test", "items"):
        for path in sorted(glob.glob(meta["files"][split])):
            with open(path, "rb") as f:
                out[os.path.relpath(path, os.path.dirname(os.path.dirname(path)))] = f.read()
    return out


def test_same_seed_same_bytes(tmp_path, logs):
    meta = logs[0]
    again = generate_synthetic(str(tmp_path / "again"), seed=3, **SMALL)
    assert file_bytes(again) == file_bytes(meta)
    other = generate_synthetic(str(tmp_path / "other"), seed=4, **SMALL)
    assert file_bytes(other) != file_bytes(meta)
    with pytest.raises(FileExistsError):
        generate_synthetic(str(tmp_path / "again"), seed=3, **SMALL)


def test_counts_match_metadata(logs):
    meta, train, test, items = logs
    assert (meta["num_train"], meta["num_test"], meta["num_items"]) == (len(train), len(test), len(items))
    assert meta["num_test"] == meta["num_users"] == SMALL["num_users"]  # one test click per user
    assert meta["num_train"] == (SMALL["num_requests"] - SMALL["num_users"]) * SMALL["exposures_per_request"]
    assert meta["num_items"] == SMALL["num_items"] and meta["history_len"] == SMALL["history_len"]
    assert meta["source"] == "synthetic" and meta["num_shards"] == 2
    assert len(glob.glob(meta["files"]["train"])) == 2


def test_schema(logs):
    meta, train, test, items = logs
    assert set(meta["features"]["events"]) == {
        "user_id", "item_id", "timestamp", "label", "rating", "request_id", "device", "user_age",
        "user_age_bucket", "user_gender", "user_occupation", "user_zip_prefix", "item_title", "item_genres",
        "item_year", "item_history"}
    # Every scalar feature but item_year is in every record (read_log checks at most one value each).
    required = [c for c in train.columns if c not in ("item_year", "item_genres", "item_history")]
    for events in (train, test):
        assert events[required].notna().all().all()
        assert set(events.device) <= set(DEVICES) and set(events.user_gender) <= {"M", "F"}
        assert set(events.user_age_bucket) <= set(AGE_BUCKETS)
        assert (events.user_zip_prefix.str.len() == 3).all()
        assert (events.rating == events.label.astype(float)).all()
        assert all(1 <= len(g) <= 3 and set(g) <= set(GENRES) for g in events.item_genres)
    assert 0 < items.item_year.isna().sum() < len(items) * 0.2  # some years unknown: the feature is absent
    # A user's profile is the same on all their events; an item's fields match the catalog.
    profile = ["user_age", "user_age_bucket", "user_gender", "user_occupation", "user_zip_prefix"]
    assert (train.groupby("user_id")[profile].nunique() == 1).all().all()
    catalog = items.set_index("item_id")
    assert (train.item_title == catalog.item_title.reindex(train.item_id).to_numpy()).all()
    # Titles carry the genre: their words come from the genres' word lists.
    for title, genres in zip(items.item_title, items.item_genres):
        words = title.split()
        assert 2 <= len(words) <= 4 and set(words) <= {w for g in genres for w in GENRE_WORDS[g]}


def test_exposures_and_split(logs):
    meta, train, test, _ = logs
    assert set(test.label) == {1}  # unclicked exposures are in train only
    assert set(train.label) == {0, 1}
    per_request = train.groupby("request_id").label.agg(["sum", "size"])
    assert (per_request["sum"] == 1).all() and (per_request["size"] == SMALL["exposures_per_request"]).all()
    assert not set(test.request_id) & set(train.request_id)
    assert test.user_id.is_unique
    last_train = train.groupby("user_id").timestamp.max()
    assert (test.set_index("user_id").timestamp > last_train.reindex(test.user_id).to_numpy()).all()


def test_history_is_earlier_train_clicks(logs):
    meta, train, test, _ = logs
    clicks = collections.defaultdict(list)  # user -> [(timestamp, item)] of train clicks, in time order
    positives = train[train.label == 1]
    for user, ts, item in sorted(zip(positives.user_id, positives.timestamp, positives.item_id)):
        clicks[user].append((ts, item))
    cap = meta["history_len"]
    for events in (train, test):
        for user, ts, history in zip(events.user_id, events.timestamp, events.item_history):
            expected = [item for t, item in clicks[user] if t < ts][-cap:]
            assert history == expected
    assert train.item_history.map(len).max() == cap


def hit_rate_at_10(scores, targets):
    target_scores = scores[np.arange(len(targets)), targets]
    return float(((scores > target_scores[:, None]).sum(axis=1) < 10).mean())


def test_signal_is_learnable_without_training(logs):
    """Users' genre tastes from their train clicks rank their test click far above chance, and
    better than popularity alone: the logs carry a personal signal, not only popularity."""
    _, train, test, items = logs
    item_index = {item: i for i, item in enumerate(items.item_id)}
    genre_of = np.zeros((len(items), len(GENRES)))
    for i, genres in enumerate(items.item_genres):
        genre_of[i, [GENRES.index(g) for g in genres]] = 1.0 / len(genres)
    clicks = train[train.label == 1]
    popularity = np.bincount(clicks.item_id.map(item_index), minlength=len(items)).astype(float)
    users = sorted(set(test.user_id))
    taste = np.zeros((len(users), len(GENRES)))
    user_index = {u: k for k, u in enumerate(users)}
    np.add.at(taste, clicks.user_id.map(user_index).to_numpy(), genre_of[clicks.item_id.map(item_index)])
    rows = test.user_id.map(user_index).to_numpy()
    targets = test.item_id.map(item_index).to_numpy()

    chance = 10 / len(items)
    by_popularity = hit_rate_at_10(np.tile(popularity, (len(rows), 1)), targets)
    by_taste = hit_rate_at_10((taste @ genre_of.T)[rows] * (1 + popularity), targets)
    # Seen: 0.69 by taste, 0.47 by popularity, 0.10 by chance.
    assert by_taste > 3 * chance and by_taste > by_popularity + 0.1, (by_taste, by_popularity, chance)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_requests"):
        generate_synthetic(str(tmp_path / "a"), num_users=100, num_requests=150, progress=None)
    with pytest.raises(ValueError, match="exposures_per_request"):
        generate_synthetic(str(tmp_path / "b"), num_items=5, exposures_per_request=6, progress=None)
    assert not os.listdir(tmp_path)
