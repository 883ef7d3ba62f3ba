"""Per-user Recall@K / NDCG@K (the LightGCN protocol) against a plain NumPy reference."""
import numpy as np
import pytest

from tfrec_towers.evaluation.metrics import recall_ndcg, top_k, user_catalog_metrics


def reference(query, items, true, exclude, k):
    """Full sort of every user's scores, loops only: Recall@k, NDCG@k per user."""
    recall, ndcg = [], []
    for q, t, e in zip(query, true, exclude):
        scores = items @ q
        scores[list(e)] = -np.inf
        ranked = list(np.argsort(-scores, kind="stable")[:k])
        dcg = sum(1.0 / np.log2(r + 2) for r, item in enumerate(ranked) if item in t)
        idcg = sum(1.0 / np.log2(r + 2) for r in range(min(len(t), k)))
        recall.append(len(set(ranked) & set(t)) / len(t))
        ndcg.append(dcg / idcg)
    return np.array(recall), np.array(ndcg)


def random_case(seed, users=57, items=300, dim=8):
    rng = np.random.default_rng(seed)
    query = rng.normal(size=(users, dim)).astype(np.float32)
    emb = rng.normal(size=(items, dim)).astype(np.float32)
    true, exclude = [], []
    for _ in range(users):
        picked = rng.choice(items, size=rng.integers(1, 40), replace=False)
        n_true = rng.integers(1, len(picked) + 1)
        true.append(np.sort(picked[:n_true]))
        exclude.append(np.sort(picked[n_true:]))
    return query, emb, true, exclude


@pytest.mark.parametrize("seed,k,chunk", [(0, 20, 1024), (1, 5, 7), (2, 50, 16)])
def test_top_k_and_metrics_match_reference(seed, k, chunk):
    query, emb, true, exclude = random_case(seed)
    top = top_k(query, emb, k, exclude, chunk=chunk)
    scores = query @ emb.T
    for row, e in enumerate(exclude):
        assert not np.isin(top[row], e).any()
        assert np.all(np.diff(scores[row, top[row]]) <= 0)  # best first
    got = recall_ndcg(top, true, k)
    want_recall, want_ndcg = reference(query.astype(np.float64), emb.astype(np.float64), true, exclude, k)
    np.testing.assert_allclose(got[f"recall@{k}"], want_recall, atol=1e-12)
    np.testing.assert_allclose(got[f"ndcg@{k}"], want_ndcg, atol=1e-12)
    assert 0 < want_recall.mean() < 1 and 0 < want_ndcg.mean() < 1  # the case is not degenerate


def test_hand_computed_values():
    top = np.array([[3, 1, 4, 0, 2]])
    got = recall_ndcg(top, [np.array([1, 2, 9])], 3)
    assert got["recall@3"][0] == pytest.approx(1 / 3)
    # one hit at rank 1 (0-based); ideal: min(3, 3) hits at ranks 0, 1, 2
    ideal = 1 + 1 / np.log2(3) + 1 / np.log2(4)
    assert got["ndcg@3"][0] == pytest.approx((1 / np.log2(3)) / ideal)
    # missing-from-catalog targets count in |T_u|
    got = recall_ndcg(top, [np.array([1])], 3, num_targets=[4])
    assert got["recall@3"][0] == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="no true item"):
        recall_ndcg(top, [np.array([], dtype=np.int64)], 3)


def test_user_catalog_metrics_groups_events_and_removes_history():
    query, emb, true, exclude = random_case(3, users=20)
    item_ids = np.array([f"i{n}" for n in range(len(emb))])
    users, targets, rows = [], [], []
    for u, t in enumerate(true):
        for item in t:
            users.append(f"u{u}")
            targets.append(f"i{item}")
            rows.append(query[u])
    users.append("u0")
    targets.append("not-in-catalog")  # a miss for u0: |T_u0| grows by one
    rows.append(query[0])
    history = {f"u{u}": {f"i{i}" for i in e} | {"unknown-item"} for u, e in enumerate(exclude)}
    history["u1"].add(f"i{true[1][0]}")  # a true item in the history stays rankable
    got = user_catalog_metrics(np.array(rows), item_ids, emb, np.array(users), np.array(targets), history, ks=[10])
    recall, ndcg = reference(query.astype(np.float64), emb.astype(np.float64), true, exclude, 10)
    recall[0] *= len(true[0]) / (len(true[0]) + 1)
    order = np.argsort([f"u{u}" for u in range(len(true))])  # users are grouped in sorted-ID order
    assert got["users"] == 20 and got["targets_not_in_catalog"] == 1 and got["catalog_size"] == len(emb)
    assert got["recall@10"] == pytest.approx(recall[order].mean())
    # NDCG's ideal uses |T_u| including the missing item for u0
    n0 = len(true[0]) + 1
    top0 = top_k(query[:1], emb, 10, [exclude[0]])[0]
    disc = 1 / np.log2(np.arange(10) + 2)
    ndcg[0] = (np.isin(top0, true[0]) * disc).sum() / disc[:min(n0, 10)].sum()
    assert got["ndcg@10"] == pytest.approx(ndcg.mean())
