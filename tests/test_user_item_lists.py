"""`user item item ...` lists -> TFRecord event logs: histories, bad lines, the CLI, and the real Gowalla files.

Gowalla is read by path from $TFREC_TOWERS_GOWALLA (default <repo>/../shared/datasets/gowalla) and never
copied into the repository; its test is skipped when the files are not there.
"""
import json
import os
import re

import numpy as np
import pytest

from tfrec_towers.cli import main
from tfrec_towers.data.user_item_lists import (BadLine, ReadReport, convert_user_item_lists, read_user_item_lists,
                                               train_histories)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOWALLA = os.environ.get("TFREC_TOWERS_GOWALLA", os.path.join(REPO, "..", "shared", "datasets", "gowalla"))
EVENT_KINDS = {"user_id": "bytes", "item_id": "bytes", "label": "int64", "item_history": "bytes"}


def write(path, text):
    path.write_text(text)
    return str(path)


@pytest.fixture
def small(tmp_path):
    train = write(tmp_path / "train.txt", "0 1 2 3 4 5\n1 2 7\n2 9\n\n3\n")
    valid = write(tmp_path / "valid.txt", "0 6\n1 8 2\n")
    test = write(tmp_path / "test.txt", "0 10 1\n1 3\n2 11 12\n4 5\n")
    return train, valid, test


def test_events_histories_and_catalog(small, tmp_path, log_reader):
    train, valid, test = small
    meta = convert_user_item_lists([train, valid], test, str(tmp_path / "out"), history_len=3, progress=None)
    events = log_reader(meta["files"]["train"], EVENT_KINDS)
    tests = log_reader(meta["files"]["test"], EVENT_KINDS)
    items = log_reader(meta["files"]["items"], {"item_id": "bytes"})
    user_items = {"0": ["1", "2", "3", "4", "5", "6"], "1": ["2", "7", "8"], "2": ["9"]}
    assert sorted(zip(events.user_id, events.item_id)) == sorted((u, i) for u, its in user_items.items() for i in its)
    assert meta["train_repeats_dropped"] == 1  # valid's "1 ... 2" repeats train's item 2
    assert (events.label == 1).all()
    for user, item, history in zip(events.user_id, events.item_id, events.item_history):
        others = [i for i in user_items[user] if i != item]
        assert item not in history
        assert len(history) == min(3, len(others)) and set(history) <= set(others)
        assert history == [i for i in others if i in history]  # line order kept
    # test: the train item 1 of user 0 is dropped; user 4 has no training items (empty history)
    assert sorted(zip(tests.user_id, tests.item_id)) == [("0", "10"), ("1", "3"), ("2", "11"), ("2", "12"), ("4", "5")]
    assert meta["test_items_in_train_dropped"] == 1
    for user, history in zip(tests.user_id, tests.item_history):
        assert set(history) <= set(user_items.get(user, [])) and len(history) == min(3, len(user_items.get(user, [])))
    assert sorted(items.item_id, key=int) == [str(i) for i in range(1, 13)]
    assert meta["num_train"] == 10 and meta["num_test"] == 5 and meta["num_items"] == 12


def test_train_histories_sample_uniformly_without_target():
    rng = np.random.default_rng(0)
    items = list(range(100, 110))
    counts = np.zeros(10)
    for _ in range(300):
        hist = train_histories(items, 4, rng)
        for j, h in enumerate(hist):
            assert len(h) == 4 and items[j] not in h and h == sorted(h) and len(set(h)) == 4
        counts += np.bincount(np.array(hist[0]) - 100, minlength=10)
    assert counts[0] == 0
    np.testing.assert_allclose(counts[1:] / counts[1:].sum(), 1 / 9, atol=0.03)  # uniform over the others


@pytest.mark.parametrize("text,reason", [("0 1 2\n1 3 x4\n", "token 'x4'"), ("0 1 2\n0 3\n", "user 0 was already"),
                                         ("0 1 2\n1 3 4 3\n", "item(s) [3]"), ("0 1 2\n-1 3\n", "token '-1'"),
                                         ("0 1 2\n1 2.5\n", "token '2.5'")])
def test_bad_lines_fail_naming_file_and_line(tmp_path, text, reason):
    path = write(tmp_path / "bad.txt", text)
    with pytest.raises(BadLine, match=r"bad\.txt:2: .*" + re.escape(reason)):
        read_user_item_lists(path)


def test_bad_lines_skipped_and_counted(tmp_path):
    path = write(tmp_path / "bad.txt", "0 1 2\n1 3 x\n0 5\n2 4 4\n3 7 8\n4 y\n")
    report = ReadReport()
    lists = read_user_item_lists(path, "skip", report)
    assert lists == {0: [1, 2], 3: [7, 8]}
    assert report.skipped == {"non-integer token": 2, "user listed twice": 1, "duplicate items": 1}
    assert report.examples["non-integer token"].endswith("bad.txt:2")
    assert "skipped lines" in report.summary()


def test_cli_converts_and_reports_bad_lines(small, tmp_path, capsys):
    train, valid, test = small
    bad = write(tmp_path / "bad_test.txt", "0 10\n0 11\n")
    out = str(tmp_path / "cli")
    assert main(["user-item-lists", "--train", f"{train},{valid}", "--test", bad, "--out", out]) == 2
    assert "bad_test.txt:2" in capsys.readouterr().err
    assert not os.path.exists(out)
    assert main(["user-item-lists", "--train", f"{train},{valid}", "--test", bad, "--out", out,
                 "--policy", "skip", "--history-len", "2"]) == 0
    meta = json.loads(open(os.path.join(out, "metadata.json")).read())
    assert meta["skipped_lines"] == 1 and meta["num_test"] == 1 and meta["history_len"] == 2


@pytest.mark.skipif(not os.path.exists(os.path.join(GOWALLA, "train.txt")),
                    reason=f"Gowalla not found at {GOWALLA}: set $TFREC_TOWERS_GOWALLA")
def test_real_gowalla_histories_never_hold_the_target(tmp_path_factory, log_reader):
    files = [os.path.join(GOWALLA, f) for f in ("train.txt", "valid.txt", "test.txt")]
    out = str(tmp_path_factory.mktemp("gowalla") / "logs")
    meta = convert_user_item_lists(files[:2], files[2], out, history_len=50, progress=None)
    train = {**{u: list(i) for u, i in read_user_item_lists(files[0]).items()}}
    for u, items in read_user_item_lists(files[1]).items():
        train[u] = train[u] + items
    assert meta["num_train"] == 810128 and meta["num_items"] == 40981 and meta["num_users"] == 29858
    assert meta["num_test"] == 217242 and meta["skipped_lines"] == 0
    train_sets = {str(u): {str(i) for i in items} for u, items in train.items()}
    events = log_reader(meta["files"]["train"], EVENT_KINDS)
    assert len(events) == 810128
    for user, item, history in zip(events.user_id, events.item_id, events.item_history):
        assert item not in history
        assert len(history) == min(50, len(train_sets[user]) - 1) and set(history) <= train_sets[user]
    tests = log_reader(meta["files"]["test"], EVENT_KINDS)
    for user, item, history in zip(tests.user_id, tests.item_id, tests.item_history):
        assert item not in train_sets[user] and set(history) <= train_sets[user]
        if len(train_sets[user]) <= 50:
            assert set(history) == train_sets[user]
        else:
            assert len(history) == 50


def test_train_without_config_takes_the_cf_config_the_metadata_names(small, tmp_path, capsys):
    import argparse

    from tfrec_towers.cli import _config

    train, valid, test = small
    out = str(tmp_path / "out")
    meta = convert_user_item_lists([train, valid], test, out, history_len=3, progress=None)
    assert meta["config"] == "cf"
    args = argparse.Namespace(config=None, set=["train.epochs=1"], train=meta["files"]["train"])
    config = _config(args)
    assert config.task.loss == "bsl" and config.model.user_gate is None and config.train.epochs == 1
    assert f"the packaged 'cf', named by {os.path.join(out, 'metadata.json')}" in capsys.readouterr().out
    args = argparse.Namespace(config="default", set=[], train=meta["files"]["train"])
    assert _config(args).task.loss == "softmax"     # --config wins
    args = argparse.Namespace(config=None, set=[], train=str(tmp_path / "nothing-*"))
    assert _config(args).task.loss == "softmax"     # no metadata: default
