"""Gowalla (LightGCN split) retrieval benchmark: popularity, implicit ALS, the TFRS basic model and this package.

Protocol of the published numbers (LightGCN, He et al. 2020): train on train.txt + valid.txt, rank all
40,981 items for each of the 29,858 test users with the user's training items removed, Recall@20 and
NDCG@20 (ideal DCG over min(|test items|, 20)) averaged over test users. ``--split valid`` trains on
train.txt and evaluates on valid.txt (tuning); ``--split test`` is for the final figures. Models:

* ``popularity``: score = the item's count among the training interactions (run once: no seed);
* ``als``: ``implicit`` 0.7.3's CPU ``AlternatingLeastSquares`` (2 threads, 15 iterations) on the
  binary user x item CSR matrix; factors, regularisation and alpha are tuned on train -> valid by a
  coordinate search from implicit's defaults (``ALS_SEARCH``), then refitted for the test split;
* ``tfrs_basic``: the TFRS basic-retrieval model's structure (user-ID and item-ID embeddings, dot
  product, ``tfrs.tasks.Retrieval()``: in-batch softmax, Adagrad 0.1 as in the tutorial) at the
  embedding size and batch size of ``cf.yaml``, ``BASIC_EPOCHS`` epochs, trained from the pairs in memory;
* ``package_basic``: this package configured as ``tfrs_basic`` (user-ID query, item-ID candidate, no
  history, no projection, dot product, in-batch softmax only: no temperature, logQ, accidental-hit
  removal or sampled negatives; Adagrad 0.1; same embedding size, batch size and epochs), trained
  through ``train`` from the TFRecords with ``data.in_memory`` (parsed once before ``fit``, as
  ``tfrs_basic``'s pairs are read before its timer; every epoch a new permutation of all examples):
  the apples-to-apples speed comparison (target >= 1.0x);
* ``default``: this package with ``tfrec_towers/configs/cf.yaml`` (the config ``user-item-lists`` data
  gets by default), trained from the TFRecords written by ``tfrec-towers user-item-lists``; on the valid
  split it validates itself every ``train.validation.every`` epochs (``valid_curve``: Recall@20 by epoch
  and by minute of training; ``--no-curve`` to skip);
* ``best``: the best configuration found on valid: ``cf.yaml`` without the query features in
  ``BEST_DROP_QUERY``, plus the ``BEST`` overrides (both empty now: ``best`` is ``default``).

``--set`` overrides go to ``default`` and ``best`` (not to ``package_basic``) (e.g. the objective/negative-source ablation:
``--models best --set task.samtone=query``). Every model is scored by
``tfrec_towers.evaluation.metrics.user_catalog_metrics`` (exact scores in chunks of users, training items at
-inf). Speed: training examples per second of ``fit`` wall time, compared as a ratio to
``tfrs_basic``'s in the same run and seed (the machine is shared). Peak memory: the process's peak
RSS (VmHWM, reset through /proc/self/clear_refs before each phase) during training and evaluation.

    python -m benchmarks.gowalla --split test --models popularity,als,tfrs_basic,default --seeds 0
    python -m benchmarks.gowalla --split test --models tfrs_basic,best --seeds 0,1,2
    python -m benchmarks.gowalla --split valid --models default --set task.temperature=0.05 --output-json /tmp/v.json

Results of several invocations are merged into the same JSON (per split and model; ``--fresh`` starts
over). Gowalla is read by path from ``$TFREC_TOWERS_GOWALLA`` (default ``<repo>/../shared/datasets/gowalla``).
"""
import datetime
import gc
import json
import os
import resource
import shutil
import sys
import tempfile
import time

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from tfrec_towers.config import Config, packaged
from tfrec_towers.data.user_item_lists import convert_user_item_lists, merge_lists, read_user_item_lists
from tfrec_towers.evaluation.job import evaluate_users
from tfrec_towers.evaluation.metrics import user_catalog_metrics
from tfrec_towers.run import RunDir, load_model
from tfrec_towers.train import train

from benchmarks.harness import (ResultsFile, Timer, add_common_flags, argument_parser, comma_list, data_dir, fmt,
                                fresh_start, log, mean_std_by_key, read_json, run_info, runs_provenance)

__all__ = ["MODELS", "K", "BEST", "BEST_DROP_QUERY", "Split", "run_popularity", "run_als", "run_tfrs_basic",
           "package_config", "run_package", "summarize", "markdown", "checks", "main"]

MODELS = ("popularity", "als", "tfrs_basic", "package_basic", "default", "best")
PACKAGE_MODELS = ("package_basic", "default", "best")
TUNED_MODELS = ("default", "best")  # the package models held to the quality targets; --set applies to them
BASELINE = "tfrs_basic"
K = 20
HISTORY_LEN = 50
CHUNK = 1024  # users scored at a time: 1024 x 40,981 float32 = 168 MB

#: The best configuration found on train -> valid, as changes to the packaged cf.yaml: none since the
#: LazyAdam / BSL configuration became cf.yaml (2026-12-06; IDs only since 2026-12-07); the 2026-11-30 search
#: (history-only, 256-d, softmax, 2 epochs: 0.1554 on test) is in results/gowalla_2026-11-30.md.
BEST_DROP_QUERY: list = []
BEST_EMBEDDING_DIM = None  # every feature's embedding_dim in the best configuration (None: cf.yaml's)
BEST: list = []

#: ALS coordinate search on valid: start at 64 factors with implicit's default regularisation and alpha,
#: then each stage tries the listed values of one hyperparameter with the others at their best so far
#: (alpha first: it matters most on this binary matrix; 1 -> 50 gained 0.056 Recall@20 on valid).
ALS_START = {"factors": 64, "regularization": 0.01, "alpha": 1.0}
ALS_SEARCH = [("alpha", [1.0, 10.0, 50.0, 100.0, 200.0]), ("regularization", [0.01, 0.1, 1.0]), ("factors", [64, 128, 256])]
ALS_ITERATIONS = 15

#: Published (same split and protocol) and measured-elsewhere figures: (Recall@20, NDCG@20).
ANCHORS = [("LightGCN (published)", 0.1830, 0.1554), ("SimpleX (published)", 0.1872, 0.1557),
           ("NGCF (published)", 0.1570, 0.1327), ("MF-BPR (published)", 0.1291, 0.1109),
           ("implicit ALS 128 factors, untuned (this machine kind)", 0.1609, 0.1361),
           ("implicit BPR, untuned (this machine kind)", 0.0775, 0.0558),
           ("popularity (this machine kind)", 0.0416, 0.0317)]
TARGET_RECALL = 0.1830

TFRS_LR = 0.1  # the basic-retrieval tutorial's Adagrad learning rate
BASIC_EPOCHS = 8  # the basic models' length: cf.yaml's until 2026-12-07, kept so that their (speed) rows stand


def gated_tower(dim: int = 256, oov_rate: float = 0.1) -> list:
    """Overrides giving cf.yaml the user tower it had from 2026-12-06 to 2026-12-07, which the ablation and
    the profile's history variants measured: SimpleX's gate, 0.8 user ID (ID dropout ``oov_rate``) + 0.2 W
    mean(50 history items through the item table), dropout 0.1 on the user vector (8 epochs then)."""
    return [f"features.query=[{{name: user_id, type: id, embedding_dim: {dim}, oov_rate: {oov_rate}}}, "
            f"{{name: item_history, type: sequence, vocab_from: item_id, max_len: 50, pooling: mean, "
            f"embedding_dim: {dim}}}]", "model.user_gate={id: user_id, weight: 0.8, learned: false, dropout: 0.1}"]


# --- memory ---------------------------------------------------------------------------------------

def reset_peak() -> bool:
    """Reset this process's peak RSS (Linux: writing 5 to /proc/self/clear_refs resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """VmHWM (peak RSS since the last reset), else getrusage's lifetime maxrss, in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- data -----------------------------------------------------------------------------------------

SPLITS = {"valid": (["train.txt"], "valid.txt", ["test.txt"]), "test": (["train.txt", "valid.txt"], "test.txt", [])}


class Split:
    """One protocol: the converted TFRecords (for the package) and the lists in memory (for the rest)."""

    def __init__(self, name: str, data_dir: str, workdir: str):
        train_files, test_file, catalog_files = SPLITS[name]
        path = lambda f: os.path.join(data_dir, f)  # noqa: E731
        out = os.path.join(workdir, "data", name)
        meta_path = os.path.join(out, "metadata.json")
        meta = None
        if os.path.exists(meta_path):  # reuse a conversion with the same inputs
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
            if (meta.get("train_files") != [os.path.abspath(path(p)) for p in train_files]
                    or meta.get("history_len") != HISTORY_LEN):
                meta = None
        if meta is None:
            with Timer() as t:
                meta = convert_user_item_lists([path(p) for p in train_files], path(test_file), out,
                                               catalog_files=[path(p) for p in catalog_files], history_len=HISTORY_LEN,
                                               name=f"gowalla ({name} split)", overwrite=True,
                                               progress=lambda m: log("  " + m))
            meta["convert_seconds"] = round(t.wall, 1)
        self.name, self.meta, self.files = name, meta, meta["files"]
        self.train, _ = merge_lists([read_user_item_lists(path(p)) for p in train_files])
        test = read_user_item_lists(path(test_file))
        self.test = {u: [i for i in items if i not in set(self.train.get(u, ()))] for u, items in test.items()}
        self.test = {u: items for u, items in self.test.items() if items}
        catalog = set()
        for lists in [self.train, test] + [read_user_item_lists(path(p)) for p in catalog_files]:
            for items in lists.values():
                catalog.update(items)
        self.catalog = np.array(sorted(catalog), dtype=np.int64)
        self.item_ids = np.array([str(i) for i in self.catalog.tolist()])
        self.item_index = {int(i): n for n, i in enumerate(self.catalog.tolist())}
        self.users = np.array(sorted(self.train), dtype=np.int64)  # row of each training user
        self.user_index = {int(u): n for n, u in enumerate(self.users.tolist())}
        self.history = {str(u): {str(i) for i in items} for u, items in self.train.items()}
        self.num_train = sum(len(v) for v in self.train.values())
        ev_users = [u for u, items in self.test.items() for _ in items]
        self.event_users = np.array([str(u) for u in ev_users])
        self.event_items = np.array([str(i) for items in self.test.values() for i in items])
        self.event_rows = np.array([self.user_index.get(u, -1) for u in ev_users], dtype=np.int64)

    def csr(self):
        """Binary user x item matrix of the training interactions (rows: ``users``, columns: catalog)."""
        from scipy.sparse import csr_matrix

        rows = np.array([self.user_index[u] for u, items in self.train.items() for _ in items], dtype=np.int32)
        cols = np.array([self.item_index[i] for items in self.train.values() for i in items], dtype=np.int32)
        return csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                          shape=(len(self.users), len(self.catalog)))

    def score(self, user_vectors: np.ndarray, item_vectors: np.ndarray) -> dict:
        """Per-user Recall@K/NDCG@K of dot-product scores (user rows as ``users``, items as the catalog)."""
        if (self.event_rows < 0).any():
            raise ValueError("a test user has no training interactions: no user vector")
        return user_catalog_metrics(user_vectors[self.event_rows], self.item_ids, item_vectors, self.event_users,
                                    self.event_items, self.history, ks=[K], chunk=CHUNK)


# --- models ---------------------------------------------------------------------------------------

def run_popularity(data: Split, seed: int, args) -> dict:
    with Timer() as t:
        counts = np.asarray(data.csr().sum(axis=0), dtype=np.float32).reshape(-1, 1)
    reset_peak()
    metrics = data.score(np.ones((len(data.users), 1), dtype=np.float32), counts)
    return {**metrics, "train_seconds": t.wall, "eval_seconds": metrics["seconds"], "eval_peak_rss_mb": peak_rss_mb()}


def fit_als(matrix, factors: int, regularization: float, alpha: float, seed: int):
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    model = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=alpha,
                                    iterations=ALS_ITERATIONS, num_threads=2, random_state=seed,
                                    calculate_training_loss=False)
    with threadpool_limits(1, "blas"), Timer() as t:  # implicit's advice: its own threads, not BLAS's
        model.fit(matrix, show_progress=False)
    return model, t


def tune_als(valid: Split, seed: int) -> dict:
    """Coordinate search (``ALS_SEARCH``) on train -> valid; returns the best params and every trial."""
    matrix, best, trials = valid.csr(), dict(ALS_START), {}

    def trial(params):
        key = json.dumps(params, sort_keys=True)
        if key not in trials:
            model, t = fit_als(matrix, seed=seed, **params)
            m = valid.score(model.user_factors, model.item_factors)
            trials[key] = {**params, f"recall@{K}": m[f"recall@{K}"], f"ndcg@{K}": m[f"ndcg@{K}"],
                           "fit_seconds": round(t.wall, 1)}
            log(f"    ALS valid {params}: Recall@{K} {m[f'recall@{K}']:.4f} NDCG@{K} {m[f'ndcg@{K}']:.4f} "
                f"(fit {t.wall:.1f}s)")
        return trials[key][f"recall@{K}"]

    for name, values in ALS_SEARCH:
        scores = {v: trial({**best, name: v}) for v in values}
        best[name] = max(scores, key=scores.get)
    chosen = trials[json.dumps(best, sort_keys=True)]
    return {"params": best, "valid": {k: chosen[k] for k in (f"recall@{K}", f"ndcg@{K}")},
            "trials": list(trials.values())}


def run_als(data: Split, seed: int, args, valid: Split) -> dict:
    tuned = tune_als(valid, seed) if args.als_params is None else {"params": args.als_params, "trials": []}
    log(f"    ALS params: {tuned['params']}")
    reset_peak()
    model, t = fit_als(data.csr(), seed=seed, **tuned["params"])
    train_peak = peak_rss_mb()
    reset_peak()
    metrics = data.score(model.user_factors, model.item_factors)
    return {**metrics, "als": tuned, "train_seconds": t.wall, "fit_cpu_seconds": t.cpu,
            "eval_seconds": metrics["seconds"], "train_peak_rss_mb": train_peak, "eval_peak_rss_mb": peak_rss_mb()}


class BasicModel(tfrs.Model):
    """The TFRS basic-retrieval structure: user-ID and item-ID embeddings, in-batch softmax."""

    def __init__(self, users, items, dim):
        super().__init__()
        self.user_model = keras.Sequential([keras.layers.StringLookup(vocabulary=users, mask_token=None),
                                            keras.layers.Embedding(len(users) + 1, dim)])
        self.item_model = keras.Sequential([keras.layers.StringLookup(vocabulary=items, mask_token=None),
                                            keras.layers.Embedding(len(items) + 1, dim)])
        self.task = tfrs.tasks.Retrieval()

    def compute_loss(self, features, training=False):
        return self.task(self.user_model(features["user_id"]), self.item_model(features["item_id"]),
                         compute_metrics=False)


def run_tfrs_basic(data: Split, seed: int, args) -> dict:
    config = package_config("default", seed, args.set)
    dim = config.features.by_name[config.features.item_id].embedding_dim
    batch, epochs = config.train.batch_size, BASIC_EPOCHS
    user_ids = np.array([str(u) for u in data.users.tolist()])
    users = np.array([str(u) for u, items in data.train.items() for _ in items])
    items = np.array([str(i) for its in data.train.values() for i in its])
    reset_peak()
    model = BasicModel(user_ids, data.item_ids, dim)
    model.compile(optimizer=keras.optimizers.Adagrad(learning_rate=TFRS_LR))
    ds = tf.data.Dataset.from_tensor_slices({"user_id": users, "item_id": items})
    ds = ds.shuffle(len(users), seed=seed).batch(batch).cache()
    with Timer() as t:
        model.fit(ds, epochs=epochs, verbose=2)
    train_peak = peak_rss_mb()
    examples = len(users) * epochs
    reset_peak()
    metrics = data.score(model.user_model(tf.constant(user_ids)).numpy(), model.item_model(tf.constant(data.item_ids)).numpy())
    return {**metrics, "dim": dim, "batch_size": batch, "epochs": epochs, "train_seconds": t.wall,
            "fit_cpu_seconds": t.cpu, "examples": examples, "examples_per_s": examples / t.wall,
            "examples_per_cpu_s": examples / t.cpu, "eval_seconds": metrics["seconds"],
            "train_peak_rss_mb": train_peak, "eval_peak_rss_mb": peak_rss_mb()}


#: ``package_basic``: cf.yaml made the TFRS basic-retrieval model (see the module docstring).
PACKAGE_BASIC = [f"train.epochs={BASIC_EPOCHS}", "model.hidden=[]", "model.output_dim=0", "model.normalize=false",
                 "task.temperature=null", "task.loss=softmax", "task.logq=false", "task.remove_accidental_hits=false",
                 "task.batch_recall_k=[]", "negatives.in_batch=true", "negatives.uniform=0", "train.optimizer=adagrad",
                 f"train.learning_rate={TFRS_LR}", "train.lr_schedule=constant", "train.validation=null",
                 "data.in_memory=true"]


def package_config(model: str, seed: int, overrides, embedding_dim: int = None) -> Config:
    """cf.yaml (``default``), the best configuration (``BEST_DROP_QUERY``, ``BEST``) + ``overrides``,
    or ``package_basic`` (cf.yaml's user and item IDs only, ``PACKAGE_BASIC``; no overrides).
    ``embedding_dim`` replaces ``BEST_EMBEDDING_DIM`` (every embedding and the output) in ``best``."""
    d = Config.load(packaged("cf")).to_dict()
    if model == "package_basic":
        d["features"]["query"] = [f for f in d["features"]["query"] if f["name"] == "user_id"]
        config = Config.from_dict(d).with_overrides(PACKAGE_BASIC)
        config.train.seed = seed
        return config
    dim = embedding_dim or BEST_EMBEDDING_DIM
    if model == "best":
        d["features"]["query"] = [f for f in d["features"]["query"] if f["name"] not in BEST_DROP_QUERY]
        for f in d["features"]["query"] + d["features"]["candidate"]:
            if dim and "embedding_dim" in f:
                f["embedding_dim"] = dim
    best = BEST + ([f"model.output_dim={embedding_dim}"] if embedding_dim else [])
    config = Config.from_dict(d).with_overrides((best if model == "best" else []) + list(overrides or []))
    config.train.seed = seed
    return config


def run_package(model: str, data: Split, seed: int, args, config: Config = None, run_name: str = None) -> dict:
    """Train ``model`` (or ``config``, e.g. an ablation variant) through ``train`` and score it."""
    config = config or package_config(model, seed, args.set, getattr(args, "best_dim", None))
    run_dir = os.path.join(args.workdir, "runs", data.name, f"{run_name or model}-seed{seed}")
    if os.path.exists(run_dir):  # never resume a run from an earlier invocation, nor delete a live one:
        with RunDir(run_dir).lock():  # RunInUseError naming the process training there (same --workdir)
            shutil.rmtree(run_dir)
    # On the valid split the run validates itself (the curve of valid Recall@20 by epoch and by minute of
    # training; the validation's own time is left out of the training time). The packaged config's
    # train.validation applies where it has one, else every epoch with neither decay nor stopping.
    curve_pattern = data.files["test"] if data.name == "valid" and args.curve else None
    if curve_pattern and config.train.validation is None:
        config = config.with_overrides(["train.validation={patience: 0, decay: 1.0}"])
    reset_peak()
    with Timer() as total:
        train(config, data.files["train"], run_dir, None, data.files["items"], verbose=2,
              progress=lambda m: log("      " + m.replace("\n", "\n      ")), valid_pattern=curve_pattern)
    train_peak = peak_rss_mb()
    curve = valid_curve(run_dir) if curve_pattern else None
    timing = RunDir(run_dir).fit_timing()
    examples, seconds, cpu = timing["examples"], timing["seconds"], timing["cpu_seconds"]
    keras.backend.clear_session()
    gc.collect()
    reset_peak()
    with Timer() as ev:
        metrics = evaluate_users(load_model(run_dir), config, data.files["test"], data.files["items"], data.history,
                                 ks=[K], chunk=CHUNK, progress=lambda m: None)
    overrides = PACKAGE_BASIC if model == "package_basic" else (BEST if model == "best" else []) + list(args.set)
    return {**metrics, "config": config.to_dict(), "overrides": overrides,
            "dropped_query_features": BEST_DROP_QUERY if model == "best" else [],
            "embedding_dim": config.features.by_name[config.features.item_id].embedding_dim,
            "train_seconds": seconds, "train_wall_seconds_with_stats_pass": total.wall, "fit_cpu_seconds": cpu,
            "examples": int(examples), "examples_per_s": examples / seconds, "examples_per_cpu_s": examples / cpu,
            "eval_seconds": ev.wall, "topk_seconds": metrics["seconds"], "train_peak_rss_mb": train_peak,
            "eval_peak_rss_mb": peak_rss_mb(), **({"valid_curve": curve} if curve else {})}


def valid_curve(run_dir: str) -> list:
    """[{epoch, minutes of training, valid Recall@K}] of a run that validated itself (``train --valid``)."""
    with open(os.path.join(run_dir, "epochs.jsonl"), encoding="utf-8") as f:
        epochs = [json.loads(line) for line in f if line.strip()]
    return [{"epoch": e["epoch"] + 1, "train_minutes": round(e["seconds"] / 60, 2), f"recall@{K}": e[f"valid_recall@{K}"]}
            for e in epochs if f"valid_recall@{K}" in e]


# --- summaries ------------------------------------------------------------------------------------

SUMMARY_KEYS = (f"recall@{K}", f"ndcg@{K}", "train_seconds", "examples_per_s", "speed_vs_tfrs_basic",
                "cpu_speed_vs_tfrs_basic", "eval_seconds", "train_peak_rss_mb", "eval_peak_rss_mb")


def summarize(per_seed: list) -> dict:
    mean, std = mean_std_by_key(per_seed, SUMMARY_KEYS)
    return {"seeds": per_seed, "mean": mean, "std": std}


def pooled(models: dict) -> dict:
    """``models`` with ``best`` pooled with ``default``'s seeds when both ran the same configuration
    (``BEST`` empty, same ``--set``): then the best configuration found is the packaged default."""
    d, b = models.get("default"), models.get("best")
    same = lambda key: d["seeds"][0].get(key) == b["seeds"][0].get(key)  # noqa: E731
    if not (d and b) or not (same("overrides") and same("dropped_query_features") and same("embedding_dim")):
        return models
    seeds = {s["seed"]: s for s in d["seeds"] + b["seeds"]}
    out = dict(models)
    out["best"] = {**summarize([seeds[k] for k in sorted(seeds)]), "pooled_with_default": True}
    return out


def markdown(results: dict, split: str, anchors: bool = True) -> str:
    models = pooled(results.get(split, {}))
    lines = [f"| model | Recall@{K} | NDCG@{K} | seeds | train s | examples/s | speed vs tfrs_basic (CPU) | "
             "eval s | peak RSS train / eval (MiB) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in models.items():
        m, s = r["mean"], r["std"]
        speed = "–" if m["speed_vs_tfrs_basic"] is None else (
            fmt(m["speed_vs_tfrs_basic"], s["speed_vs_tfrs_basic"], 2, "x")
            + f" ({fmt(m['cpu_speed_vs_tfrs_basic'], s['cpu_speed_vs_tfrs_basic'], 2, 'x')})")
        rss = f"{fmt(m['train_peak_rss_mb'], None, 0)} / {fmt(m['eval_peak_rss_mb'], None, 0)}"
        label = name + (" (= default: its seeds pooled)" if r.get("pooled_with_default") else "")
        if name == "als":
            label += " (tuned: " + ", ".join(f"{k} {v}" for k, v in r["seeds"][0]["als"]["params"].items()) + ")"
        lines.append(f"| {label} | {fmt(m[f'recall@{K}'], s[f'recall@{K}'], 4)} | "
                     f"{fmt(m[f'ndcg@{K}'], s[f'ndcg@{K}'], 4)} | "
                     f"{[x['seed'] for x in r['seeds']]} | {fmt(m['train_seconds'], s['train_seconds'], 0)} | "
                     f"{fmt(m['examples_per_s'], s['examples_per_s'], 0)} | {speed} | "
                     f"{fmt(m['eval_seconds'], s['eval_seconds'], 1)} | {rss} |")
    for name, recall, ndcg in ANCHORS if split == "test" and anchors else []:  # the anchors are test figures
        lines.append(f"| *{name}* | *{recall:.4f}* | *{ndcg:.4f}* | | | | | | |")
    return "\n".join(lines) + "\n"


def checks(results: dict, split: str) -> list:
    out = []
    models = pooled(results.get(split, {}))
    als = models.get("als", {}).get("mean", {}).get(f"recall@{K}")
    basic = models.get("package_basic", {}).get("mean", {}).get("speed_vs_tfrs_basic")
    if basic is not None:
        out.append(("PASS" if basic >= 1.0 else "FAIL",
                    f"{split}: package_basic trains at {basic:.2f}x tfrs_basic's examples/s (want >= 1.0x)"))
    for name in TUNED_MODELS:
        value = models.get(name, {}).get("mean", {}).get(f"recall@{K}")
        if value is None:
            out.append(("SKIP", f"{name}: not run"))
            continue
        out.append(("PASS" if value >= TARGET_RECALL else "FAIL",
                    f"{split}: {name} Recall@{K} {value:.4f} (want >= {TARGET_RECALL}, LightGCN's)"))
        if als is not None:
            out.append(("PASS" if value > als else "FAIL", f"{split}: {name} Recall@{K} {value:.4f} vs tuned ALS {als:.4f}"))
        minutes = models[name]["mean"]["train_seconds"] / 60
        out.append(("PASS" if minutes <= 20 else "FAIL", f"{split}: {name} trains in {minutes:.1f} min (want <= 20)"))
    return out


# --- main -----------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argument_parser(__doc__)
    add_common_flags(p, "gowalla", seeds="0", dataset="gowalla")
    p.add_argument("--split", choices=["valid", "test"], default="test",
                   help="valid: train.txt -> valid.txt (tuning); test: train+valid -> test (the published protocol)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from: {', '.join(MODELS)}")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override for the package models (default and best), e.g. task.samtone=query (repeatable)")
    p.add_argument("--als-params", type=json.loads, default=None,
                   help='skip the ALS search: JSON like {"factors": 128, "regularization": 0.01, "alpha": 5.0}')
    p.add_argument("--dataset-name", default="Gowalla (LightGCN split)",
                   help="the results' title; another name also leaves out Gowalla's published anchors")
    p.add_argument("--workdir", help="converted data and runs (default: a temporary directory, removed)")
    p.add_argument("--fresh", action="store_true", help="do not merge into an existing --output-json")
    p.add_argument("--no-curve", dest="curve", action="store_false",
                   help="--split valid: do not validate the package models during training (no valid_curve)")
    p.add_argument("--best-dim", type=int, default=None,
                   help=f"best: every embedding and the output at this size instead of {BEST_EMBEDDING_DIM}")
    args = p.parse_args(argv)
    args.models = comma_list(args.models)
    args.anchors, args.catalog_size = args.dataset_name == "Gowalla (LightGCN split)", None
    bad = [m for m in args.models if m not in MODELS]
    if bad:
        p.error(f"unknown model(s) {bad}; known: {MODELS}")
    for model in TUNED_MODELS:  # fail now, not after an hour of training
        try:
            package_config(model, 0, args.set, args.best_dim)
        except (ValueError, TypeError) as e:
            p.error(f"--set: {e}")
    return args


def header(doc: dict) -> str:
    """The results file's provenance line (``runs_provenance``: several invocations merge into one file)
    and what the figures are."""
    return (f"{doc.get('dataset', 'Gowalla (LightGCN split)')}, {runs_provenance(doc)}, "
            f"implicit {doc['machine'].get('implicit')}; per-user Recall@20 / NDCG@20 over all "
            f"{doc.get('catalog_size', 40981):,} items, training items removed"
            + (" (italics: anchors, not run here)" if doc.get("anchors", True) else ""))


def config_key(seed_result: dict) -> tuple:
    """What makes two seeds' results the same configuration (``ResultsFile.merge`` pools only those): the
    package model's whole config but its seed (a change to the packaged cf.yaml is another configuration),
    or ALS's parameters."""
    s = seed_result
    config = {**s.get("config", {}), "train": {k: v for k, v in s.get("config", {}).get("train", {}).items()
                                              if k != "seed"}}
    return (json.dumps(config, sort_keys=True), s.get("overrides"), s.get("dropped_query_features"),
            s.get("embedding_dim"), json.dumps(s.get("als", {}).get("params"), sort_keys=True))


def write_outputs(args, results: ResultsFile, mine: dict, run: dict) -> str:
    """Merge this invocation's models (``mine``) into ``--output-json`` as it is now, then write it and the table."""
    doc = results.merge(args.split, mine, run, summarize, config_key)
    doc.update(dataset=args.dataset_name, catalog_size=args.catalog_size, anchors=args.anchors)
    doc.setdefault("pooled_best", {})[args.split] = pooled(doc["results"][args.split]).get("best")
    text = [header(doc), ""]
    for split in ("test", "valid"):
        if doc["results"].get(split):
            text += [f"### split `{split}`" + (" (train+valid -> test: the published protocol)" if split == "test"
                                                else " (train -> valid: tuning)"), "", markdown(doc["results"], split, doc["anchors"])]
    return results.write(doc, "\n".join(text))


def main(argv=None):
    args = parse_args(argv)
    started = datetime.datetime.now().astimezone()
    t0 = time.perf_counter()
    temp = args.workdir is None
    args.workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="tfrec-gowalla-"))
    folder = os.path.abspath(data_dir("gowalla", args.data_dir))
    try:
        import implicit  # noqa: F401  (its version goes into the results: harness.machine)
    except ImportError:
        pass
    results = ResultsFile(args.output_json, args.output_md, args.fresh)
    run = run_info(started, split=args.split, models=args.models, seeds=args.seeds, set=args.set, best=BEST)
    log(f"Gowalla benchmark: split {args.split}, models {args.models}, seeds {args.seeds}; data {folder}; "
        f"workdir {args.workdir}")
    mine = {}
    try:
        data = Split(args.split, folder, args.workdir)
        args.catalog_size = len(data.catalog)
        valid = data if args.split == "valid" else None
        if "als" in args.models and args.als_params is None and valid is None:
            log("=== converting train -> valid for the ALS search ===")
            valid = Split("valid", folder, args.workdir)
        log(f"{len(data.users)} training users, {data.num_train} training interactions, {len(data.test)} eval users, "
            f"{len(data.event_items)} eval interactions, catalog of {len(data.catalog)} items")
        per_model = {m: [] for m in args.models}
        for n, seed in enumerate(args.seeds):
            for model in args.models:
                if model == "popularity" and n:
                    continue
                log(f"--- split {args.split} / seed {seed} / model {model} ---")
                fresh_start(seed)
                wall, load = time.perf_counter(), os.getloadavg()[0]
                if model == "popularity":
                    r = run_popularity(data, seed, args)
                elif model == "als":
                    r = run_als(data, seed, args, valid)
                elif model == BASELINE:
                    r = run_tfrs_basic(data, seed, args)
                else:
                    r = run_package(model, data, seed, args)
                r = {"seed": seed, **r, "wall_seconds": time.perf_counter() - wall,
                     "load_average": [round(load, 2), round(os.getloadavg()[0], 2)]}
                base = [b for b in per_model.get(BASELINE, []) if b["seed"] == seed]
                for key, per_s in (("speed_vs_tfrs_basic", "examples_per_s"), ("cpu_speed_vs_tfrs_basic", "examples_per_cpu_s")):
                    r[key] = r[per_s] / base[0][per_s] if base and r.get(per_s) and model != BASELINE else None
                per_model[model].append(r)
                eps = r.get("examples_per_s")
                log(f"    {args.split}/{model}/seed {seed}: Recall@{K} {r[f'recall@{K}']:.4f}  NDCG@{K} "
                    f"{r[f'ndcg@{K}']:.4f}; train {r['train_seconds']:.1f}s" + (f", {eps:.0f} examples/s" if eps else "")
                    + (f" ({r['speed_vs_tfrs_basic']:.2f}x tfrs_basic)" if r.get("speed_vs_tfrs_basic") else "")
                    + f"; eval {r['eval_seconds']:.1f}s; {r['wall_seconds']:.1f}s in all")
                mine.update({m: summarize(v) for m, v in per_model.items() if v})
                write_outputs(args, results, mine, run)
    finally:
        if temp:
            shutil.rmtree(args.workdir, ignore_errors=True)
    log("\n" + write_outputs(args, results, mine, run))
    log("Checks:")
    for status, text in checks(read_json(args.output_json)["results"], args.split):
        log(f"  [{status}] {text}")
    log(f"peak RSS of the process (getrusage): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
        f"wrote {args.output_json} and {args.output_md}; {time.perf_counter() - t0:.0f}s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
