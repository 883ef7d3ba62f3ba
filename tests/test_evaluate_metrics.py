"""Full-catalog ranking metrics: target_ranks, metrics_from_ranks, catalog_metrics."""
import tfrec_towers  # noqa: F401  (must precede tensorflow: selects Keras 2)

import math

import numpy as np
import pytest

from tfrec_towers.evaluation.metrics import MISSING, catalog_metrics, metrics_from_ranks, target_ranks


def brute_force_ranks(query, items, targets, exclude=None):
    ranks = []
    for i in range(len(query)):
        t = targets[i]
        if t < 0:
            ranks.append(MISSING)
            continue
        drop = set() if exclude is None else set(int(j) for j in exclude[i])
        drop.discard(int(t))  # the target itself is never excluded
        true = float(np.dot(query[i], items[t]))
        r = 0
        for j in range(len(items)):
            if j not in drop and float(np.dot(query[i], items[j])) > true:
                r += 1
        ranks.append(r)
    return np.array(ranks)


def random_case(seed, n_query=23, n_items=17, dim=5):
    rng = np.random.default_rng(seed)
    query = rng.normal(size=(n_query, dim)).astype(np.float32)
    items = rng.normal(size=(n_items, dim)).astype(np.float32)
    targets = rng.integers(0, n_items, size=n_query)
    return rng, query, items, targets


@pytest.mark.parametrize("chunk", [4, 2048])
def test_target_ranks_equals_brute_force(chunk):
    _, query, items, targets = random_case(0)
    got = target_ranks(query, items, targets, chunk=chunk)
    np.testing.assert_array_equal(got, brute_force_ranks(query, items, targets))
    assert got.min() >= 0 and got.max() < len(items)
    assert len(set(got.tolist())) > 3  # not degenerate


@pytest.mark.parametrize("chunk", [5, 2048])
def test_target_ranks_with_exclusion_and_missing_targets(chunk):
    rng, query, items, targets = random_case(1)
    targets[[2, 7, 20]] = -1
    exclude = []
    for i in range(len(query)):
        drop = rng.choice(len(items), size=rng.integers(0, 8), replace=False).astype(np.int64)
        if i % 3 == 0 and targets[i] >= 0:
            drop = np.append(drop, targets[i])  # target listed: must still be ranked
        exclude.append(drop)
    exclude[4] = np.empty(0, dtype=np.int64)
    got = target_ranks(query, items, targets, exclude=exclude, chunk=chunk)
    np.testing.assert_array_equal(got, brute_force_ranks(query, items, targets, exclude))
    assert (got[[2, 7, 20]] == MISSING).all()
    # excluding can only improve a rank
    plain = target_ranks(query, items, targets)
    assert (got <= plain).all() and (got < plain).any()


def test_target_ranks_hand_example():
    query = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    items = np.array([[3.0, 0.0], [2.0, 5.0], [1.0, 1.0], [0.0, 4.0]], np.float32)
    # query 0 scores: 3, 2, 1, 0; query 1 scores: 0, 5, 1, 4
    np.testing.assert_array_equal(target_ranks(query, items, np.array([2, 3])), [2, 1])
    np.testing.assert_array_equal(target_ranks(query, items, np.array([0, 1])), [0, 0])
    # excluding items 0 and 2 (2 is query 0's target: kept) and item 1 for query 1
    excl = [np.array([0, 2]), np.array([1])]
    np.testing.assert_array_equal(target_ranks(query, items, np.array([2, 3]), excl), [1, 0])
    np.testing.assert_array_equal(target_ranks(query, items, np.array([-1, 3])), [MISSING, 1])


def test_metrics_from_ranks_hand_computed():
    ranks = np.array([0, 3, 12, 1])
    users = np.array(["u1", "u1", "u2", "u3"])
    m = metrics_from_ranks(ranks, users, ks=[1, 5])
    assert m["hr@1"] == pytest.approx(0.25)
    assert m["hr@5"] == pytest.approx(0.75)
    # per user first: u1 -> (1 + 0) / 2, u2 -> 0, u3 -> 0 at k=1; u1 -> 1, u2 -> 0, u3 -> 1 at k=5
    assert m["recall@1"] == pytest.approx((0.5 + 0 + 0) / 3)
    assert m["recall@5"] == pytest.approx((1 + 0 + 1) / 3)
    assert m["ndcg@10"] == pytest.approx((1.0 + 1 / math.log2(5) + 0.0 + 1 / math.log2(3)) / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 4 + 1 / 13 + 1 / 2) / 4)
    assert m["p@1"] == pytest.approx(0.25)
    assert set(m) == {"hr@1", "recall@1", "hr@5", "recall@5", "ndcg@10", "mrr", "p@1"}


def test_metrics_ndcg_cut_at_ten():
    m = metrics_from_ranks(np.array([9, 10]), np.array(["a", "b"]), ks=[10])
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(11)) / 2)
    assert m["hr@10"] == pytest.approx(0.5)


def test_catalog_metrics_exclude_history_dominates_all_items():
    rng, query, items, _ = random_case(2, n_query=40, n_items=30)
    item_ids = np.array([f"i{n}" for n in range(30)])
    users = np.array([f"u{n % 7}" for n in range(40)])
    targets = np.array([f"i{t}" for t in rng.integers(0, 30, size=40)])
    targets[5] = "not_in_catalog"
    history = {f"u{u}": {f"i{t}" for t in rng.choice(30, size=10, replace=False)} | {"unknown_item"}
               for u in range(6)}  # u6 has no history
    history["u0"] |= set(targets[users == "u0"].tolist())  # a target in the history stays ranked
    ks = [1, 5, 10, 20]
    out = catalog_metrics(query, item_ids, items, users, targets, history, ks)

    assert out["events"] == 40 and out["users"] == 7 and out["catalog_size"] == 30
    assert out["targets_not_in_catalog"] == 1
    all_items, excl = out["all_items"], out["exclude_history"]
    for k in ks:
        assert excl[f"hr@{k}"] >= all_items[f"hr@{k}"], k
        assert excl[f"recall@{k}"] >= all_items[f"recall@{k}"], k
    assert excl["mrr"] >= all_items["mrr"] and excl["ndcg@10"] >= all_items["ndcg@10"]
    assert excl["mrr"] > all_items["mrr"]  # the history did remove something

    # both variants equal the brute force
    index = {i: n for n, i in enumerate(item_ids)}
    t_idx = np.array([index.get(t, -1) for t in targets])
    exclude = [[index[i] for i in history.get(u, ()) if i in index] for u in users]
    np.testing.assert_equal(all_items, metrics_from_ranks(brute_force_ranks(query, items, t_idx), users, ks))
    np.testing.assert_equal(excl, metrics_from_ranks(brute_force_ranks(query, items, t_idx, exclude), users, ks))


def test_catalog_metrics_without_history_and_perfect_model():
    items = np.eye(4, dtype=np.float32)
    item_ids = np.array(["a", "b", "c", "d"])
    targets = np.array(["c", "a", "zz"])
    query = items[[2, 0, 1]]
    out = catalog_metrics(query, item_ids, items, np.array(["u", "v", "w"]), targets, None, [1])
    assert "exclude_history" not in out
    assert out["all_items"]["hr@1"] == pytest.approx(2 / 3)  # the missing target counts as a miss
    assert out["all_items"]["mrr"] == pytest.approx((1 + 1 + 0) / 3)  # ... and adds nothing to MRR


def test_missing_targets_are_never_hits_even_when_k_covers_the_catalog():
    """Issue 14.8: with K >= catalog size every ranked target is a hit, a missing one never is."""
    rng = np.random.default_rng(3)
    items = rng.normal(size=(60, 8)).astype(np.float32)
    item_ids = np.array([f"i{n}" for n in range(60)])
    targets = np.array([f"i{n}" for n in rng.integers(0, 60, size=50)])
    targets[:10] = [f"gone{n}" for n in range(10)]
    query = rng.normal(size=(50, 8)).astype(np.float32)
    users = np.array([f"u{n}" for n in range(50)])
    out = catalog_metrics(query, item_ids, items, users, targets, {}, [10, 60, 100])
    assert out["targets_not_in_catalog"] == 10
    for variant in ("all_items", "exclude_history"):
        assert out[variant]["hr@100"] == pytest.approx(0.8) and out[variant]["hr@60"] == pytest.approx(0.8)
        assert out[variant]["recall@100"] == pytest.approx(0.8)
        assert out[variant]["hr@10"] < 0.8 and out[variant]["mrr"] < 0.8


@pytest.mark.parametrize("chunk", [1, 4, 100])
def test_scored_chunks_is_the_full_product_with_exclusions_and_targets_read_first(chunk):
    """The one chunked scoring loop behind target_ranks and top_k (issue 27)."""
    from tfrec_towers.evaluation.scoring import scored_chunks

    _, query, items, targets = random_case(3)
    targets[::5] = -1  # not in the catalog
    exclude = [np.array([t, (t + 1) % len(items)]) if t >= 0 else np.array([0]) for t in targets]
    full = query.astype(np.float32) @ items.astype(np.float32).T
    rows, trues = [], []
    for start, stop, scores, true in scored_chunks(query, items, exclude, chunk, targets):
        assert stop - start <= chunk
        rows.append(scores)
        trues.append(true)
    scores, true = np.concatenate(rows), np.concatenate(trues)
    np.testing.assert_allclose(true, full[np.arange(len(query)), np.maximum(targets, 0)], rtol=1e-6)
    for i, drop in enumerate(exclude):
        assert np.isneginf(scores[i, drop]).all()
        kept = np.setdiff1d(np.arange(len(items)), drop)
        np.testing.assert_allclose(scores[i, kept], full[i, kept], rtol=1e-6)
