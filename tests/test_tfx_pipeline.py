"""The package inside a real TFX pipeline: ImportExampleGen -> StatisticsGen -> SchemaGen -> Trainer
(pipelines/tfx/trainer_module.py) -> Pusher, run by LocalDagRunner in the Debian trixie root that holds
TFX (TF 2.21), with the package pip-installed there from this checkout (run_in_env.sh: non-editable, TFX's
packages held as constraints, pip check; not on PYTHONPATH), then the pushed SavedModel loaded and queried
here (TF 2.20).

The root is built by pipelines/tfx/build_env.sh (cached outside the clone; the first build takes several
minutes and about 4.5 GB). Where it cannot be built (not root, no debootstrap, no mirror or PyPI) the test
is skipped with the build script's last lines; it never passes without running the pipeline.
Select it with ``pytest tests/test_tfx_pipeline.py`` (or ``-k tfx``).
"""
import glob
import importlib
import json
import os
import subprocess

import tfrec_towers  # first: Keras 2 before TensorFlow loads

import numpy as np
import pytest
import tensorflow as tf

from tfrec_towers.config import Config, packaged
from tfrec_towers.data.synthetic import generate_synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFX = os.path.join(REPO, "pipelines", "tfx")
BUILD_TIMEOUT_S = 3600
PIPELINE_TIMEOUT_S = 1800


def _tail(done, lines=15) -> str:
    text = ((done.stdout or "") + (done.stderr or "")).strip()
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="module")
def tfx_env():
    if os.geteuid() != 0:
        pytest.skip("the TFX environment needs root (debootstrap, mount, chroot)")
    try:
        done = subprocess.run(["bash", os.path.join(TFX, "build_env.sh")], capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.skip(f"building the TFX environment took over {BUILD_TIMEOUT_S} s")
    if done.returncode != 0:
        pytest.skip("the TFX environment could not be built (pipelines/tfx/build_env.sh exited "
                    f"{done.returncode}):\n{_tail(done)}")


def test_tfx_pipeline_trains_and_pushes_a_servable_version(tfx_env, tmp_path):
    data = tmp_path / "data"
    meta = generate_synthetic(str(data), num_users=200, num_items=100, num_requests=2000, seed=3, progress=None)
    serving_base = tmp_path / "serving" / "towers"
    pipeline_root = tmp_path / "tfx"
    try:
        done = subprocess.run(
            ["bash", os.path.join(TFX, "run_in_env.sh"), "--workdir", str(tmp_path),
             "python", "/repo/pipelines/tfx/pipeline.py", "--data-root", str(data),
             "--pipeline-root", str(pipeline_root), "--serving-base", str(serving_base),
             "--set", "train.epochs=2", "--set", "train.batch_size=256", "--k", "10"],
            capture_output=True, text=True, timeout=PIPELINE_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the TFX pipeline ran over {PIPELINE_TIMEOUT_S} s: {str(e.stderr or '')[-3000:]}")
    assert done.returncode == 0, _tail(done, 60)
    # The Trainer ran the package pip-installed into TFX's venv (not the checkout), under TFX's TF 2.21.
    output = done.stdout + done.stderr
    assert "tfrec_towers trainer: tfrec_towers" in output, _tail(done, 60)
    assert (f"tfrec_towers {tfrec_towers.__version__} from /opt/venv/lib/" in output
            and "site-packages/tfrec_towers, TensorFlow 2.21" in output), _tail(done, 60)

    # The Trainer trained on the train split and evaluated on the eval split (the ModelRun artifact).
    metrics_files = glob.glob(str(pipeline_root / "Trainer" / "model_run" / "*" / "run" / "metrics.json"))
    assert len(metrics_files) == 1, metrics_files
    with open(metrics_files[0], encoding="utf-8") as f:
        assert "hr@10" in json.load(f)["all_items"]

    # Pusher wrote one timestamp-named version: a complete SavedModel.
    versions = os.listdir(serving_base)
    assert len(versions) == 1 and versions[0].isdigit() and int(versions[0]) > 1_600_000_000, versions
    version_dir = serving_base / versions[0]
    assert (version_dir / "saved_model.pb").is_file() and (version_dir / "variables").is_dir()
    with open(version_dir / "assets" / "tfrec_towers.json", encoding="utf-8") as f:
        metadata = json.load(f)
    assert metadata["index"]["type"] == "portable" and metadata["index"]["k"] == 10
    assert metadata["catalog"]["num_items"] > 10
    assert metadata["tensorflow"].startswith("2.21")  # trained and exported inside TFX's environment
    assert metadata["tfrec_towers"] == tfrec_towers.__version__  # this checkout, pip-installed there

    # Loaded here, under TF 2.20, and queried with test events prepared by the package's feature spec.
    importlib.import_module("tensorflow_text")  # registers the ops of the export's text features
    loaded = tf.saved_model.load(str(version_dir))
    assert {"serving_default", "user_embedding", "score", "metadata"} <= set(loaded.signatures)
    config = Config.load(packaged("default"))
    records = [r.numpy() for r in tf.data.TFRecordDataset(sorted(glob.glob(meta["files"]["test"])),
                                                          compression_type="GZIP").take(8)]
    assert len(records) == 8
    query = config.features.prepare(tf.io.parse_example(records, config.features.parse_spec("query")))
    out = loaded.signatures["serving_default"](**query)
    scores, item_ids = out["scores"].numpy(), out["item_ids"].numpy()
    assert scores.shape == (8, 10) and item_ids.shape == (8, 10)
    assert np.all(np.isfinite(scores))
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    assert all(len(set(row)) == 10 for row in item_ids.tolist())  # distinct items per query
