"""Negative sources on real TFRecord files: the catalog, per-key lists (exposure-unclicked, mined),
catalog distributions, the mixture's logQ correction, accidental hits, in-batch off, across replicas."""
import subprocess
import sys
import textwrap

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import numpy as np
import pytest
import tensorflow as tf

from tfrec_towers.config import Config, packaged
from tfrec_towers.data.synthetic import generate_synthetic
from tfrec_towers.negatives import ItemCatalog, KeyedItems
from tfrec_towers.negatives.exposure import collect_unclicked
from tfrec_towers.negatives.mixed_negative_sampling import mixture_expected_counts
from tfrec_towers.negatives.sources import Negatives, popularity_distribution
from tfrec_towers.tasks import RemoveAccidentalHits, Retrieval, RetrievalContext
from tfrec_towers.tasks.chain import MIN_LOGIT
from tests.test_train_e2e import subprocess_env
from tfrec_towers.data import reader


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("neg") / "logs")
    generate_synthetic(out, num_users=60, num_items=80, num_requests=300, exposures_per_request=5, seed=3,
                       progress=None)
    return out


@pytest.fixture(scope="module")
def config():
    return Config.load(packaged("default"))


def read_events(out):
    spec = {"user_id": tf.io.FixedLenFeature([], tf.string), "item_id": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.int64)}
    rows = []
    reader.scan(reader.list_files(f"{out}/train/*.tfrecord.gz"), spec,
                lambda p: rows.extend(zip(p["user_id"].numpy(), p["item_id"].numpy(), p["label"].numpy())))
    return [(u.decode(), i.decode(), int(l)) for u, i, l in rows]


def test_catalog_reads_every_item_once_with_its_features(logs, config):
    catalog = ItemCatalog.from_files(config, f"{logs}/items/*.tfrecord.gz", progress=lambda m: None)
    assert catalog.size == 80 and len(set(catalog.ids)) == 80
    rows = tf.constant([0, 5, 79], tf.int64)
    batch = catalog.gather(rows)
    assert set(batch) == {f.name for f in config.features.candidate}
    assert [v.decode() for v in catalog.ids_at(rows).numpy()] == [catalog.ids[0], catalog.ids[5], catalog.ids[79]]
    assert catalog.index_of(tf.constant([catalog.ids[7], "no-such-item"])).numpy().tolist() == [7, -1]


def test_keyed_items_draw_only_from_the_key_list_and_fall_back_uniformly():
    keyed = KeyedItems({"a": [1, 2], "b": [7], "c": []}, catalog_size=50, name="t")
    assert keyed.coverage == 2
    tf.random.set_seed(0)
    draws = keyed.sample(tf.constant(["a", "b", "zz"]), 200).numpy().reshape(3, 200)
    assert set(draws[0]) == {1, 2} and set(draws[1]) == {7}
    assert len(set(draws[2])) > 20 and draws[2].min() >= 0 and draws[2].max() < 50
    with pytest.raises(ValueError, match="no key has any item"):
        KeyedItems({"a": []}, 5, "t")


def test_exposure_negatives_are_the_same_users_unclicked_items(logs, config):
    catalog = ItemCatalog.from_files(config, f"{logs}/items/*.tfrecord.gz", progress=lambda m: None)
    files = reader.list_files(f"{logs}/train/*.tfrecord.gz")
    keyed = collect_unclicked(config, files, catalog, "user_id", progress=lambda m: None)
    events = read_events(logs)
    unclicked = {}
    for user, item, label in events:
        if label < 1:
            unclicked.setdefault(user, set()).add(item)
    assert keyed.coverage == len(unclicked) > 0
    for user in list(unclicked)[:10]:
        draws = keyed.sample(tf.constant([user]), 50).numpy()
        assert {catalog.ids[r] for r in draws} <= unclicked[user]
    with pytest.raises(ValueError, match="exposure_field or data.label"):
        config.data.label = None
        try:
            collect_unclicked(config, files, catalog, "user_id", progress=lambda m: None)
        finally:
            config.data.label = "label"


def test_popularity_distribution_and_mixture_expected_counts_match_numpy(logs, config):
    catalog = ItemCatalog.from_files(config, f"{logs}/items/*.tfrecord.gz", progress=lambda m: None)
    counts = {catalog.ids[i]: i + 1 for i in range(0, 80, 2)}
    q = popularity_distribution(catalog, counts, 0.75)
    expected_q = np.array([(i + 1) ** 0.75 if i % 2 == 0 else 0.0 for i in range(80)])
    np.testing.assert_allclose(q, expected_q / expected_q.sum(), rtol=1e-6)
    uniform = np.full(80, 1 / 80)
    in_batch = np.array([0.5, 0.0, 2.0, 0.1], np.float32)
    rows = np.array([3, 10, -1, 4])
    got = mixture_expected_counts(tf.constant(in_batch), tf.constant(rows, tf.int64),
                                  [(16, tf.constant(uniform, tf.float32)), (8, tf.constant(q, tf.float32))]).numpy()
    want = in_batch + np.where(rows >= 0, 16 * uniform[rows] + 8 * q[rows], 0.0)
    want = np.maximum(want, 1e-8)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_negatives_layer_draws_from_each_source_and_corrects_by_the_mixture(logs, config):
    catalog = ItemCatalog.from_files(config, f"{logs}/items/*.tfrecord.gz", progress=lambda m: None)
    only_item_3 = np.zeros(80)
    only_item_3[3] = 1.0
    keyed = KeyedItems({"u1": [9]}, 80, "exposure")
    negatives = Negatives(catalog, True, [("popularity", 5, only_item_3)], [(keyed, "user_id", 2)])
    rows = negatives.sample({"user_id": tf.constant(["u1", "u1", "u1"])}).numpy()
    assert rows.tolist() == [3] * 5 + [9] * 6
    ids = tf.constant([catalog.ids[3], catalog.ids[9]])
    got = negatives.expected_counts(ids, tf.constant([0.25, 0.5])).numpy()
    np.testing.assert_allclose(got, [0.25 + 5.0, 0.5], rtol=1e-6)
    off = Negatives(catalog, False, [("popularity", 5, only_item_3)])
    np.testing.assert_allclose(off.expected_counts(ids, tf.constant([0.25, 0.5])).numpy(), [5.0, 1e-8], rtol=1e-5)
    with pytest.raises(KeyError, match="keyed by 'user_id'"):
        negatives.sample({})


def _ce(logits, labels):
    logits = logits - logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -(labels * logp).sum()


def test_accidental_hits_and_in_batch_off_never_act_as_negatives():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(4, 8)).astype(np.float32)
    c = rng.normal(size=(6, 8)).astype(np.float32)
    ids = tf.constant(["a", "b", "a", "c", "b", "d"])
    logits, _ = RemoveAccidentalHits()(tf.constant(q @ c.T), tf.eye(4, 6), context=RetrievalContext(q, c, ids))
    masked = logits.numpy() <= MIN_LOGIT / 2
    want = np.zeros((4, 6), bool)
    want[0, 2] = want[2, 0] = want[1, 4] = True
    assert (masked == want).all()
    task = Retrieval(in_batch_negatives=False)
    loss = float(task(tf.constant(q), tf.constant(c)))
    full = q @ c.T
    ref = sum(_ce(np.concatenate([full[i, [i]], full[i, 4:]])[None], np.eye(1, 3)) for i in range(4))
    np.testing.assert_allclose(loss, ref, rtol=1e-5)


def test_bidirectional_loss_matches_numpy_for_sum_and_mean():
    from tfrec_towers.tasks import Temperature

    rng = np.random.default_rng(1)
    q = rng.normal(size=(5, 4)).astype(np.float32)
    c = rng.normal(size=(5, 4)).astype(np.float32)
    forward, backward = _ce(q @ c.T / 0.5, np.eye(5)), _ce(c @ q.T / 0.5, np.eye(5))
    for weight in (1.0, 0.5):
        task = Retrieval(transforms=[Temperature(0.5)], reverse_transforms=[Temperature(0.5)],
                         query_weight=weight, reverse_weight=weight)
        np.testing.assert_allclose(float(task(tf.constant(q), tf.constant(c))), weight * (forward + backward),
                                   rtol=1e-5)


def test_reverse_direction_masks_same_users():
    rng = np.random.default_rng(2)
    q = rng.normal(size=(3, 4)).astype(np.float32)
    c = rng.normal(size=(3, 4)).astype(np.float32)
    context = RetrievalContext(q, c, tf.constant(["i1", "i2", "i3"]), query_ids=tf.constant(["u", "v", "u"]))
    logits, _ = RemoveAccidentalHits(optional=True)(tf.constant(c @ q.T), tf.eye(3), context=context.reversed())
    masked = logits.numpy() <= MIN_LOGIT / 2
    assert masked[0, 2] and masked[2, 0] and masked.sum() == 2


CROSS_REPLICA = textwrap.dedent("""
    import tfrec_towers
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tfrec_towers.negatives.cross_replica import gather_across_replicas
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    x = tf.constant(np.arange(8, dtype=np.float32).reshape(8, 1))
    ds = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices(x).batch(8))
    batch = next(iter(ds))
    def step(local):
        (gathered,) = gather_across_replicas(local)
        return local, gathered
    local, gathered = strategy.run(step, args=(batch,))
    for l, g in zip(strategy.experimental_local_results(local), strategy.experimental_local_results(gathered)):
        l, g = l.numpy().ravel().tolist(), g.numpy().ravel().tolist()
        assert g[:len(l)] == l and sorted(g) == list(range(8)), (l, g)
    print("ok", len(strategy.experimental_local_results(local)))
""")


def test_cross_replica_candidates_put_own_rows_first():
    out = subprocess.run([sys.executable, "-c", CROSS_REPLICA], capture_output=True, text=True, env=subprocess_env(),
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ok 2" in out.stdout
