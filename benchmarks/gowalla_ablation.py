"""The seed methods on Gowalla, each alone against a reference configuration (issue 16).

The reference is ``benchmarks/gowalla.py``'s ``best`` configuration (the user's training items as a
mean-pooled history, no user ID, cosine / temperature 0.1, 1024 uniform negatives mixed with in-batch
ones, logQ, accidental hits, Adam, 2 epochs) at ``--dim`` (64 by default: the 256-d ``best`` trains
about 3x longer, and every variant must finish within 20 minutes on 2 cores). Each variant is the
reference plus the ``--set``-style overrides of ``VARIANTS``, trained on train.txt and scored on
valid.txt with the published protocol (Recall@20 / NDCG@20 over all items, training items removed):
tuning data only, the test split is never read. Relative change = variant / reference - 1.

    python benchmarks/gowalla_ablation.py --workdir /tmp/gw/bench --variants reference,samtone_query
    python benchmarks/gowalla_ablation.py --workdir /tmp/gw/bench --variants adaptive   # merged into the JSON

Results are merged into ``benchmarks/results/gowalla_ablation.{json,md}`` after every variant, so that
each variant can run in its own process; the table lists the variants not run yet.
"""
import argparse
import datetime
import gc
import json
import os
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)

import gowalla as gw  # noqa: E402  (sets up the repository path and Keras 2)

from readme_tables import commit, runs_provenance  # noqa: E402

import tf_keras as keras  # noqa: E402

#: variant -> (what it tests, overrides of the reference). Mixed negatives are in the reference (1024
#: uniform draws + in-batch): their row takes them out. Dual augmented towers key the user's augmented
#: vector by the user ID, which the reference does not use: that row adds the user ID as well, and
#: ``user_id`` is its control.
VARIANTS = {
    "reference": ("the reference configuration", []),
    "samtone_query": ("SamToNe: query-query same-tower negatives", ["task.samtone=query"]),
    "adaptive": ("adaptive temperature and margin (tau0 = the reference's 0.1)", ["task.adaptive={tau0: 0.1}"]),
    "no_mixed": ("mixed negatives off: in-batch negatives only", ["negatives.uniform=0"]),
    "popularity": ("popularity negatives (count^0.75) instead of uniform ones", ["negatives.uniform=0",
                                                                                 "negatives.popularity=1024"]),
    "hard_negatives": ("hard-negative mining: each row's 100 hardest negatives", ["task.hard_negatives=100"]),
    "streaming_logq": ("streaming logQ frequency estimation instead of log counts", ["task.logq_estimator=streaming"]),
    "generative": ("generative interaction: the item tower rebuilds the pooled history",
                   ["model.generative={targets: [item_history]}"]),
    "dual_augmented": ("dual augmented towers (adds the user ID: compare with user_id)",
                       ["model.dual_augmented={query_id: user_id}"]),
    "user_id": ("the user ID added to the query (dual_augmented's control)", []),
}
REFERENCE = "reference"
WITH_USER_ID = ("dual_augmented", "user_id")
METRICS = [(f"recall@{gw.K}", f"Recall@{gw.K}"), (f"ndcg@{gw.K}", f"NDCG@{gw.K}")]


def variant_config(name: str, dim: int, seed: int):
    config = gw.package_config("best", seed, VARIANTS[name][1], embedding_dim=dim)
    if name in WITH_USER_ID:
        d = config.to_dict()
        d["features"]["query"].insert(0, {"name": "user_id", "type": "id", "embedding_dim": dim})
        config = type(config).from_dict(d)
    return config


def reference_overrides(dim: int) -> list:
    """``BEST`` with the output at ``dim`` (every embedding is ``dim`` too)."""
    return [o for o in gw.BEST if not o.startswith("model.output_dim=")] + [f"model.output_dim={dim}"]


def markdown(doc: dict) -> str:
    runs, ref = doc["variants"], doc["variants"].get(REFERENCE)
    lines = [doc["header"], "",
             f"Reference: `best` at {doc['dim']}-d ({' '.join(reference_overrides(doc['dim']))}; without "
             f"{', '.join(gw.BEST_DROP_QUERY)}), split `valid` (train.txt -> valid.txt), seed {doc['seed']}. "
             "Change: relative to the reference.", "",
             "| method | overrides | " + " | ".join(f"{label} | change" for _, label in METRICS)
             + " | train s | examples/s | speed vs reference |", "|---|---|" + "---|---|" * len(METRICS) + "---|---|---|"]
    for name, (what, overrides) in VARIANTS.items():
        r = runs.get(name)
        if r is None:
            continue
        cells = []
        for key, _ in METRICS:
            change = "" if not ref or name == REFERENCE else f"{100 * (r[key] / ref[key] - 1):+.1f}%"
            cells.append(f"{r[key]:.4f} | {change}")
        speed = "" if not ref or name == REFERENCE else f"{r['examples_per_s'] / ref['examples_per_s']:.2f}x"
        label = f"{name}: {what}"
        shown = overrides + (["+ user_id in the query"] if name in WITH_USER_ID else [])
        lines.append(f"| {label} | {', '.join(f'`{o}`' for o in shown) or '–'} | {' | '.join(cells)} | "
                     f"{r['train_seconds']:.0f} | {r['examples_per_s']:,.0f} | {speed} |")
    missing = [n for n in VARIANTS if n not in runs]
    if missing:
        lines += ["", f"Not run yet: {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def header(doc: dict) -> str:
    return (f"Gowalla seed-method ablation, {runs_provenance(doc)}; per-user Recall@{gw.K} / NDCG@{gw.K} over all "
            "40,981 items, training items removed")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from: {', '.join(VARIANTS)}")
    p.add_argument("--dim", type=int, default=64, help="every embedding and the output (the reference's size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--workdir", help="gowalla.py's workdir (converted data reused from data/valid)")
    p.add_argument("--output", default=os.path.join(BENCH, "results", "gowalla_ablation"), help="path without .json/.md")
    p.add_argument("--render", action="store_true", help="only rewrite the .md table from the .json")
    args = p.parse_args(argv)
    if args.render:
        with open(args.output + ".json", encoding="utf-8") as f:
            doc = json.load(f)
        with open(args.output + ".md", "w", encoding="utf-8") as f:
            f.write(markdown(doc))
        return 0
    names = gw._list(args.variants)
    bad = [n for n in names if n not in VARIANTS]
    if bad:
        p.error(f"unknown variant(s) {bad}; known: {list(VARIANTS)}")
    if not args.workdir:
        p.error("--workdir is required to run variants")
    for name in names:  # fail now, not after an hour of training
        variant_config(name, args.dim, args.seed)
    args.set = []
    started = datetime.datetime.now().astimezone()
    data = gw.Split("valid", os.path.abspath(args.data_dir or gw.default_data_dir()), os.path.abspath(args.workdir))
    path = args.output + ".json"
    for name in names:
        gw.log(f"--- variant {name} ---")
        keras.backend.clear_session()
        gc.collect()
        keras.utils.set_random_seed(args.seed)
        wall = time.perf_counter()
        config = variant_config(name, args.dim, args.seed)
        r = gw.run_package("best", data, args.seed, args, config=config, run_name=f"ablation-{name}")
        r.update({"variant": name, "overrides": VARIANTS[name][1], "with_user_id": name in WITH_USER_ID,
                  "wall_seconds": time.perf_counter() - wall, "load_average": os.getloadavg()[0]})
        gw.log(f"    {name}: Recall@{gw.K} {r[f'recall@{gw.K}']:.4f} NDCG@{gw.K} {r[f'ndcg@{gw.K}']:.4f}; "
               f"train {r['train_seconds']:.0f}s, {r['examples_per_s']:.0f} examples/s")
        doc = {"variants": {}, "runs": []}
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        if doc.get("dim", args.dim) != args.dim or doc.get("seed", args.seed) != args.seed:
            raise SystemExit(f"{path} holds an ablation at another --dim/--seed; use another --output")
        doc.update(dim=args.dim, seed=args.seed, reference_overrides=reference_overrides(args.dim),
                   machine={"platform": gw.platform.platform(), "cpu_count": os.cpu_count(),
                            "tensorflow": gw.tf.__version__})
        doc["variants"][name] = r
        run = {"date": started.isoformat(timespec="seconds"), "commit": commit()}
        if run not in doc["runs"]:
            doc["runs"].append(run)
        doc["header"] = header(doc)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
        with open(args.output + ".md", "w", encoding="utf-8") as f:
            f.write(markdown(doc))
    gw.log(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
