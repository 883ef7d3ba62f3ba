"""MovieLens-100K retrieval benchmark: popularity, the TFRS tutorial model, and this package.

For each protocol (``tfrs``: the TFRS tutorial's random 80/20 split; ``last``: each user's latest
rating is the test event) ML-100K is converted once into TFRecord logs, then for each seed:

* ``popularity``: score = how often the item is a training positive;
* ``tfrs_tutorial``: the TFRS basic-retrieval tutorial's model as written there (user-ID and
  movie-title embeddings of dimension 32, ``tfrs.tasks.Retrieval()``, Adagrad 0.1, batch 8192,
  ``shuffle(100_000).batch(8192).cache()``, 3 epochs), trained on the same training events read into
  memory; the tutorial's FactorizedTopK metric is left out of training (it is the evaluation, done
  below for every model alike);
* ``tutorial_like``: this package with the packaged ``tutorial`` config
  (``tfrec_towers/configs/tutorial.yaml``), trained from the TFRecord files;
* ``default``: this package with the packaged ``default`` config (plus ``--set`` overrides).

Every model is evaluated by ``tfrec_towers.evaluation.metrics.catalog_metrics`` over the whole item catalog
(``all_items``, and ``exclude_history`` without the user's training items). Speed is training
examples per second of ``fit`` wall time, and is compared as a ratio to ``tfrs_tutorial``'s measured
in the same seed loop (the machines are shared and noisy).

    python -m benchmarks.movielens                      # the full benchmark (3 seeds, 2 protocols)
    python -m benchmarks.movielens --seeds 0 --models popularity,tfrs_tutorial,tutorial_like --protocols tfrs
    python -m benchmarks.movielens --models default --set train.epochs=2

ML-100K is read by path from ``$TFREC_TOWERS_ML100K`` (default ``<repo>/../shared/datasets/ml-100k``)
and never copied into the repository.
"""
import datetime
import os
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
from tfrec_towers.data import reader
from tfrec_towers.data.movielens import convert_movielens
from tfrec_towers.data.inputs import user_histories
from tfrec_towers.evaluation.metrics import catalog_metrics
from tfrec_towers.run import RunDir
from tfrec_towers.train import train

from benchmarks.harness import (Timer, add_common_flags, argument_parser, comma_list, data_dir, fmt, fresh_start, log,
                                machine, mean_std_by_key, provenance, write_results)

__all__ = ["PROTOCOLS", "MODELS", "HISTORY_LEN", "Dataset", "run_popularity", "run_tfrs_tutorial", "run_package",
           "package_config", "summarize", "markdown", "checks", "main"]

PROTOCOLS = ("tfrs", "last")
MODELS = ("popularity", "tfrs_tutorial", "tutorial_like", "default")
HISTORY_LEN = 50
BASELINE = "tfrs_tutorial"

# The tutorial's settings (https://www.tensorflow.org/recommenders/examples/basic_retrieval).
TUTORIAL_DIM = 32
TUTORIAL_LR = 0.1
TUTORIAL_BATCH = 8192
TUTORIAL_SHUFFLE = 100_000
TUTORIAL_EPOCHS = 3

#: Columns of the markdown table: (variant, metric key, header).
TABLE_METRICS = [("all_items", "hr@10", "HR@10"), ("all_items", "hr@50", "HR@50"), ("all_items", "hr@100", "HR@100"),
                 ("all_items", "ndcg@10", "NDCG@10"), ("all_items", "mrr", "MRR"),
                 ("exclude_history", "hr@50", "HR@50 excl."), ("exclude_history", "hr@100", "HR@100 excl.")]

#: Figures seen earlier on this machine kind (all_items), printed next to ours for orientation.
REFERENCE = {("tfrs", "tfrs_tutorial", "hr@100"): 0.242, ("tfrs", "popularity", "hr@100"): 0.297,
             ("last", "popularity", "hr@50"): 0.153, ("last", "popularity", "hr@10"): 0.050}


# --- data -----------------------------------------------------------------------------------------

def read_columns(pattern: str, spec: dict, positives_only: bool = True) -> dict:
    """Every record of ``pattern`` parsed with ``spec`` -> {name: numpy array} (strings decoded)."""
    files = reader.list_files(pattern)
    compression = reader.compression_of(files[0])
    ds = tf.data.TFRecordDataset(files, compression_type=compression).batch(8192)
    ds = ds.map(lambda raw: tf.io.parse_example(raw, spec))
    columns = {name: [] for name in spec}
    for batch in ds:
        for name in spec:
            columns[name].append(batch[name].numpy())
    out = {}
    for name, parts in columns.items():
        values = np.concatenate(parts) if parts else np.zeros(0)
        if values.dtype == object:
            values = np.array([v.decode("utf-8") for v in values.tolist()], dtype=object)
        out[name] = values
    if positives_only and "label" in out:
        keep = out["label"] >= 1
        out = {k: v[keep] for k, v in out.items()}
    return out


EVENT_SPEC = {"user_id": tf.io.FixedLenFeature([], tf.string), "item_id": tf.io.FixedLenFeature([], tf.string),
              "item_title": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
ITEM_SPEC = {"item_id": tf.io.FixedLenFeature([], tf.string), "item_title": tf.io.FixedLenFeature([], tf.string)}


class Dataset:
    """One converted protocol: file globs plus what the non-package models read into memory."""

    def __init__(self, meta: dict, history_config: Config):
        self.meta = meta
        self.files = meta["files"]
        self.train = read_columns(self.files["train"], EVENT_SPEC)
        self.test = read_columns(self.files["test"], EVENT_SPEC)
        items = read_columns(self.files["items"], ITEM_SPEC, positives_only=False)
        _, first = np.unique(items["item_id"].astype(str), return_index=True)
        first.sort()  # unique item IDs, first occurrence kept (as evaluation.embeddings.embed_catalog does)
        self.item_ids = items["item_id"][first]
        self.item_titles = items["item_title"][first]
        self.history = user_histories(history_config, self.files["train"], progress=lambda m: None)
        self.ks = history_config.eval.ks


# --- models ---------------------------------------------------------------------------------------

def run_popularity(data: Dataset, seed: int) -> dict:
    start = time.perf_counter()
    ids, counts = np.unique(data.train["item_id"].astype(str), return_counts=True)
    by_id = dict(zip(ids.tolist(), counts.tolist()))
    scores = np.array([by_id.get(i, 0) for i in data.item_ids.tolist()], dtype=np.float32)[:, None]
    seconds = time.perf_counter() - start
    query = np.ones((len(data.test["user_id"]), 1), dtype=np.float32)
    metrics = catalog_metrics(query, data.item_ids, scores, data.test["user_id"], data.test["item_id"],
                              data.history, data.ks)
    # Counting is not training: no examples/s for this one.
    return {**metrics, "train_seconds": seconds, "examples": int(len(data.train["item_id"])), "examples_per_s": None,
            "examples_per_cpu_s": None}


class TutorialModel(tfrs.Model):
    """The tutorial's ``MovielensModel``, with its FactorizedTopK metric left out of training."""

    def __init__(self, user_model, movie_model):
        super().__init__()
        self.movie_model = movie_model
        self.user_model = user_model
        self.task = tfrs.tasks.Retrieval()

    def compute_loss(self, features, training=False):
        user_embeddings = self.user_model(features["user_id"])
        positive_movie_embeddings = self.movie_model(features["movie_title"])
        return self.task(user_embeddings, positive_movie_embeddings, compute_metrics=False)


def run_tfrs_tutorial(data: Dataset, seed: int) -> dict:
    # As in the tutorial: the user vocabulary is every user ID of the ratings (train and test), the
    # movie vocabulary every title of the movies dataset (duplicate titles are one token).
    unique_user_ids = np.unique(np.concatenate([data.train["user_id"], data.test["user_id"]]).astype(str))
    unique_movie_titles = np.unique(data.item_titles.astype(str))
    user_model = keras.Sequential([
        keras.layers.StringLookup(vocabulary=unique_user_ids, mask_token=None),
        keras.layers.Embedding(len(unique_user_ids) + 1, TUTORIAL_DIM)])
    movie_model = keras.Sequential([
        keras.layers.StringLookup(vocabulary=unique_movie_titles, mask_token=None),
        keras.layers.Embedding(len(unique_movie_titles) + 1, TUTORIAL_DIM)])
    model = TutorialModel(user_model, movie_model)
    model.compile(optimizer=keras.optimizers.Adagrad(learning_rate=TUTORIAL_LR))

    train_ds = tf.data.Dataset.from_tensor_slices({"user_id": data.train["user_id"].astype(str),
                                                   "movie_title": data.train["item_title"].astype(str)})
    cached_train = train_ds.shuffle(TUTORIAL_SHUFFLE, seed=seed).batch(TUTORIAL_BATCH).cache()
    with Timer() as timer:
        model.fit(cached_train, epochs=TUTORIAL_EPOCHS, verbose=0)
    seconds = timer.wall
    examples = len(data.train["user_id"]) * TUTORIAL_EPOCHS

    item_emb = movie_model(tf.constant(data.item_titles.astype(str))).numpy()
    query = user_model(tf.constant(data.test["user_id"].astype(str))).numpy()
    metrics = catalog_metrics(query, data.item_ids, item_emb, data.test["user_id"], data.test["item_id"],
                              data.history, data.ks)
    return {**metrics, "train_seconds": seconds, "examples": int(examples), "examples_per_s": examples / seconds,
            "fit_cpu_seconds": timer.cpu, "examples_per_cpu_s": examples / timer.cpu}


def run_package(config: Config, data: Dataset, run_dir: str) -> dict:
    if os.path.exists(run_dir):  # never resume a run from an earlier invocation
        shutil.rmtree(run_dir)
    files = data.files
    metrics = train(config, files["train"], run_dir, files["test"], files["items"], verbose=2,
                    progress=lambda m: log("      " + m.replace("\n", "\n      ")))
    timing = RunDir(run_dir).fit_timing()
    examples, seconds, cpu = timing["examples"], timing["seconds"], timing["cpu_seconds"]
    keep = ("events", "users", "catalog_size", "targets_not_in_catalog", "all_items", "exclude_history")
    return {**{k: metrics[k] for k in keep if k in metrics}, "train_seconds": seconds, "examples": int(examples),
            "examples_per_s": examples / seconds if seconds > 0 else None, "fit_cpu_seconds": cpu,
            "examples_per_cpu_s": examples / cpu if cpu else None}


def package_config(name: str, seed: int, overrides) -> Config:
    config = Config.load(packaged(name)).with_overrides(overrides or [])
    config.train.seed = seed
    return config


# --- summaries ------------------------------------------------------------------------------------

def summarize(per_seed: list) -> dict:
    mean, std = mean_std_by_key(per_seed, ("train_seconds", "examples_per_s", "speed_vs_tfrs_tutorial",
                                           "fit_cpu_seconds", "cpu_speed_vs_tfrs_tutorial"))
    for variant in ("all_items", "exclude_history"):
        if per_seed[0].get(variant):
            mean[variant], std[variant] = mean_std_by_key([s[variant] for s in per_seed], per_seed[0][variant])
    return {"seeds": per_seed, "mean": mean, "std": std, "examples_per_s": mean["examples_per_s"],
            "train_seconds": mean["train_seconds"], "speed_vs_tfrs_tutorial": mean["speed_vs_tfrs_tutorial"],
            "cpu_speed_vs_tfrs_tutorial": mean["cpu_speed_vs_tfrs_tutorial"]}


def markdown(results: dict, protocols) -> str:
    lines = []
    for protocol in protocols:
        models = results.get(protocol) or {}
        if not models:
            continue
        first = next(iter(models.values()))
        seeds = [s["seed"] for s in first["seeds"]]
        s0 = first["seeds"][0]
        lines += [f"### protocol `{protocol}`: {s0['events']} test events, {s0['users']} users, catalog of "
                  f"{s0['catalog_size']} items; seeds {seeds} (mean ± sample std)", ""]
        header = ["model"] + [h for _, _, h in TABLE_METRICS] + ["train s", "examples/s", "speed vs tfrs_tutorial",
                                                                 "CPU speed vs tfrs_tutorial"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for model, r in models.items():
            m, s = r["mean"], r["std"]
            cells = [model] + [fmt(m.get(v, {}).get(k), s.get(v, {}).get(k)) for v, k, _ in TABLE_METRICS]
            cells.append(fmt(m["train_seconds"], s["train_seconds"], 1))
            cells.append(fmt(m["examples_per_s"], s["examples_per_s"], 0))
            for key in ("speed_vs_tfrs_tutorial", "cpu_speed_vs_tfrs_tutorial"):
                cells.append(fmt(m[key], s[key], 2, "x"))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("HR/NDCG/MRR over the whole catalog (`all_items`); \"excl.\": the user's training items removed "
                 "(`exclude_history`). train s: `fit` wall time; examples/s: training examples / train s; speed: "
                 "examples/s over tfrs_tutorial's in the same seed loop; CPU speed: the same with the process's CPU seconds "
                 "in `fit` (much less disturbed by other jobs on a shared machine).")
    return "\n".join(lines) + "\n"


# --- checks ---------------------------------------------------------------------------------------

def checks(results: dict) -> list:
    """(status, text) lines: PASS, FAIL, or SKIP (what it needs was not run)."""
    out = []

    def get(protocol, model, variant, key):
        r = results.get(protocol, {}).get(model)
        if r is None:
            return None
        return r["mean"].get(variant, {}).get(key) if variant else r["mean"].get(key)

    def check(name, value, ok, expected):
        if value is None:
            out.append(("SKIP", f"{name}: not run"))
        else:
            out.append(("PASS" if ok(value) else "FAIL", f"{name} = {value:.4f} (want {expected})"))

    tut, like = get("tfrs", BASELINE, "all_items", "hr@100"), get("tfrs", "tutorial_like", "all_items", "hr@100")
    if tut is None or like is None:
        out.append(("SKIP", "tfrs: tutorial_like HR@100 vs tfrs_tutorial: not run"))
    else:
        out.append(("PASS" if abs(like - tut) <= 0.01 else "FAIL",
                    f"tfrs: tutorial_like HR@100 {like:.4f} vs tfrs_tutorial {tut:.4f}: diff {like - tut:+.4f} "
                    "(want within ±0.01)"))
    check("tfrs: tutorial_like speed vs tfrs_tutorial", get("tfrs", "tutorial_like", None, "speed_vs_tfrs_tutorial"),
          lambda v: v >= 0.95, ">= 0.95x")
    ratio = get("tfrs", "tutorial_like", None, "cpu_speed_vs_tfrs_tutorial")
    if ratio is not None:
        out.append(("INFO", f"tfrs: tutorial_like CPU-time speed vs tfrs_tutorial = {ratio:.4f}"))
    check("tfrs: default HR@100", get("tfrs", "default", "all_items", "hr@100"), lambda v: v >= 0.58, ">= 0.58")
    check("tfrs: default HR@10", get("tfrs", "default", "all_items", "hr@10"), lambda v: v >= 0.12, ">= 0.12")
    check("last: default HR@50", get("last", "default", "all_items", "hr@50"), lambda v: v >= 0.32, ">= 0.32")
    for protocol in PROTOCOLS:
        check(f"{protocol}: default training seconds", get(protocol, "default", None, "train_seconds"),
              lambda v: v <= 300, "<= 300")
    for (protocol, model, key), ref in REFERENCE.items():
        value = get(protocol, model, "all_items", key)
        if value is not None:
            out.append(("INFO", f"{protocol}: {model} {key.upper()} = {value:.4f} (seen earlier: about {ref})"))
    return out


# --- main -----------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argument_parser(__doc__)
    add_common_flags(p, "movielens", seeds="0,1,2", dataset="ml-100k")
    p.add_argument("--protocols", default=",".join(PROTOCOLS), help="comma-separated, from: tfrs, last")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from: {', '.join(MODELS)}")
    p.add_argument("--workdir", help="where converted data and runs go (default: a temporary directory, removed)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override for the 'default' model's config, e.g. train.epochs=10 (repeatable)")
    args = p.parse_args(argv)
    args.protocols, args.models = comma_list(args.protocols), comma_list(args.models)
    bad = [x for x in args.protocols if x not in PROTOCOLS] + [x for x in args.models if x not in MODELS]
    if bad:
        p.error(f"unknown protocol(s)/model(s) {bad}; protocols: {PROTOCOLS}, models: {MODELS}")
    for assignment in args.set:  # fail now, not after an hour of training
        try:
            Config.load(packaged("default")).with_overrides([assignment])
        except (ValueError, TypeError) as e:
            p.error(f"--set {assignment}: {e}")
    return args


def write_outputs(args, results, started):
    doc = {**results, "machine": machine(), "date": started.isoformat(timespec="seconds"),
           "settings": {"protocols": args.protocols, "seeds": args.seeds, "models": args.models,
                        "default_overrides": args.set, "history_len": HISTORY_LEN}}
    table = markdown(results, args.protocols)
    overrides = f"; default overrides: {' '.join(args.set)}" if args.set else ""
    write_results(doc, f"{provenance('MovieLens-100K', started)}{overrides}\n\n{table}", args.output_json,
                  args.output_md)
    return table


def main(argv=None):
    args = parse_args(argv)
    started = datetime.datetime.now().astimezone()
    t0 = time.perf_counter()
    temp = args.workdir is None
    workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="tfrec-movielens-"))
    folder = data_dir("ml-100k", args.data_dir)
    log(f"MovieLens-100K benchmark: protocols {args.protocols}, seeds {args.seeds}, models {args.models}; "
        f"data {folder}; workdir {workdir}")
    results = {}
    try:
        for protocol in args.protocols:
            log(f"\n=== protocol {protocol}: converting ML-100K ===")
            meta = convert_movielens(folder, os.path.join(workdir, "data", protocol), protocol=protocol,
                                     history_len=HISTORY_LEN, overwrite=True, progress=lambda m: log("  " + m))
            data = Dataset(meta, Config.load(packaged("default")))
            per_model = {m: [] for m in args.models}
            for seed in args.seeds:
                for model in args.models:
                    log(f"--- protocol {protocol} / seed {seed} / model {model} ---")
                    fresh_start(seed)
                    wall, load = time.perf_counter(), os.getloadavg()[0]
                    if model == "popularity":
                        r = run_popularity(data, seed)
                    elif model == "tfrs_tutorial":
                        r = run_tfrs_tutorial(data, seed)
                    else:
                        config = package_config("tutorial" if model == "tutorial_like" else "default", seed,
                                                args.set if model == "default" else [])
                        r = run_package(config, data, os.path.join(workdir, "runs", protocol, f"{model}-seed{seed}"))
                    r = {"seed": seed, **r, "wall_seconds": time.perf_counter() - wall,
                         "load_average": [round(load, 2), round(os.getloadavg()[0], 2)]}
                    per_model[model].append(r)
                    a = r["all_items"]
                    eps = r["examples_per_s"]
                    log(f"    {protocol}/{model}/seed {seed}: HR@10 {a['hr@10']:.4f}  HR@50 {a['hr@50']:.4f}  "
                        f"HR@100 {a['hr@100']:.4f}  NDCG@10 {a['ndcg@10']:.4f}  MRR {a['mrr']:.4f}; "
                        f"train {r['train_seconds']:.1f}s" + (f", {eps:.0f} examples/s" if eps else "")
                        + (f", fit CPU {r['fit_cpu_seconds']:.1f}s" if r.get("fit_cpu_seconds") else "")
                        + f"; {r['wall_seconds']:.1f}s in all")
                # Speed ratios within this seed loop.
                base = per_model.get(BASELINE, [])
                for model in args.models:
                    r = per_model[model][-1]
                    for key, per_s in (("speed_vs_tfrs_tutorial", "examples_per_s"),
                                       ("cpu_speed_vs_tfrs_tutorial", "examples_per_cpu_s")):
                        mine = r.get(per_s)
                        theirs = base[-1].get(per_s) if base and base[-1]["seed"] == seed else None
                        r[key] = mine / theirs if mine and theirs else None
                    if model != BASELINE and r["speed_vs_tfrs_tutorial"] is not None:
                        log(f"    seed {seed}: {model} speed {r['speed_vs_tfrs_tutorial']:.2f}x tfrs_tutorial "
                            f"(CPU time: {r['cpu_speed_vs_tfrs_tutorial']:.2f}x)")
                results[protocol] = {m: summarize(v) for m, v in per_model.items() if v}
                write_outputs(args, results, started)
    finally:
        if temp:
            shutil.rmtree(workdir, ignore_errors=True)

    table = write_outputs(args, results, started)
    log("\n" + table)
    log("Checks:")
    for status, text in checks(results):
        log(f"  [{status}] {text}")
    log(f"\nwrote {args.output_json} and {args.output_md}; {time.perf_counter() - t0:.0f}s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
