"""train.svd_init: the randomised truncated SVD against NumPy's, the tables it sets against the exact
rank-r factorisation of the normalised interaction matrix, and its place in ``train`` (fresh runs only)."""
import numpy as np
import pytest

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

from tfrec_towers.config import Config, packaged
from tfrec_towers.data import reader
from tfrec_towers.data.inputs import compute_stats, user_histories
from tfrec_towers.data.user_item_lists import convert_user_item_lists
from tfrec_towers.svd_init import svd_init, truncated_svd
from tfrec_towers.train import build_trainable, train

DIM = 8


def quiet(message):
    pass


def test_truncated_svd_matches_numpy():
    rng = np.random.default_rng(1)
    # exactly rank 5 (200 x 300, given as a sparse matrix of all its entries): the range finder captures it whole
    dense = (rng.standard_normal((200, 5)) * [5, 4, 3, 2, 1]) @ rng.standard_normal((5, 300))
    rows, cols = np.nonzero(dense)
    u, s, v = truncated_svd(rows, cols, dense[rows, cols], dense.shape, 5)
    exact = np.linalg.svd(dense, compute_uv=False)[:5]
    np.testing.assert_allclose(s, exact, rtol=1e-4)
    np.testing.assert_allclose((u * s) @ v.T, dense, atol=1e-3 * np.abs(dense).max())
    # a sparse full-rank matrix, rank 10 of 60 x 40: the oversampled range covers all 40 columns
    sparse = rng.random((60, 40)) * (rng.random((60, 40)) < 0.2)
    rows, cols = np.nonzero(sparse)
    u, s, v = truncated_svd(rows, cols, sparse[rows, cols], sparse.shape, 10)
    eu, es, evt = np.linalg.svd(sparse)
    np.testing.assert_allclose(s, es[:10], rtol=1e-4)
    np.testing.assert_allclose((u * s) @ v.T, (eu[:, :10] * es[:10]) @ evt[:10], atol=1e-4)
    assert np.allclose(u.T @ u, np.eye(10), atol=1e-4) and np.allclose(v.T @ v, np.eye(10), atol=1e-4)
    with pytest.raises(ValueError, match="rank must be in"):
        truncated_svd(rows, cols, sparse[rows, cols], sparse.shape, 41)


@pytest.fixture(scope="module")
def lists(tmp_path_factory):
    """80 users in 4 taste groups over 60 items (15 per group, and a few across): user item item ... lines."""
    root = tmp_path_factory.mktemp("svd_lists")
    rng = np.random.default_rng(0)
    train, test = [], []
    for user in range(80):
        group = user % 4
        items = rng.choice(np.arange(15 * group, 15 * group + 15), 7, replace=False).tolist()
        items += rng.choice(60, 2, replace=False).tolist()
        items = list(dict.fromkeys(items))
        train.append(" ".join(map(str, [user] + items[:-2])))
        test.append(" ".join(map(str, [user] + items[-2:])))
    (root / "train.txt").write_text("\n".join(train) + "\n")
    (root / "test.txt").write_text("\n".join(test) + "\n")
    meta = convert_user_item_lists([str(root / "train.txt")], str(root / "test.txt"), str(root / "out"),
                                   history_len=5, progress=None)
    return root, meta["files"]


def small_cf(**extra):
    overrides = [f"features.query.user_id.embedding_dim={DIM}",
                 f"features.candidate.item_id.embedding_dim={DIM}", "negatives.uniform=20", "train.batch_size=64",
                 "train.epochs=1", "train.min_steps=0", "data.cache=false"]
    return Config.load(packaged("cf")).with_overrides(overrides + [f"{k}={v}" for k, v in extra.items()])


def table(model, source):
    return next(layer for layer in model.submodules if getattr(layer, "vocab_source", None) == source)


def test_tables_are_the_scaled_rank_r_factors_of_the_normalised_matrix(lists):
    _, files = lists
    config = small_cf(**{"train.svd_init": 3.0})
    paths = reader.list_files(files["train"])
    stats, _ = compute_stats(config, paths, quiet, files["items"])
    plain = build_trainable(config, stats, paths, files["items"], progress=quiet)
    model = build_trainable(config, stats, paths, files["items"], progress=quiet)  # same seed: same random start
    histories = user_histories(config, files["train"], progress=quiet)
    messages = []
    done = svd_init(model, config, histories, messages.append)
    assert done == {"user_id": 80, "item_id": len({i for items in histories.values() for i in items})}
    assert "rank-8 SVD" in messages[0]

    users, items = table(model, "user_id"), table(model, "item_id")
    user_row = {v: k + users.num_oov for k, v in enumerate(users.lookup.get_vocabulary(include_special_tokens=False))}
    item_row = {v: k + items.num_oov for k, v in enumerate(items.lookup.get_vocabulary(include_special_tokens=False))}
    u_ids, i_ids = sorted(histories, key=user_row.get), sorted({i for s in histories.values() for i in s}, key=item_row.get)
    r = np.zeros((len(u_ids), len(i_ids)))
    for a, u in enumerate(u_ids):
        for i in histories[u]:
            r[a, i_ids.index(i)] = 1.0
    a_norm = r / np.sqrt(r.sum(1, keepdims=True)) / np.sqrt(r.sum(0, keepdims=True))
    eu, es, evt = np.linalg.svd(a_norm)
    expected = (eu[:, :DIM] * es[:DIM]) @ evt[:DIM]              # U_r S_r V_r^T
    uw, iw = users.embedding.embeddings.numpy(), items.embedding.embeddings.numpy()
    got = uw[[user_row[u] for u in u_ids]] @ iw[[item_row[i] for i in i_ids]].T
    np.testing.assert_allclose(got / np.linalg.norm(got), expected / np.linalg.norm(expected), atol=1e-4)

    # rows at 3x the random rows' mean norm; rows without a positive event (OOV) keep their random values
    for source, rows in (("user_id", [user_row[u] for u in u_ids]), ("item_id", [item_row[i] for i in i_ids])):
        new, old = table(model, source).embedding.embeddings.numpy(), table(plain, source).embedding.embeddings.numpy()
        ratio = np.linalg.norm(new[rows], axis=1).mean() / np.linalg.norm(old[rows], axis=1).mean()
        assert ratio == pytest.approx(3.0, rel=1e-4), source
        untouched = np.setdiff1d(np.arange(len(new)), rows)
        assert len(untouched) >= 1
        np.testing.assert_array_equal(new[untouched], old[untouched])


def test_train_applies_it_to_fresh_runs_only(lists, tmp_path):
    _, files = lists
    messages = []
    first = str(tmp_path / "first")
    result = train(small_cf(**{"train.svd_init": 3.0}), files["train"], first, files["test"], files["items"],
                   progress=messages.append, verbose=0)
    assert any(m.startswith("svd_init: rank-8 SVD of") for m in messages), messages
    assert result  # trained and evaluated
    messages.clear()
    train(small_cf(**{"train.svd_init": 3.0}), files["train"], str(tmp_path / "next"), None, files["items"],
          progress=messages.append, verbose=0, warm_start=first)
    assert "train.svd_init: not applied (the warm start's tables are the previous run's)" in messages
    assert not any(m.startswith("svd_init:") for m in messages)


def test_a_hashed_user_id_is_refused_naming_it(lists):
    _, files = lists
    config = small_cf(**{"train.svd_init": 1.0, "features.query.user_id.hash_buckets": 64,
                          "features.query.user_id.oov_rate": 0.0})
    paths = reader.list_files(files["train"])
    stats, _ = compute_stats(config, paths, quiet, files["items"])
    model = build_trainable(config, stats, paths, files["items"], progress=quiet)
    with pytest.raises(ValueError, match="train.svd_init: no embedding table with a vocabulary keyed by 'user_id'"):
        svd_init(model, config, user_histories(config, files["train"], progress=quiet), quiet)
