"""Shared test helpers."""
import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import hashlib
import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

_DTYPES = {"int64": tf.int64, "float": tf.float32, "bytes": tf.string}
_LIST_FEATURES = {"item_genres", "item_history"}


def read_log(pattern: str, kinds: dict) -> pd.DataFrame:
    """Every record of the GZIP TFRecord files matching ``pattern``, parsed by TensorFlow, one row each.

    ``kinds`` is a generator's ``metadata["features"][...]``. bytes become str; list features become
    Python lists; a scalar feature absent from a record is None.
    """
    files = sorted(tf.io.gfile.glob(pattern))
    assert files, f"no file matches {pattern}"
    spec = {name: tf.io.RaggedFeature(_DTYPES[kind], row_splits_dtype=tf.int64) for name, kind in kinds.items()}
    columns = {name: [] for name in kinds}
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(65536):
        parsed = tf.io.parse_example(batch, spec)
        for name, kind in kinds.items():
            rows = parsed[name].to_list()
            if kind == "bytes":
                rows = [[v.decode("utf-8") for v in row] for row in rows]
            if name not in _LIST_FEATURES:
                assert all(len(row) <= 1 for row in rows), f"{name} holds more than one value"
                rows = [row[0] if row else None for row in rows]
            columns[name].extend(rows)
    return pd.DataFrame(columns)


@pytest.fixture(scope="session")
def log_reader():
    """``read_log`` (see there), as a fixture."""
    return read_log


def small_trained_run(root, num_users: int, num_items: int, num_requests: int, seed: int, epochs: int):
    """Synthetic logs under ``root/logs`` and the default config trained on them in ``root/run``:
    (run_dir, files, config). For tests of what comes after training (export, serving)."""
    from tfrec_towers.config import Config, packaged
    from tfrec_towers.data.synthetic import generate_synthetic
    from tfrec_towers.train import train

    files = generate_synthetic(str(root / "logs"), num_users=num_users, num_items=num_items,
                               num_requests=num_requests, seed=seed, progress=None)["files"]
    config = Config.load(packaged("default"))
    config.train.epochs, config.train.batch_size = epochs, 256
    run_dir = str(root / "run")
    train(config, files["train"], run_dir, files["test"], files["items"], verbose=0, progress=lambda message: None)
    return run_dir, files, config


def hashes(directory) -> dict:
    """sha256 of every file under ``directory`` (relative path -> hex digest): a run or artifact that
    must not be modified is hashed before and after."""
    out = {}
    for base, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out


def mixture(rng, counts, dim, clusters, spread):
    """Unit vectors around ``clusters`` random centres (noise ``spread``): one array per count."""
    centres = rng.normal(size=(clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = []
    for n in counts:
        x = centres[rng.integers(clusters, size=n)] + spread / np.sqrt(dim) * rng.normal(size=(n, dim))
        out.append((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))
    return out
