"""User-item lists (``user item item ...``, one line per user) -> event logs in the project's schema.

The format of the LightGCN-style benchmarks (Gowalla, Yelp2018, Amazon-Book): each line is a user ID
followed by that user's item IDs, all non-negative integers separated by whitespace; a dataset is a
few such files (e.g. ``train.txt``, ``valid.txt``, ``test.txt``). The converter reads the training
files (merged per user: Gowalla's paper training set is ``train.txt`` + ``valid.txt``) and one test
file, and writes ``writer.write_log_dataset``'s layout: one positive event (``label=1``) per (user,
item) pair, and the item catalog.

User-side features need no outside data: ``user_id``, and ``item_history``, the user's training items
as a sequence. The lines carry no timestamps (Gowalla's training lines are even sorted by item ID),
so there is no "most recent": the history is the user's training items in line order, and when there
are more than ``history_len`` of them a uniform random sample of ``history_len`` (seeded, kept in line
order). A training event's history is the user's *other* training items, never its own target (else
the target would sit in the query and training would be trivially solved); a test event's history is
the user's training items (all of them up to the cap), what a served query would hold.

Bad lines (a non-integer token, a user listed twice in one file, an item repeated in a line) fail
under ``policy="fail"`` with ``file:line`` and the reason, or are dropped and counted by reason under
``policy="skip"``. An empty line is skipped silently; a line with a user and no item is a user
without interactions there (counted, not an error).
"""
import collections
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from tfrec_towers.choices import RECORD_POLICIES
from tfrec_towers.data.writer import check_out_dir, write_log_dataset

__all__ = ["BadLine", "POLICIES", "ReadReport", "convert_user_item_lists", "merge_lists", "read_user_item_lists",
           "train_histories"]


#: Bad lines: "fail" names file:line, "skip" drops and counts them (the corrupt-record policies' names).
POLICIES = RECORD_POLICIES


class BadLine(ValueError):
    """A malformed line, named by file and line number."""


class ReadReport:
    """What ``read_user_item_lists`` read: users, interactions, and skipped lines by reason."""

    def __init__(self):
        self.users = 0
        self.interactions = 0
        self.empty_users = 0
        self.skipped: Dict[str, int] = collections.Counter()
        self.examples: Dict[str, str] = {}  # reason -> first "file:line" with it

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, where)

    def to_dict(self) -> dict:
        return {"users": self.users, "interactions": self.interactions, "users_without_items": self.empty_users,
                "skipped_lines": dict(self.skipped), "first_skipped": dict(self.examples)}

    def summary(self) -> str:
        text = f"{self.users} users, {self.interactions} interactions"
        if self.skipped:
            text += "; skipped lines: " + ", ".join(f"{n} {reason} (first at {self.examples[reason]})"
                                                    for reason, n in sorted(self.skipped.items()))
        return text


def read_user_item_lists(path: str, policy: str = "fail", report: Optional[ReadReport] = None
                         ) -> Dict[int, List[int]]:
    """One file -> {user: [items in line order]}; see the module docstring for bad lines."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"user-item list file not found: {path}")
    report = report if report is not None else ReadReport()
    out: Dict[int, List[int]] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            tokens = line.split()
            if not tokens:
                continue
            where = f"{path}:{number}"
            bad = next((t for t in tokens if not (t.isascii() and t.isdigit())), None)
            values = None if bad is not None else [int(t) for t in tokens]
            if bad is not None:
                reason, detail = "non-integer token", f"token {bad!r} is not a non-negative integer"
            elif values[0] in out:
                reason, detail = "user listed twice", f"user {values[0]} was already listed in this file"
            elif len(set(values[1:])) < len(values) - 1:
                dup = [v for v, n in collections.Counter(values[1:]).items() if n > 1]
                reason, detail = "duplicate items", f"user {values[0]} lists item(s) {dup[:5]} more than once"
            else:
                out[values[0]] = values[1:]
                report.users += 1
                report.interactions += len(values) - 1
                report.empty_users += len(values) == 1
                continue
            if policy == "fail":
                raise BadLine(f"{where}: {detail} (use policy 'skip' to drop such lines)")
            report.skip(reason, where)
    return out


def merge_lists(parts: Sequence[Dict[int, List[int]]]) -> Tuple[Dict[int, List[int]], int]:
    """Per user, the items of every part in order, an item seen in an earlier part dropped; returns
    (merged, number of such repeats)."""
    merged: Dict[int, List[int]] = {}
    repeats = 0
    for part in parts:
        for user, items in part.items():
            have = merged.setdefault(user, [])
            seen = set(have)
            fresh = [i for i in items if i not in seen]
            repeats += len(items) - len(fresh)
            have.extend(fresh)
    return merged, repeats


def _sample_sorted(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """k of range(n) uniformly without replacement, in increasing order (line order kept)."""
    return np.sort(rng.choice(n, size=k, replace=False))


def train_histories(items: Sequence[int], cap: int, rng: np.random.Generator) -> List[List[int]]:
    """For each position j of ``items``: the other items (never ``items[j]``), at most ``cap`` of
    them (a uniform sample when there are more), in line order."""
    n = len(items)
    arr = np.asarray(items, dtype=np.int64)
    if n - 1 <= cap:
        return [arr[np.arange(n) != j].tolist() for j in range(n)]
    # Per row, the cap smallest of n random keys with the target's set to +inf: a uniform sample of
    # the other n - 1 items, drawn for all rows at once.
    keys = rng.random((n, n))
    np.fill_diagonal(keys, np.inf)
    picked = np.sort(np.argpartition(keys, cap - 1, axis=1)[:, :cap], axis=1)
    return arr[picked].tolist()


def test_history(items: Sequence[int], cap: int, rng: np.random.Generator) -> List[int]:
    """A test user's history: their training items, a uniform sample of ``cap`` when more, line order."""
    if len(items) <= cap:
        return list(items)
    return np.asarray(items)[_sample_sorted(len(items), cap, rng)].tolist()


def _events(lists: Dict[int, List[int]], histories: Dict[int, List[List[int]]]) -> pd.DataFrame:
    users, items, hist = [], [], []
    for user, its in lists.items():
        users.extend([str(user)] * len(its))
        items.extend(str(i) for i in its)
        hist.extend([str(i) for i in h] for h in histories[user])
    return pd.DataFrame({"user_id": pd.array(users, dtype=object), "item_id": pd.array(items, dtype=object),
                         "label": np.ones(len(users), dtype=np.int64), "item_history": hist})


def convert_user_item_lists(train_files: Union[str, Sequence[str]], test_file: str, out_dir: str,
                            catalog_files: Sequence[str] = (), history_len: int = 50, policy: str = "fail",
                            seed: int = 0, num_shards: int = 4, overwrite: bool = False, name: str = "",
                            progress: Optional[Callable[[str], None]] = print) -> dict:
    """Convert user-item list files to train/test event logs and an item catalog; returns the metadata.

    Args:
      train_files: one or more files merged per user into the training interactions (Gowalla's
        published protocol: ``train.txt`` and ``valid.txt``; for tuning: ``train.txt`` alone).
      test_file: the evaluation interactions (``test.txt``; for tuning ``valid.txt``). A test item
        already among the user's training items is dropped (it could not be recommended) and counted.
      catalog_files: further files whose items join the catalog (their interactions are not used):
        tuning on train -> valid ranks the same catalog as the final run when ``test.txt`` is here.
        The catalog is the sorted union of the items of every file read.
      history_len: cap of ``item_history``. 50 covers the whole history of most Gowalla users
        (median 17 training items) and bounds the records of the heaviest (over 800).
      policy: ``fail`` or ``skip`` for bad lines (see the module docstring).
      seed: of the history samples and of the order training events are written in (shuffled, so a
        reader with a small shuffle buffer still sees users mixed).
    """
    if history_len < 0:
        raise ValueError(f"history_len must be >= 0, got {history_len}")
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    train_files = [train_files] if isinstance(train_files, str) else list(train_files)
    check_out_dir(out_dir, overwrite)
    progress = progress or (lambda message: None)
    started = time.time()
    reports = {}

    def read(path):
        reports[path] = ReadReport()
        lists = read_user_item_lists(path, policy, reports[path])
        progress(f"read {path}: {reports[path].summary()}")
        return lists

    train, repeats = merge_lists([read(p) for p in train_files])
    test_raw = read(test_file)
    catalog = set()
    for lists in [train, test_raw] + [read(p) for p in catalog_files]:
        for items in lists.values():
            catalog.update(items)
    test, dropped = {}, 0
    for user, items in test_raw.items():
        seen = set(train.get(user, ()))
        kept = [i for i in items if i not in seen]
        dropped += len(items) - len(kept)
        if kept:
            test[user] = kept

    rng = np.random.default_rng(seed)
    train_hist = {u: train_histories(items, history_len, rng) for u, items in train.items()}
    test_hist = {u: [test_history(train.get(u, []), history_len, rng)] * len(items) for u, items in test.items()}
    train_events = _events(train, train_hist)
    train_events = train_events.iloc[rng.permutation(len(train_events))].reset_index(drop=True)
    test_events = _events(test, test_hist)
    items = pd.DataFrame({"item_id": pd.array([str(i) for i in sorted(catalog)], dtype=object)})
    progress(f"{len(train)} training users, {len(train_events)} training events, {len(test)} test users, "
             f"{len(test_events)} test events, catalog of {len(items)} items")
    skipped = sum(sum(r.skipped.values()) for r in reports.values())
    metadata = {"source": name or "user-item lists", "format": "user item item ...", "config": "cf",
                "train_files": [os.path.abspath(p) for p in train_files], "test_file": os.path.abspath(test_file),
                "catalog_files": [os.path.abspath(p) for p in catalog_files], "policy": policy,
                "history_len": history_len, "seed": seed, "num_users": len(train),
                "num_test_users": len(test), "skipped_lines": skipped,
                "read": {p: r.to_dict() for p, r in reports.items()},
                "train_repeats_dropped": repeats, "test_items_in_train_dropped": dropped,
                "history": "training events: the user's other training items; test events: the user's "
                           f"training items; a uniform sample of {history_len} in line order when more",
                "order": f"training events shuffled (seed {seed}); test events by user"}
    meta = write_log_dataset(out_dir, train_events, test_events, items, metadata, num_shards=num_shards,
                             overwrite=overwrite, progress=progress)
    progress(f"converted {metadata['source']} in {time.time() - started:.1f}s")
    return meta
