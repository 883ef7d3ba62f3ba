"""``tfrec-towers report``: a tiny trained run -> embedding map, similarity histogram and JSON numbers,
checked against the embeddings recomputed here with NumPy; and its clear errors."""
import json
import os
import shutil
import sys

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import matplotlib.image
import numpy as np
import pytest

from tfrec_towers.cli import main
from tfrec_towers.config import Config, packaged
from tfrec_towers.data.synthetic import generate_synthetic
from tfrec_towers.evaluation.embeddings import embed_catalog, embed_events
from tfrec_towers.run import RunDir, load_model
from tfrec_towers.train import train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PAIRS = 20000


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    meta = generate_synthetic(str(base / "logs"), num_users=300, num_items=150, num_requests=4000, seed=0,
                              progress=None)
    files = meta["files"]
    config = Config.load(packaged("default")).with_overrides(["train.epochs=1", "train.batch_size=256"])
    train(config, files["train"], str(base / "run"), files["test"], files["items"], verbose=0, progress=lambda m: None)
    return str(base / "run"), meta


def report_cli(capsys, *args):
    capsys.readouterr()
    code = main(["report", *[str(a) for a in args]])
    out, err = capsys.readouterr()
    return code, out, err


def check_png(path, min_coloured=50):
    """A real PNG that matplotlib reads, not blank: both tab:blue-ish and tab:orange-ish pixels."""
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC, path
    assert os.path.getsize(path) > 1000
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (600, 700) and image.shape[2] in (3, 4)
    r, b = image[..., 0], image[..., 2]
    assert (b > r + 0.2).sum() >= min_coloured, f"{path}: no blue (query) pixels"
    assert (r > b + 0.3).sum() >= min_coloured, f"{path}: no orange (item) pixels"


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_report_numbers_match_the_embeddings(run, capsys, tmp_path):
    run_dir, meta = run
    out = tmp_path / "report"
    code, stdout, err = report_cli(capsys, run_dir, "--out", out, "--points", 5000, "--pairs", PAIRS, "--seed", 3)
    assert code == 0, err
    for name in ("embedding_map.png", "similarity_histogram.png", "embedding_report.json"):
        assert f"written to {out / name}" in stdout
    assert "centroid cosine" in stdout and "query_query" in stdout
    check_png(out / "embedding_map.png")
    check_png(out / "similarity_histogram.png")
    with open(out / "embedding_report.json", encoding="utf-8") as f:
        report = json.load(f)

    # the same embeddings, recomputed here from the run's globs
    info, config = RunDir(run_dir).info(), RunDir(run_dir).config()
    assert (report["eval"], report["items"]) == (info["eval"], info["items"])
    model = load_model(run_dir)
    item_ids, p = embed_catalog(model, config, info["items"], progress=lambda m: None)
    _, targets, q = embed_events(model, config, info["eval"], progress=lambda m: None)
    q, p = unit(q.astype(np.float64)), unit(p.astype(np.float64))
    c = report["counts"]
    assert c["queries"] == c["queries_mapped"] == len(q) == meta["num_test"]
    assert c["items"] == c["items_mapped"] == len(p) == meta["num_items"]
    assert c["pairs"] == PAIRS

    # sampled means against the exact means over all pairs (i != j within a tower)
    nq, np_ = len(q), len(p)
    exact = {"query_query": ((q.sum(0) @ q.sum(0)) - nq) / (nq * (nq - 1)),
             "item_item": ((p.sum(0) @ p.sum(0)) - np_) / (np_ * (np_ - 1)),
             "query_item": float((q @ p.T).mean())}
    s = report["similarity"]
    for key, mean in exact.items():
        assert s[key]["count"] == PAIRS
        assert abs(s[key]["mean"] - mean) < 5 * s[key]["std"] / np.sqrt(PAIRS) + 1e-6, (key, s[key], mean)
    assert s["query_item"]["std"] == pytest.approx(float((q @ p.T).std()), rel=0.05)
    index = {item: n for n, item in enumerate(item_ids.tolist())}
    own = np.array([index[t] for t in targets.tolist()])
    positives = np.einsum("nd,nd->n", q, p[own])
    assert s["query_true_item"]["count"] == len(q) == c["events_with_item_in_catalog"]
    assert s["query_true_item"]["mean"] == pytest.approx(positives.mean(), abs=1e-5)
    # a trained model scores an event's own item above a random one
    assert s["query_true_item"]["mean"] > s["query_item"]["mean"] + 0.05

    centroid = unit(q.mean(0, keepdims=True)) @ unit(p.mean(0, keepdims=True)).T
    assert report["centroid_cosine"] == pytest.approx(float(centroid[0, 0]), abs=1e-5)
    union = np.concatenate([q, p])
    sv = np.linalg.svd(union - union.mean(0), compute_uv=False)
    assert report["map_explained_variance"] == pytest.approx(float((sv[:2] ** 2).sum() / (sv ** 2).sum()), abs=1e-5)


def test_errors_are_clear(run, capsys, tmp_path, monkeypatch):
    run_dir, meta = run
    files = meta["files"]

    a_file = tmp_path / "taken.txt"
    a_file.write_text("x")
    code, _, err = report_cli(capsys, run_dir, "--out", a_file)
    assert code == 2 and "tfrec-towers report: error:" in err and "not a directory" in err and "Traceback" not in err

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for name in ("run.json", "config.yaml", "feature_stats.json"):
        shutil.copy(os.path.join(run_dir, name), unfinished / name)
    code, _, err = report_cli(capsys, unfinished, "--out", tmp_path / "o1")
    assert code == 2 and "no final weights" in err and not (tmp_path / "o1").exists()

    code, _, err = report_cli(capsys, tmp_path / "no-run", "--out", tmp_path / "o1")
    assert code == 2 and "not a training run directory" in err

    # a run trained without --eval/--items: the eval glob must be given; the catalog is the training items
    no_eval = tmp_path / "no-eval"
    shutil.copytree(run_dir, no_eval, ignore=shutil.ignore_patterns("checkpoints", "backup", "logs"))
    RunDir(str(no_eval)).write_info(train=files["train"], eval=None, items=None)
    code, _, err = report_cli(capsys, no_eval, "--out", tmp_path / "o2")
    assert code == 2 and "no eval glob" in err and "--eval" in err and not (tmp_path / "o2").exists()
    code, _, err = report_cli(capsys, no_eval, "--out", tmp_path / "o2", "--eval", files["test"],
                              "--points", 40, "--pairs", 500)
    assert code == 0, err
    with open(tmp_path / "o2" / "embedding_report.json", encoding="utf-8") as f:
        report = json.load(f)
    assert report["eval"] == files["test"] and report["items"] == files["train"]
    assert report["counts"]["queries_mapped"] == report["counts"]["items_mapped"] == 40
    assert report["counts"]["queries"] == meta["num_test"] and 0 < report["map_explained_variance"] <= 1
    check_png(tmp_path / "o2" / "embedding_map.png", min_coloured=10)

    # t-SNE without scikit-learn (simulated when it is installed): says what to do, writes nothing
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    code, _, err = report_cli(capsys, run_dir, "--out", tmp_path / "o3", "--method", "tsne")
    assert code == 2 and "scikit-learn" in err and "--method pca" in err and not (tmp_path / "o3").exists()
