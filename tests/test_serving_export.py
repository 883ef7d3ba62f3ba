"""A real export served over TF Serving's gRPC API on 127.0.0.1: round trip, metadata, malformed
requests, and a new version (refresh-items) published while clients send requests continuously."""
import glob
import os
import threading
import time

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import grpc
import numpy as np
import pytest
import tensorflow as tf
from conftest import small_trained_run

from tfrec_towers.export.exporter import export_run, read_metadata, refresh_items
from tfrec_towers.serving.client import RetrievalClient
from tfrec_towers.serving.server import ModelServer

K = 10


def quiet(message):
    print(message)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    run_dir, files, config = small_trained_run(root, num_users=200, num_items=120, num_requests=2000, seed=1, epochs=2)
    base = str(root / "models")
    version_dir = export_run(run_dir, base, "towers", index="portable", k=K, log=quiet)
    records = [r.numpy() for r in tf.data.TFRecordDataset(sorted(glob.glob(files["test"])),
                                                          compression_type="GZIP").take(40)]
    query = config.features.prepare(tf.io.parse_example(records, config.features.parse_spec("query")))
    return {"base": base, "version_dir": version_dir, "files": files, "root": root,
            "queries": [{k: v.numpy()[i:i + 1] for k, v in query.items()} for i in range(len(records))]}


def expected_top_k(version_dir, queries):
    """The version's own answers, computed in this process from its SavedModel."""
    signature = tf.saved_model.load(version_dir).signatures["serving_default"]
    return [signature(**{k: tf.constant(v) for k, v in q.items()})["item_ids"].numpy().astype(str) for q in queries]


@pytest.fixture()
def server(exported):
    with ModelServer(exported["base"], grpc_port=0, poll_interval_s=0.1, max_batch_size=64, log=quiet) as s:
        yield s


def test_grpc_round_trip_of_a_real_export(exported, server):
    version = int(os.path.basename(exported["version_dir"]))
    expected = expected_top_k(exported["version_dir"], exported["queries"][:5])
    with RetrievalClient(f"127.0.0.1:{server.grpc_port}", "towers") as client:
        for query, want in zip(exported["queries"][:5], expected):
            got = client.top_k(query)
            assert got.version == version
            np.testing.assert_array_equal(got.item_ids, want)
            assert got.scores.shape == (1, K) and np.all(np.diff(got.scores[0]) <= 1e-6)
        assert client.metadata() == read_metadata(exported["version_dir"])
        assert {"serving_default", "score", "user_embedding", "item_embedding_examples"} <= set(client.signature_defs())
        scores, v = client.score(exported["queries"][0], {"item_id": np.array([b"item_1", b"item_2"]),
                                                           "item_genres": np.array([[b"drama"], [b""]]),
                                                           "item_title": np.array([b"a title", b""])})
        assert v == version and scores.shape == (2,)


def test_malformed_requests_on_a_real_export(exported, server):
    query = dict(exported["queries"][0])
    with RetrievalClient(f"127.0.0.1:{server.grpc_port}", "towers", retries=0) as client:
        missing = {k: v for k, v in query.items() if k != "item_history"}
        with pytest.raises(grpc.RpcError) as e:
            client.top_k(missing)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "item_history" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            client.top_k({**query, "timestamp": np.array(["noon"])})
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "timestamp" in e.value.details()
        big = {k: np.repeat(v, 65, axis=0) for k, v in query.items()}
        with pytest.raises(grpc.RpcError) as e:
            client.top_k(big)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "64" in e.value.details()
        # score takes exactly one user
        two_users = {k: np.repeat(v, 2, axis=0) for k, v in query.items()}
        with pytest.raises(grpc.RpcError) as e:
            client.score(two_users, {"item_id": np.array([b"item_1"]), "item_genres": np.array([[b"drama"]]),
                                     "item_title": np.array([b"x"])})
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert client.top_k(query).item_ids.shape == (1, K)  # still serving


def _new_catalog(files, path):
    """The catalog without its first 30 items: top-K of the two versions must differ."""
    records = [r.numpy() for r in tf.data.TFRecordDataset(sorted(glob.glob(files["items"])),
                                                          compression_type="GZIP").skip(30)]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
        for r in records:
            w.write(r)
    return path


def test_hot_swap_under_load_is_version_consistent(exported, server, tmp_path):
    queries = exported["queries"]
    old_version = int(os.path.basename(exported["version_dir"]))
    expected = {old_version: expected_top_k(exported["version_dir"], queries)}
    responses, failures, stop = [], [], threading.Event()

    def worker(seed):
        rng = np.random.default_rng(seed)
        mine = []
        with RetrievalClient(f"127.0.0.1:{server.grpc_port}", "towers", timeout_s=30) as client:
            while not stop.is_set():
                i = int(rng.integers(len(queries)))
                try:
                    got = client.top_k(queries[i])
                    mine.append((i, got.version, got.item_ids))
                except grpc.RpcError as e:  # noqa: PERF203
                    failures.append(f"{e.code()}: {e.details()}")
        responses.append(mine)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        new_dir = refresh_items(exported["base"], "towers", _new_catalog(exported["files"], str(tmp_path / "c.gz")),
                                log=quiet)
        new_version = int(os.path.basename(new_dir))
        expected[new_version] = expected_top_k(new_dir, queries)
        deadline = time.time() + 120
        with RetrievalClient(f"127.0.0.1:{server.grpc_port}", "towers") as watcher:
            while time.time() < deadline and (new_version, "AVAILABLE") not in watcher.status():
                time.sleep(0.05)
        time.sleep(1.5)  # keep the load on after the swap
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)

    assert not failures, failures[:5]
    assert len(responses) == 4 and all(responses)
    seen = set()
    for mine in responses:
        versions = [v for _, v, _ in mine]
        assert versions == sorted(versions), "a client saw an older version after a newer one"
        for i, version, ids in mine:
            np.testing.assert_array_equal(ids, expected[version][i])
        seen.update(versions)
        assert versions[-1] == new_version
    assert seen == {old_version, new_version}
    assert any((a != b).any() for a, b in zip(expected[old_version], expected[new_version]))


def test_serve_command_binds_loopback_and_stops_on_interrupt(exported):
    import re
    import signal
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(sys.executable), "tfrec-towers")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.Popen([script, "serve", exported["base"], "--port", "0"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        port, lines = None, []
        deadline = time.time() + 180
        while port is None and time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"gRPC on 127\.0\.0\.1:(\d+)", line)
            port = int(found.group(1)) if found else None
        assert port, "".join(lines)
        with RetrievalClient(f"127.0.0.1:{port}", "towers") as client:
            assert client.top_k(exported["queries"][0]).item_ids.shape == (1, K)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
