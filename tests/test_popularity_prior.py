"""The export's popularity prior (``export/popularity_prior.py``): item counts read from real logs, the
top-k signatures of a reloaded SavedModel ranking by ``q . v + w log(1 + n)`` for every index type,
refresh-items keeping it, and clear errors."""
import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import subprocess
from types import SimpleNamespace

import numpy as np
import pytest

from cli_helpers import cli
from cli_helpers import subprocess_env as env
from conftest import read_log, small_trained_run
from test_export import call_in_fresh_process
from tfrec_towers.data.inputs import item_counts
from tfrec_towers.evaluation.embeddings import embed_catalog
from tfrec_towers.export.exporter import export_run, read_metadata, refresh_items
from tfrec_towers.export.popularity_prior import known_items, new_item_weight, popularity_prior
from tfrec_towers.features.stats import FeatureStats
from tfrec_towers.run import RunDir, load_model

import tensorflow as tf

K = 10
#: Large enough to reorder most rows' top 10 on this catalog (checked below), so the test can fail.
WEIGHT = 0.5


def quiet(message):
    pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("prior")
    run_dir, files, config = small_trained_run(root, num_users=300, num_items=150, num_requests=4000, seed=1, epochs=2)
    model = load_model(run_dir)
    ids, item_emb = embed_catalog(model, config, files["items"], progress=None)
    records = [r.numpy() for r in tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(files["test"])),
                                                          compression_type="GZIP").take(32)]
    query = config.features.prepare(tf.io.parse_example(records, config.features.parse_spec("query")))
    return {"run_dir": run_dir, "files": files, "config": config, "ids": ids, "item_emb": item_emb,
            "query": {k: v.numpy() for k, v in query.items()}, "user_emb": model.query_tower(query).numpy()}


def test_item_counts_are_the_positive_events_of_the_logs(trained):
    log = read_log(trained["files"]["train"], {"item_id": "bytes", "label": "int64"})
    expected = log[log.label >= 1].item_id.value_counts().to_dict()
    assert 0 < sum(expected.values()) < len(log)  # the logs hold negatives too: they must not count
    assert item_counts(trained["config"], trained["files"]["train"], quiet) == expected


def test_the_prior_is_the_weighted_log_count_and_refuses_a_non_finite_weight():
    prior = popularity_prior(np.array(["a", "b", "c"], dtype=object), {"a": 3, "c": 0, "z": 9}, 0.25)
    np.testing.assert_allclose(prior, [0.25 * np.log(4), 0.0, 0.0], rtol=1e-6)
    assert prior.dtype == np.float32
    for weight in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="popularity weight must be a finite number"):
            popularity_prior(np.array(["a"]), {}, weight)


def test_items_without_an_id_row_are_weighted_by_the_temperature():
    """known_items reads the run's ID vocabulary (None for hashed IDs); new items get the unknown weight, and
    new_item_weight is the config's temperature (None without one)."""
    stats = FeatureStats(10, {"item_id": {"a": 3, "b": 1}}, {}, {}, {})
    ids = np.array(["a", "b", "new"], dtype=object)
    known = known_items(ids, stats, "item_id")
    np.testing.assert_array_equal(known, [True, True, False])
    assert known_items(ids, stats, "hashed_id") is None
    prior = popularity_prior(ids, {"a": 3, "b": 0, "new": 3}, 0.05, known, 0.2)
    np.testing.assert_allclose(prior, [0.05 * np.log(4), 0.0, 0.2 * np.log(4)], rtol=1e-6)
    np.testing.assert_allclose(popularity_prior(ids, {"new": 3}, 0.05, None, 0.2), [0, 0, 0.05 * np.log(4)], rtol=1e-6)
    with pytest.raises(ValueError, match="finite"):
        popularity_prior(ids, {}, 0.05, known, float("nan"))
    config = SimpleNamespace(task=SimpleNamespace(temperature=0.2))
    assert new_item_weight(config) == 0.2
    assert new_item_weight(SimpleNamespace(task=SimpleNamespace(temperature=None))) is None


def _rewrite(pattern, out_path, copies):
    """The GZIP TFRecords of ``pattern`` plus, for each (source record number, new item ID, n), n copies of
    that record with its item_id replaced: new catalog items, or events of them."""
    records = [r.numpy() for r in tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(pattern)), compression_type="GZIP")]
    with tf.io.TFRecordWriter(out_path, options="GZIP") as writer:
        for record in records:
            writer.write(record)
        for source, item, n in copies:
            example = tf.train.Example.FromString(records[source])
            example.features.feature["item_id"].bytes_list.value[:] = [item.encode()]
            for _ in range(n):
                writer.write(example.SerializeToString())
    return out_path


def test_refresh_items_weighs_new_items_popularity_by_the_temperature(trained, tmp_path):
    """refresh-items with a catalog of new items (no ID row: placed by their other features) and logs where
    they are watched: the served scores are q . v + tau log(1 + n) for them, q . v + w log(1 + n) for the
    others (exact top-k of a brute export), and the metadata counts them."""
    base, logs = str(tmp_path / "m"), trained["files"]["test"]
    export_run(trained["run_dir"], base, "m", index="brute", k=K, log=quiet, popularity_logs=logs,
               popularity_weight=WEIGHT)
    new = [f"new-{j}" for j in range(5)]
    catalog = _rewrite(trained["files"]["items"], str(tmp_path / "items.tfrecord.gz"), [(j, item, 1) for j, item in enumerate(new)])
    positive = next(i for i, r in enumerate(tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(logs)), compression_type="GZIP"))
                    if tf.train.Example.FromString(r.numpy()).features.feature["label"].int64_list.value[0] >= 1)
    events = _rewrite(logs, str(tmp_path / "events.tfrecord.gz"), [(positive, item, 20 * (j + 1)) for j, item in enumerate(new)])
    version = refresh_items(base, "m", catalog, log=quiet, popularity_logs=events)
    config, stats = trained["config"], RunDir(trained["run_dir"]).stats()
    tau = new_item_weight(config)
    assert tau and tau != WEIGHT
    ids, item_emb = embed_catalog(load_model(trained["run_dir"]), config, catalog, progress=None)
    known = known_items(ids, stats, "item_id")
    assert set(new) <= set(ids[~known]) and known.any()
    counts = item_counts(config, events, quiet)
    prior = popularity_prior(ids, counts, WEIGHT, known, tau)
    one_weight = popularity_prior(ids, counts, WEIGHT)
    scores = trained["user_emb"] @ item_emb.T
    exact = ids[np.argsort(-(scores + prior), axis=1)[:, :K]]
    assert np.mean(np.any(exact != ids[np.argsort(-(scores + one_weight), axis=1)[:, :K]], axis=1)) > 0.5
    got = call_in_fresh_process(version, {"top_k": ("serving_default", trained["query"])}, tmp_path)["out"]["top_k"]
    np.testing.assert_array_equal(got["item_ids"].astype(str), exact)
    meta = read_metadata(version)["popularity_prior"]
    assert meta["new_items"] == np.count_nonzero(~known) and meta["new_item_weight"] == tau and meta["weight"] == WEIGHT


@pytest.mark.parametrize("index", ["brute", "portable", "scann"])
def test_a_reloaded_export_ranks_by_score_plus_prior(trained, index, tmp_path):
    logs = trained["files"]["test"]  # "the last days' logs": any event log of the schema
    version = export_run(trained["run_dir"], str(tmp_path / "m"), "m", index=index, k=K, log=quiet,
                         popularity_logs=logs, popularity_weight=WEIGHT)
    counts = item_counts(trained["config"], logs, quiet)
    known = known_items(trained["ids"], RunDir(trained["run_dir"]).stats(), "item_id")
    assert 0 < np.count_nonzero(~known) < len(known)  # catalog items never trained on: no ID row
    prior = popularity_prior(trained["ids"], counts, WEIGHT, known, new_item_weight(trained["config"]))
    scores = trained["user_emb"] @ trained["item_emb"].T
    exact = np.argsort(-(scores + prior), axis=1)[:, :K]
    assert np.mean(np.any(exact != np.argsort(-scores, axis=1)[:, :K], axis=1)) > 0.5  # the prior matters
    query = trained["query"]
    excluded = trained["ids"][exact[:, :3]].astype(bytes)
    got = call_in_fresh_process(version, {
        "top_k": ("serving_default", query), "user": ("user_embedding", query),
        "filtered": ("filtered", {**query, "k": np.int32(K), "exclude_item_ids": excluded})}, tmp_path)["out"]
    np.testing.assert_allclose(got["user"]["embedding"], trained["user_emb"], atol=1e-5)  # the tower's own
    ids = got["top_k"]["item_ids"].astype(str)
    position = {item: n for n, item in enumerate(trained["ids"])}
    rows = np.vectorize(position.get)(ids)
    np.testing.assert_allclose(got["top_k"]["scores"], np.take_along_axis(scores + prior, rows, 1), atol=1e-4)
    filtered = got["filtered"]["item_ids"].astype(str)
    assert not any(set(row) & set(e.astype(str)) for row, e in zip(filtered, excluded))
    if index == "brute":
        np.testing.assert_array_equal(ids, trained["ids"][exact])
        np.testing.assert_array_equal(filtered[:, :K - 3], trained["ids"][exact[:, 3:]])
    else:
        recall = np.mean([len(set(a) & set(b)) / K for a, b in zip(ids, trained["ids"][exact])])
        assert recall >= 0.9, recall
    meta = read_metadata(version)
    assert meta["popularity_prior"] == {
        "logs": logs, "weight": WEIGHT, "events": sum(counts.values()),
        "catalog_items_with_events": int(np.count_nonzero(prior)),
        "events_of_items_not_in_catalog": sum(counts.values()) - sum(counts.get(i, 0) for i in trained["ids"]),
        "new_items": int(np.count_nonzero(~known)), "new_item_weight": new_item_weight(trained["config"])}
    assert meta["embedding_dim"] == trained["item_emb"].shape[1]


def test_refresh_items_keeps_the_prior_unless_told(trained, tmp_path):
    base, logs = str(tmp_path / "m"), trained["files"]["test"]
    export_run(trained["run_dir"], base, "m", index="brute", k=K, log=quiet, popularity_logs=logs,
               popularity_weight=WEIGHT)
    kept = read_metadata(refresh_items(base, "m", trained["files"]["items"], log=quiet))
    assert kept["popularity_prior"]["logs"] == logs and kept["popularity_prior"]["weight"] == WEIGHT
    other = read_metadata(refresh_items(base, "m", trained["files"]["items"], log=quiet,
                                        popularity_logs=trained["files"]["train"], popularity_weight=0.2))
    assert other["popularity_prior"]["logs"] == trained["files"]["train"]
    assert other["popularity_prior"]["weight"] == 0.2
    assert "popularity_prior" not in read_metadata(refresh_items(base, "m", trained["files"]["items"], log=quiet,
                                                                 popularity_weight=0))


def test_export_names_missing_popularity_logs_and_a_non_finite_weight(trained, tmp_path):
    done = subprocess.run(cli("export", trained["run_dir"], tmp_path / "m", "m", "--popularity-logs",
                              tmp_path / "none-*.gz"), env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "none-*.gz" in done.stderr, done.stderr[-2000:]
    done = subprocess.run(cli("export", trained["run_dir"], tmp_path / "m", "m", "--popularity-logs",
                              trained["files"]["test"], "--popularity-weight", "nan"), env=env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "popularity weight must be a finite number" in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "m" / "m").exists() or not list((tmp_path / "m" / "m").iterdir())


def test_evaluate_saved_model_measures_the_prior_as_served(trained, tmp_path):
    """`evaluate --saved-model` on a brute export with a prior gives the exact HR@K of score + prior, the
    user's history excluded (how a weight is chosen on validation logs), and records the prior."""
    from tfrec_towers.data.inputs import user_histories
    from tfrec_towers.evaluation.embeddings import embed_events
    from tfrec_towers.evaluation.job import evaluate_saved_model
    from tfrec_towers.evaluation.metrics import catalog_metrics

    config, files = trained["config"], trained["files"]
    version = export_run(trained["run_dir"], str(tmp_path / "m"), "m", index="brute", k=50, log=quiet,
                         popularity_logs=files["test"], popularity_weight=WEIGHT)
    got = evaluate_saved_model(version, files["test"], output=str(tmp_path / "e.json"), progress=quiet)
    assert got["popularity_prior"]["weight"] == WEIGHT
    known = known_items(trained["ids"], RunDir(trained["run_dir"]).stats(), "item_id")
    prior = popularity_prior(trained["ids"], item_counts(config, files["test"], quiet), WEIGHT, known,
                             new_item_weight(config))
    users, targets, query = embed_events(load_model(trained["run_dir"]), config, files["test"], progress=None)
    with_one = np.hstack([query, np.ones((len(query), 1), np.float32)])
    exact = catalog_metrics(with_one, trained["ids"], np.hstack([trained["item_emb"], prior[:, None]]), users,
                            targets, user_histories(config, files["train"], progress=None), (10, 50))
    without = catalog_metrics(query, trained["ids"], trained["item_emb"], users, targets,
                              user_histories(config, files["train"], progress=None), (10, 50))
    for k in (10, 50):
        assert got["saved_model"][f"hr@{k}"] == exact["exclude_history"][f"hr@{k}"], k
    assert exact["exclude_history"]["hr@10"] != without["exclude_history"]["hr@10"]  # the prior is measured
