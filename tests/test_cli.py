"""The ``tfrec-towers`` command line, run as real subprocesses (no mocks)."""
import json
import os
import subprocess
import sys

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import yaml

from tfrec_towers.config import Config, packaged


def cli(*args):
    script = os.path.join(os.path.dirname(sys.executable), "tfrec-towers")
    base = [script] if os.path.exists(script) else [sys.executable, "-m", "tfrec_towers.cli"]
    return base + [str(a) for a in args]


def run(*args, cwd, timeout=300):
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.run(cli(*args), capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def error_lines(stderr):
    """stderr without TensorFlow/absl log noise (lines that TF writes while importing)."""
    noise = ("WARNING:", "I0000", "E0000", "W0000")
    return [line for line in stderr.splitlines()
            if line.strip() and not line.startswith(noise) and " external/" not in line and "cuda" not in line.lower()]


def test_config_prints_yaml_that_loads(tmp_path):
    proc = run("config", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    d = yaml.safe_load(proc.stdout)
    config = Config.from_dict(d)
    assert config.to_dict() == Config.load(packaged("default")).to_dict()
    assert config.features.item_id == "item_id" and config.data.label == "label"

    proc = run("config", "no-such-config", cwd=tmp_path)
    assert proc.returncode == 2
    assert "no-such-config" in proc.stderr and "Traceback" not in proc.stderr


def test_train_with_unmatched_glob_exits_2_with_one_line(tmp_path):
    missing = str(tmp_path / "nowhere" / "part-*.tfrecord.gz")
    proc = run("train", "--train", missing, "--run-dir", tmp_path / "run", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tfrec-towers train: error:") and missing in lines[0]
    assert proc.stdout == ""


def test_train_with_unknown_config_key_exits_2(tmp_path):
    proc = run("train", "--train", tmp_path / "x.tfrecord", "--run-dir", tmp_path / "run",
               "--set", "train.epoch=1", cwd=tmp_path)
    assert proc.returncode == 2
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "'epoch'" in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def test_train_without_required_argument_is_a_usage_error(tmp_path):
    proc = run("train", "--run-dir", tmp_path / "run", cwd=tmp_path)
    assert proc.returncode == 2
    assert "--train" in proc.stderr and "usage:" in proc.stderr and "Traceback" not in proc.stderr


def test_demo_end_to_end(tmp_path):
    workdir = tmp_path / "demo"
    proc = run("demo", "--workdir", workdir, "--set", "train.epochs=1", cwd=tmp_path, timeout=480)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "generating synthetic logs" in out
    assert "hr@10=" in out  # the formatted metrics
    assert "metrics written to" in out
    printed = json.loads(out[out.rindex("\n{") + 1:])  # the final JSON summary
    assert set(printed) == {"all_items", "exclude_history"}
    for variant in printed.values():
        assert {"hr@1", "hr@10", "hr@100", "ndcg@10", "mrr"} <= set(variant)
        assert 0.0 <= variant["hr@10"] <= variant["hr@100"] <= 1.0
    with open(workdir / "data" / "metadata.json", encoding="utf-8") as f:
        meta = json.load(f)
    with open(workdir / "run" / "metrics.json", encoding="utf-8") as f:
        saved = json.load(f)
    assert saved["all_items"] == printed["all_items"]
    assert saved["events"] == meta["num_test"]
    assert os.path.exists(workdir / "run" / "weights" / "final.index")
    versions = os.listdir(workdir / "models" / "tfrec_towers")  # exported for serving
    assert len(versions) == 1 and versions[0].isdigit()
    assert os.path.exists(workdir / "models" / "tfrec_towers" / versions[0] / "saved_model.pb")
    assert f"tfrec-towers serve {workdir / 'models'}" in out
    with open(workdir / "run" / "epochs.jsonl", encoding="utf-8") as f:
        assert len(f.readlines()) == 1
