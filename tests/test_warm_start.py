"""Warm start (issue 25.1): a new run continues a finished one on new logs, with new users and items.

Real synthetic TFRecord logs of two "days" (the second with more users and items), real runs; the
previous run's files are hashed before and after to show that nothing in it is modified.
"""
import os
import subprocess

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import filelock
import numpy as np
import pytest

from tfrec_towers.config import Config, packaged
from tfrec_towers.data.synthetic import generate_synthetic
from tfrec_towers.features.stats import FeatureStats, continue_stats
from tfrec_towers.run import RunDir, load_model
from tfrec_towers.train import train
from tfrec_towers.warm_start import WarmStartError

from cli_helpers import cli, subprocess_env
from conftest import hashes


def quiet(message):
    pass


def small_config(**overrides) -> Config:
    config = Config.load(packaged("default")).with_overrides(
        ["train.epochs=1", "train.batch_size=128", "model.hidden=[]", "model.output_dim=32"])
    return config.with_overrides([f"{k.replace('__', '.')}={v}" for k, v in overrides.items()])


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    """Two days of logs: day 2 has 50% more users and items (IDs u…/i… extend day 1's)."""
    root = tmp_path_factory.mktemp("days")
    one = generate_synthetic(str(root / "day1"), num_users=60, num_items=40, num_requests=600, seed=1,
                             progress=None)["files"]
    two = generate_synthetic(str(root / "day2"), num_users=90, num_items=60, num_requests=900, seed=2,
                             progress=None)["files"]
    return root, one, two


@pytest.fixture(scope="module")
def day1_run(days):
    root, one, _ = days
    run_dir = str(root / "run1")
    train(small_config(), one["train"], run_dir, items_pattern=one["items"], verbose=0, progress=quiet)
    return run_dir


# --- statistics -----------------------------------------------------------------------------------

def stats(vocab, items=None, numeric=None, limits=None, n=10):
    return FeatureStats(n, vocab, numeric or {}, items or {}, limits or {})


def test_vocabularies_keep_their_order_and_append_new_values_by_count(tmp_path):
    previous = stats({"user_id": {"a": 5, "b": 3, "c": 1}})
    new = stats({"user_id": {"c": 1, "z": 2, "y": 7, "b": 1}})
    merged, changes = continue_stats(previous, new)
    assert merged.vocabulary("user_id") == ["a", "b", "c", "y", "z"]
    assert merged.vocab_counts["user_id"] == {"a": 5, "b": 4, "c": 2, "z": 2, "y": 7}
    assert changes["user_id"] == {"old_size": 3, "size": 5, "added": 2, "evicted": []}
    assert merged.generation == 1 and merged.num_examples == 10
    # saved and loaded, the order holds (a count-ranked vocabulary would put y first)
    merged.save(str(tmp_path / "stats.json"))
    assert FeatureStats.load(str(tmp_path / "stats.json")).vocabulary("user_id") == ["a", "b", "c", "y", "z"]


def test_min_count_applies_to_the_summed_counts():
    previous = stats({"item_id": {"a": 2, "b": 1}}, limits={"item_id": (2, None)})
    assert previous.vocabulary("item_id") == ["a"]
    merged, _ = continue_stats(previous, stats({"item_id": {"b": 1, "c": 1}}, limits={"item_id": (2, None)}))
    assert merged.vocabulary("item_id") == ["a", "b"]  # b: 1 + 1 >= 2; c: 1 < 2


def test_max_vocab_evicts_the_least_recently_seen_values_first():
    limits = {"user_id": (1, 4)}
    first = stats({"user_id": {"a": 9, "b": 8, "c": 7, "d": 6}}, limits=limits)
    # generation 1: a and b seen again, e is new; no room: the least counted of c, d (both last seen at
    # generation 0) goes
    second, changes = continue_stats(first, stats({"user_id": {"a": 1, "b": 1, "e": 3}}, limits=limits))
    assert second.vocabulary("user_id") == ["a", "b", "c", "e"]
    assert changes["user_id"]["evicted"] == [(3, "d", "e")]
    # generation 2: only e and c seen: a and b were last seen at 1; b has the lower count
    third, changes = continue_stats(second, stats({"user_id": {"c": 1, "e": 1, "f": 1}}, limits=limits))
    assert changes["user_id"]["evicted"] == [(1, "b", "f")]
    assert third.vocabulary("user_id") == ["a", "f", "c", "e"]
    assert third.vocab_seen["user_id"] == {"a": 1, "f": 2, "c": 2, "e": 2}


def test_numeric_moments_trigram_frequencies_and_item_counts_add_up():
    rng = np.random.default_rng(0)
    x, y = rng.normal(3, 2, 500), rng.normal(-1, 0.5, 300)
    moments = lambda v: {"mean": float(v.mean()), "std": float(v.std()), "count": v.size}  # noqa: E731
    previous = FeatureStats(500, {}, {"age": moments(x)}, {"i1": 2, "i2": 1}, {},
                            text_df={"8": {"texts": 3, "df": {"1": 2, "5": 1}}})
    new = FeatureStats(300, {}, {"age": moments(y)}, {"i2": 4, "i3": 1}, {},
                       text_df={"8": {"texts": 2, "df": {"5": 2, "7": 1}}})
    merged, _ = continue_stats(previous, new)
    both = np.concatenate([x, y])
    assert merged.numeric("age") == pytest.approx((both.mean(), both.std()))
    assert merged.item_counts == {"i1": 2, "i2": 5, "i3": 1}
    assert merged.text_df["8"] == {"texts": 5, "df": {"1": 2, "5": 3, "7": 1}}
    assert merged.num_examples == 300


# --- the warm-started run -------------------------------------------------------------------------

def test_warm_start_copies_rows_and_optimizer_state_and_leaves_the_previous_run_alone(days, day1_run):
    root, _, two = days
    before = hashes(day1_run)
    run_dir = str(root / "run2")
    config = small_config(train__learning_rate=0.002)
    train(config, two["train"], run_dir, items_pattern=two["items"], verbose=0, progress=quiet,
          warm_start=day1_run)
    assert hashes(day1_run) == before

    info = RunDir(run_dir).info()["warm_start"]
    assert info["from"] == os.path.abspath(day1_run) and info["generation"] == 1
    assert info["config_changes"] == ["train.learning_rate: 0.001 -> 0.002"]
    old_stats, new_stats = RunDir(day1_run).stats(), RunDir(run_dir).stats()
    for source in ("user_id", "item_id"):
        old_vocab, new_vocab = old_stats.vocabulary(source), new_stats.vocabulary(source)
        assert new_vocab[:len(old_vocab)] == old_vocab and len(new_vocab) > len(old_vocab), source
        assert info["vocabularies"][source]["added"] == len(new_vocab) - len(old_vocab)
    assert info["start_step"] > 0

    # The new model scores old and new IDs; it was trained on from the old weights (one epoch of day 2
    # moves rows of the old table, but far less than a fresh start's random initialisation would).
    old, new = load_model(day1_run), load_model(run_dir)

    def table(model, source):
        for layer in model.submodules:
            if getattr(layer, "vocab_source", None) == source:
                return layer.embedding.embeddings.numpy()
        raise AssertionError(source)

    old_items, new_items = table(old, "item_id"), table(new, "item_id")
    n = old_items.shape[0]
    assert new_items.shape[0] > n
    moved = np.linalg.norm(new_items[:n] - old_items, axis=1).mean()
    assert moved < 0.5 * np.linalg.norm(old_items, axis=1).mean(), moved


def test_copy_is_exact_before_any_step(days, day1_run, tmp_path):
    """Right after the copy (no training step): old rows and their Adam moments equal the previous run's,
    appended rows equal its first OOV row (moments 0), the step counter carries over."""
    from tfrec_towers.data.inputs import compute_stats
    from tfrec_towers.data import reader
    from tfrec_towers.train import build_trainable
    from tfrec_towers.warm_start import copy_previous, previous_run, previous_step

    _, _, two = days
    previous = previous_run(day1_run)
    config = small_config()
    files = reader.list_files(two["train"])
    fresh, _ = compute_stats(config, files, quiet, two["items"])
    merged, changes = continue_stats(previous.stats(), fresh)
    model = build_trainable(config, merged, files, two["items"], progress=quiet, start_step=previous_step(previous))
    copy_previous(model, previous, changes, quiet)

    old = load_model(day1_run)
    import tensorflow as tf
    reader_ = tf.train.load_checkpoint(previous.weights)
    keys = reader_.get_variable_to_shape_map()
    for source in ("item_id", "user_id"):
        layer = next(l for l in model.submodules if getattr(l, "vocab_source", None) == source)
        old_layer = next(l for l in old.submodules if getattr(l, "vocab_source", None) == source)
        new_rows, old_rows = layer.embedding.embeddings.numpy(), old_layer.embedding.embeddings.numpy()
        np.testing.assert_array_equal(new_rows[:len(old_rows)], old_rows)
        appended = new_rows[len(old_rows):]
        assert len(appended), source
        np.testing.assert_array_equal(appended, np.broadcast_to(old_rows[0], appended.shape))
        i = next(i for i, v in enumerate(model.trainable_variables) if v is layer.embedding.embeddings)
        m = model.optimizer._momentums[i].numpy()
        saved_m = [reader_.get_tensor(k) for k, s in keys.items() if "optimizer/_variables" in k and s == list(old_rows.shape)]
        assert any(np.array_equal(m[:len(old_rows)], s) for s in saved_m), source
        assert not m[len(old_rows):].any() and np.abs(m[:len(old_rows)]).sum() > 0
    assert int(model.optimizer.iterations.numpy()) == previous_step(previous) > 0


@pytest.mark.parametrize("what", ["missing", "unfinished", "training", "incompatible"])
def test_bad_warm_starts_fail_before_any_work(days, day1_run, tmp_path, what):
    root, _, two = days
    before = hashes(day1_run)
    previous, config, lock = day1_run, small_config(), None
    expected = {"missing": "no such run directory", "unfinished": "no final weights",
                "training": "a process is training in it", "incompatible": "features.query[0].embedding_dim"}[what]
    if what == "missing":
        previous = str(tmp_path / "nothing")
    elif what == "unfinished":
        previous = str(tmp_path / "unfinished")
        os.makedirs(previous)
        for name in ("run.json", "config.yaml", "feature_stats.json"):
            with open(os.path.join(day1_run, name), "rb") as src, open(os.path.join(previous, name), "wb") as dst:
                dst.write(src.read())
    elif what == "training":
        lock = filelock.FileLock(os.path.join(day1_run, "train.lock"), timeout=0)
        lock.acquire()
        before = hashes(day1_run)
    else:
        d = config.to_dict()
        d["features"]["query"][0]["embedding_dim"] = 16
        config = Config.from_dict(d)
    try:
        with pytest.raises(WarmStartError, match=expected.replace("[", r"\[").replace("]", r"\]")):
            train(config, two["train"], str(tmp_path / "new"), verbose=0, progress=quiet, warm_start=previous)
    finally:
        if lock:
            lock.release()
    assert not os.path.exists(tmp_path / "new")
    assert hashes(day1_run) == before


def test_cli_warm_start_uses_the_previous_config_and_exits_2_on_a_bad_one(days, day1_run, tmp_path):
    _, _, two = days
    proc = subprocess.run(cli("train", "--train", two["train"], "--run-dir", tmp_path / "new",
                              "--warm-start", tmp_path / "nothing"), env=subprocess_env(), capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 2 and "no such run directory" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run(cli("train", "--train", two["train"], "--run-dir", tmp_path / "new", "--warm-start",
                              day1_run, "--set", "model.output_dim=16"), env=subprocess_env(), capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 2 and "model.output_dim is 32 there and 16 here" in proc.stderr, proc.stderr[-2000:]
    assert "config: the one of the run it continues" in proc.stdout


def test_rows_of_evicted_values_start_as_the_oov_row(days, day1_run):
    """A value evicted under max_vocab gives its index to a new value: that row starts as the first OOV
    row (as any new value's) and its Adam moments at zero, instead of carrying the evicted value's."""
    from tfrec_towers.data import reader
    from tfrec_towers.data.inputs import compute_stats
    from tfrec_towers.train import build_trainable
    from tfrec_towers.warm_start import copy_previous, previous_run

    _, _, two = days
    previous = previous_run(day1_run)
    config, files = small_config(), reader.list_files(two["train"])
    merged, changes = continue_stats(previous.stats(), compute_stats(config, files, quiet, two["items"])[0])
    old_users = previous.stats().vocabulary("user_id")
    changes["user_id"] = dict(changes["user_id"], evicted=[(3, old_users[3], "someone-new")])
    model = build_trainable(config, merged, files, two["items"], progress=quiet)
    layer = next(l for l in model.submodules if getattr(l, "vocab_source", None) == "user_id")
    copy_previous(model, previous, changes, quiet)
    old_rows = next(l for l in load_model(day1_run).submodules
                    if getattr(l, "vocab_source", None) == "user_id").embedding.embeddings.numpy()
    rows = layer.embedding.embeddings.numpy()
    evicted = 3 + layer.num_oov
    np.testing.assert_array_equal(rows[evicted], old_rows[0])
    assert not np.array_equal(old_rows[evicted], old_rows[0])
    keep = [i for i in range(len(old_rows)) if i != evicted]
    np.testing.assert_array_equal(rows[keep], old_rows[keep])
    i = next(i for i, v in enumerate(model.trainable_variables) if v is layer.embedding.embeddings)
    assert not model.optimizer._momentums[i].numpy()[evicted].any()
    assert model.optimizer._momentums[i].numpy()[keep].any()


def test_config_changes_name_what_changed_and_allow_training_options():
    from tfrec_towers.warm_start import config_changes

    previous = small_config()
    d = previous.to_dict()
    d["features"]["candidate"][0]["oov_rate"] = 0.1
    d["train"]["learning_rate"] = 0.01
    assert config_changes(previous, Config.from_dict(d), "PREV") == [
        "features.candidate[0].oov_rate: None -> 0.1", "train.learning_rate: 0.001 -> 0.01"]
    d["features"]["query"] = d["features"]["query"][:2]
    with pytest.raises(WarmStartError, match=r"PREV: features.query is \[\{.*\.\.\. there and"):
        config_changes(previous, Config.from_dict(d), "PREV")
