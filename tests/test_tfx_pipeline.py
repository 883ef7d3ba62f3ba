"""The package inside a real TFX pipeline: ImportExampleGen -> StatisticsGen -> SchemaGen -> Trainer
(pipelines/tfx/trainer_module.py) -> Pusher, run by LocalDagRunner in the Debian trixie root that holds
TFX (TF 2.21), with the package pip-installed there from this checkout (run_in_env.sh: non-editable, TFX's
packages held as constraints, pip check; not on PYTHONPATH), then the pushed SavedModel loaded and queried
here (TF 2.20). Then the warm start over two consecutive spans of logs (issue 25.3): both runs use
``--warm-start`` (a Resolver passes the pipeline's latest Model to the Trainer as ``base_model``) with one
pipeline root and metadata store; span 1 finds no model and trains from scratch (the first test checks
that run), span 2 continues span 1's run with new users and items. The module's keep-and-find-the-run
plumbing on a remote filesystem is checked here without the root (TensorFlow's ram:// filesystem).

The root is built by pipelines/tfx/build_env.sh (cached outside the clone; the first build takes several
minutes and about 4.5 GB). Where it cannot be built (not root, no debootstrap, no mirror or PyPI) the
pipeline tests are skipped with the build script's last lines; they never pass without running it.
Select it with ``pytest tests/test_tfx_pipeline.py`` (or ``-k tfx``).
"""
import glob
import importlib
import importlib.util
import json
import os
import subprocess

import tfrec_towers  # first: Keras 2 before TensorFlow loads

import numpy as np
import pytest
from conftest import hashes
import tensorflow as tf

from tfrec_towers.config import Config, packaged
from tfrec_towers.data.synthetic import generate_synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFX = os.path.join(REPO, "pipelines", "tfx")
BUILD_TIMEOUT_S = 3600
PIPELINE_TIMEOUT_S = 1800
RUN_SUBDIR = "tfrec_towers_run"  # trainer_module.RUN_SUBDIR: each Model artifact keeps its run there


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


def run_pipeline(workdir, data, pipeline_root, serving_base, *extra) -> str:
    """Run pipelines/tfx/pipeline.py in the TFX root with LocalDagRunner; returns its output."""
    try:
        done = subprocess.run(
            ["bash", os.path.join(TFX, "run_in_env.sh"), "--workdir", str(workdir),
             "python", "/repo/pipelines/tfx/pipeline.py", "--data-root", str(data),
             "--pipeline-root", str(pipeline_root), "--serving-base", str(serving_base),
             "--set", "train.epochs=2", "--set", "train.batch_size=256", "--k", "10", *extra],
            capture_output=True, text=True, timeout=PIPELINE_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the TFX pipeline ran over {PIPELINE_TIMEOUT_S} s: {str(e.stderr or '')[-3000:]}")
    assert done.returncode == 0, _tail(done, 60)
    return done.stdout + done.stderr


def listing(directory) -> list:
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def query_batch(config, pattern, n=None, where=None):
    """Up to ``n`` test records of ``pattern`` (those whose user_id passes ``where``) as query features."""
    records = []
    for r in tf.data.TFRecordDataset(sorted(glob.glob(pattern)), compression_type="GZIP"):
        record = r.numpy()
        if where is not None:
            user = tf.train.Example.FromString(record).features.feature["user_id"].bytes_list.value[0].decode()
            if not where(user):
                continue
        records.append(record)
        if n and len(records) == n:
            break
    return records, config.features.prepare(tf.io.parse_example(records, config.features.parse_spec("query")))


@pytest.fixture(scope="module")
def span1(tfx_env, tmp_path_factory):
    """The pipeline run on span 1 with --warm-start (no model yet: the Trainer trains from scratch), and
    what it left: the artifact directories and pushed versions as they were right after it."""
    root = tmp_path_factory.mktemp("tfx")
    data = root / "data" / "span-1"
    meta = generate_synthetic(str(data), num_users=200, num_items=100, num_requests=2000, seed=3, progress=None)
    serving_base, pipeline_root = root / "serving" / "towers", root / "tfx"
    output = run_pipeline(root, data, pipeline_root, serving_base, "--warm-start")
    return {"root": root, "meta": meta, "output": output, "serving_base": serving_base,
            "pipeline_root": pipeline_root, "versions": listing(serving_base),
            "models": listing(pipeline_root / "Trainer" / "model"),
            "model_runs": listing(pipeline_root / "Trainer" / "model_run")}


def test_tfx_pipeline_trains_and_pushes_a_servable_version(span1):
    meta, output, pipeline_root, serving_base = (span1[k] for k in ("meta", "output", "pipeline_root", "serving_base"))
    # The Trainer ran the package pip-installed into TFX's venv (not the checkout), under TFX's TF 2.21.
    assert "tfrec_towers trainer: tfrec_towers" in output, output[-6000:]
    assert (f"tfrec_towers {tfrec_towers.__version__} from /opt/venv/lib/" in output
            and "site-packages/tfrec_towers, TensorFlow 2.21" in output), output[-6000:]
    # --warm-start on the first span: the Resolver found no Model, the Trainer got no base_model.
    assert "tfrec_towers trainer: no base model: training from scratch" in output, output[-6000:]

    # The Trainer trained on the train split and evaluated on the eval split (the ModelRun artifact).
    assert len(span1["model_runs"]) == 1, span1["model_runs"]
    run_dir = pipeline_root / "Trainer" / "model_run" / span1["model_runs"][0] / "run"
    with open(run_dir / "metrics.json", encoding="utf-8") as f:
        assert "hr@10" in json.load(f)["all_items"]
    with open(run_dir / "run.json", encoding="utf-8") as f:
        assert "warm_start" not in json.load(f)
    # The Model artifact keeps the run beside the SavedModel, for the next span's warm start.
    assert len(span1["models"]) == 1, span1["models"]
    kept = pipeline_root / "Trainer" / "model" / span1["models"][0] / RUN_SUBDIR
    for name in ("run.json", "config.yaml", "feature_stats.json", "metrics.json", "weights/final.index"):
        assert (kept / name).is_file(), name
    assert not (kept / "train.lock").exists() and not (kept / "checkpoints").exists()

    # Pusher wrote one timestamp-named version: a complete SavedModel.
    versions = span1["versions"]
    assert len(versions) == 1 and versions[0].isdigit() and int(versions[0]) > 1_600_000_000, versions
    version_dir = serving_base / versions[0]
    assert (version_dir / "saved_model.pb").is_file() and (version_dir / "variables").is_dir()
    assert not (version_dir / RUN_SUBDIR).exists()  # Pusher pushes the SavedModel only
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
    records, query = query_batch(Config.load(packaged("default")), meta["files"]["test"], n=8)
    assert len(records) == 8
    out = loaded.signatures["serving_default"](**query)
    scores, item_ids = out["scores"].numpy(), out["item_ids"].numpy()
    assert scores.shape == (8, 10) and item_ids.shape == (8, 10)
    assert np.all(np.isfinite(scores))
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    assert all(len(set(row)) == 10 for row in item_ids.tolist())  # distinct items per query


def test_tfx_pipeline_warm_starts_the_next_span_from_the_latest_model(span1):
    root, pipeline_root, serving_base = span1["root"], span1["pipeline_root"], span1["serving_base"]
    trainer = pipeline_root / "Trainer"
    (model1,), (model_run1,), (version1,) = span1["models"], span1["model_runs"], span1["versions"]
    first = {"model": trainer / "model" / model1, "model_run": trainer / "model_run" / model_run1,
             "pushed": serving_base / version1}
    before = {name: hashes(path) for name, path in first.items()}
    assert all(before.values())
    # Span 2: 50% more users and items (IDs u…/i… extend span 1's), another seed.
    data = root / "data" / "span-2"
    meta = generate_synthetic(str(data), num_users=300, num_items=150, num_requests=3000, seed=4, progress=None)
    output = run_pipeline(root, data, pipeline_root, serving_base, "--warm-start")

    # The Resolver handed the Trainer span 1's Model; the Trainer continued the run kept in it.
    kept1 = str(first["model"] / RUN_SUBDIR)  # the paths TFX got (--workdir is mounted at the same path)
    assert (f"tfrec_towers trainer: warm start from the base model {first['model']}/Format-Serving: "
            f"continuing its run {kept1}") in output, output[-6000:]
    assert f"warm start from {kept1}:" in output, output[-6000:]  # the package's own line (copy_previous)
    (model_run2,) = set(listing(trainer / "model_run")) - {model_run1}
    (model2,) = set(listing(trainer / "model")) - {model1}
    with open(trainer / "model_run" / model_run2 / "run" / "run.json", encoding="utf-8") as f:
        warm = json.load(f)["warm_start"]
    assert warm["from"] == kept1 and warm["generation"] == 1 and warm["start_step"] > 0
    assert warm["config_changes"] == []  # no config given: span 1's config.yaml, same overrides
    for source in ("user_id", "item_id"):
        assert warm["vocabularies"][source]["added"] > 0, warm["vocabularies"]
        assert warm["vocabularies"][source]["size"] > warm["vocabularies"][source]["old_size"]
    # Span 2's Model keeps its own run (generation 1) for span 3.
    kept2 = trainer / "model" / model2 / RUN_SUBDIR
    with open(kept2 / "run.json", encoding="utf-8") as f:
        assert json.load(f)["warm_start"]["from"] == kept1
    with open(first["model"] / RUN_SUBDIR / "feature_stats.json", encoding="utf-8") as f:
        stats1 = json.load(f)
    with open(kept2 / "feature_stats.json", encoding="utf-8") as f:
        stats2 = json.load(f)
    users1, users2 = (set(s.get("vocab_order", {}).get("user_id") or s["vocab_counts"]["user_id"])
                      for s in (stats1, stats2))  # the user-ID vocabularies of the two models
    assert users1 < users2 and stats2["generation"] == 1

    # Nothing of span 1's execution changed: its Model (run kept inside), ModelRun and pushed version.
    assert {name: hashes(path) for name, path in first.items()} == before

    # Pusher pushed a second, newer version; it loads here and serves users that are new in span 2.
    versions = listing(serving_base)
    assert len(versions) == 2 and version1 in versions, versions
    version2 = max(versions, key=int)
    assert int(version2) > int(version1)
    importlib.import_module("tensorflow_text")
    config = Config.load(packaged("default"))
    records, query = query_batch(config, meta["files"]["test"], n=8, where=lambda u: u in users2 - users1)
    assert records, "span 2's test split has no user that is new in span 2"
    n = len(records)
    new2 = tf.saved_model.load(str(serving_base / version2))
    out = new2.signatures["serving_default"](**query)
    scores, item_ids = out["scores"].numpy(), out["item_ids"].numpy()
    assert scores.shape == (n, 10) and item_ids.shape == (n, 10) and np.all(np.isfinite(scores))
    # The new users have their own embedding rows in the new version (not the out-of-vocabulary row, as
    # in span 1's version, where they and an ID never seen get the same embedding).
    unseen = dict(query, user_id=tf.fill(tf.shape(query["user_id"]), "never-seen-user"))
    old1 = tf.saved_model.load(str(serving_base / version1))
    emb = lambda model, q: model.signatures["user_embedding"](**q)["embedding"].numpy()  # noqa: E731
    assert np.allclose(emb(old1, query), emb(old1, unseen), atol=1e-6)
    assert not np.allclose(emb(new2, query), emb(new2, unseen), atol=1e-3)


def test_trainer_module_keeps_its_run_and_finds_the_base_models_on_a_remote_filesystem(tmp_path):
    """trainer_module's warm-start plumbing where artifacts are not local (TensorFlow's ram:// filesystem
    stands in for gs://): the run kept beside the SavedModel, and found again from ``base_model``. Runs
    here, without the TFX root (the module needs only the package and TensorFlow)."""
    spec = importlib.util.spec_from_file_location("tfx_trainer_module", os.path.join(TFX, "trainer_module.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.RUN_SUBDIR == RUN_SUBDIR
    run = tmp_path / "model_run" / "run"  # what a finished run holds, and what is not kept
    files = {"run.json": "{}", "config.yaml": "a: 1\n", "feature_stats.json": "{}", "scan.txt": "scan",
             "metrics.json": "{}", "weights/final.index": "i", "weights/final.data-00000-of-00001": "d",
             "train.lock": "", "checkpoints/epoch-001.index": "c", "logs/train/events": "e"}
    for name, text in files.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(text)
    uri = f"ram://artifacts/{tmp_path.name}/Trainer/model/7"
    assert module.model_artifact_uri(uri + "/Format-Serving/") == uri
    assert module.keep_run(str(run), uri) == f"{uri}/{RUN_SUBDIR}"

    scratch = tmp_path / "scratch"
    local = module.base_run(uri + "/Format-Serving", str(scratch))
    assert local == str(scratch / RUN_SUBDIR)  # copied here: the package reads runs with local file APIs
    copied = {os.path.relpath(os.path.join(b, n), local) for b, _, names in os.walk(local) for n in names}
    assert copied == {"run.json", "config.yaml", "feature_stats.json", "scan.txt", "metrics.json",
                      "weights/final.index", "weights/final.data-00000-of-00001"}
    assert all((scratch / RUN_SUBDIR / name).read_text() == files[name] for name in copied)

    assert module.base_run(None, str(scratch)) is None  # no base model: from scratch
    local_model = tmp_path / "model" / "5"
    module.keep_run(str(run), str(local_model))
    assert module.base_run(str(local_model / "Format-Serving"), str(scratch)) == str(local_model / RUN_SUBDIR)
    with pytest.raises(ValueError, match="holds no tfrec_towers run"):
        module.base_run(f"ram://artifacts/{tmp_path.name}/elsewhere/Format-Serving", str(scratch))
