"""Continuous training end to end (issue 25): an initial run and two warm-started increments, each exported
as a new version into the base that one ``tfrec-towers serve`` process polls; a gRPC client sees each new
version without a restart, and the items new in an increment in its answers."""
import time

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import numpy as np
import tensorflow as tf
from cli_helpers import serve_in_subprocess

from tfrec_towers.config import Config, packaged
from tfrec_towers.data.synthetic import generate_synthetic
from tfrec_towers.export.exporter import export_run
from tfrec_towers.run import RunDir
from tfrec_towers.serving import RetrievalClient
from tfrec_towers.train import train


def quiet(message):
    pass


def query_rows(config, pattern, users, n=4):
    """Query features of test events of ``users`` (a set of user IDs), as NumPy arrays."""
    records = [r.numpy() for r in tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(pattern)), compression_type="GZIP")]
    parsed = tf.io.parse_example(records, config.features.parse_spec("query"))
    keep = [i for i, u in enumerate(parsed["user_id"].numpy().astype(str)) if u in users][:n]
    assert keep, "no test event of those users"
    return {k: (tf.gather(v, keep).to_tensor() if isinstance(v, tf.RaggedTensor) else tf.gather(v, keep)).numpy()
            for k, v in config.features.prepare(parsed).items()}


def wait_for_version(client, query, version, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        try:
            top = client.top_k(query, k=3)
            if top.version == version:
                return top
        except Exception:  # the version may be loading
            pass
        assert time.monotonic() < deadline, f"version {version} was not served within {timeout}s"
        time.sleep(0.5)


def test_two_increments_are_served_as_new_versions_without_restart(tmp_path):
    config = Config.load(packaged("default")).with_overrides(
        ["train.epochs=2", "train.batch_size=128", "model.hidden=[]", "model.output_dim=32"])
    days = [generate_synthetic(str(tmp_path / f"day{d}"), num_users=n, num_items=m, num_requests=10 * n, seed=d,
                               progress=None)["files"] for d, (n, m) in enumerate([(60, 40), (80, 55), (100, 70)])]
    base = tmp_path / "models"
    runs, versions, server_cm, server = [], [], None, None
    try:
        for d, files in enumerate(days):
            run_dir = str(tmp_path / f"run{d}")
            train(config, files["train"], run_dir, items_pattern=files["items"], verbose=0, progress=quiet,
                  warm_start=runs[-1] if runs else None)
            runs.append(run_dir)
            version_dir = export_run(run_dir, str(base), "towers", k=10, max_k=200, items=files["items"], log=quiet)
            versions.append(int(version_dir.rstrip("/").split("/")[-1]))
            if d == 0:
                server_cm = serve_in_subprocess(base, "--poll-seconds", "0.5")
                server = server_cm.__enter__()
                continue
            info = RunDir(run_dir).info()["warm_start"]
            assert info["from"] == runs[d - 1] and info["generation"] == d
            old_items = set(RunDir(runs[d - 1]).stats().vocabulary("item_id"))
            new_items = set(RunDir(run_dir).stats().vocabulary("item_id")) - old_items
            old_users = set(RunDir(runs[d - 1]).stats().vocabulary("user_id"))
            new_users = set(RunDir(run_dir).stats().vocabulary("user_id")) - old_users
            assert new_items and new_users
            query = query_rows(config, files["test"], new_users)
            with RetrievalClient(f"127.0.0.1:{server.grpc_port}", "towers", timeout_s=30) as client:
                wait_for_version(client, query, versions[d])  # the same process, the new version
                top = client.top_k(query, k=len(new_items), allowed=sorted(new_items))
                assert top.version == versions[d] and top.count.tolist() == [len(new_items)] * len(top.count)
                assert all(set(row[:n]) == new_items for row, n in zip(top.item_ids, top.count))
                assert np.isfinite(top.scores[:, :len(new_items)]).all()
                # a new user's vector is its own row, not the OOV row every unknown user shares
                user_vectors, _ = client.user_embedding(query)
                oov_vectors, _ = client.user_embedding(dict(query, user_id=np.array([b"never-seen"] * len(query["user_id"]))))
                assert not np.allclose(user_vectors, oov_vectors)
        assert versions == sorted(set(versions)), versions
    finally:
        if server_cm is not None:
            server_cm.__exit__(None, None, None)
    assert "Traceback" not in server.output()
