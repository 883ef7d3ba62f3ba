"""The seed methods on Gowalla, each alone on top of the packaged ``cf`` configuration (issues 16, 24).

The reference is ``cf.yaml`` (``benchmarks/gowalla.py``'s ``default`` and ``best``: gated user ID + mean
history, cosine, the bilateral softmax loss, LazyAdam, cosine schedule) with 800 uniform negatives only,
as it was when this ablation ran (``gated_tower`` and ``AS_MEASURED``: cf reads the user ID only since
2026-12-07; its ``mixed`` row is why cf adds in-batch negatives), at a
cheaper proxy: every embedding ``--dim`` (64 by default; cf's 256-d trains about 3x longer) and
``--epochs`` (3; cf: 5). Each variant is the reference plus the ``--set``-style overrides of
``VARIANTS``, trained on train.txt and scored on valid.txt with the published protocol (Recall@20 /
NDCG@20 over all items, training items removed): tuning data only, the test split is never read.
Relative change = variant / reference - 1. (The 2026-11-30 ablation on the earlier history-only
``best``, softmax over mixed negatives with logQ, is kept in ``results/gowalla_ablation_2026-11-30.md``.)

    python -m benchmarks.gowalla_ablation --workdir /tmp/gw/bench --variants reference,samtone_query
    python -m benchmarks.gowalla_ablation --workdir /tmp/gw/bench --variants adaptive   # merged into the JSON

Results are merged into ``--output-json`` / ``--output-md`` (default
``benchmarks/results/gowalla_ablation.{json,md}``) after every variant, so that
each variant can run in its own process; the table lists the variants not run yet.
"""
import datetime
import os
import sys
import time

from benchmarks.gowalla import K, Split, gated_tower, package_config, run_package
from benchmarks.harness import (add_common_flags, add_run, argument_parser, comma_list, data_dir, fresh_start, log,
                                machine, read_json, run_info, runs_provenance, write_results, write_text)

__all__ = ["VARIANTS", "proxy_overrides", "reference_overrides", "variant_overrides", "variant_config", "markdown", "main"]

#: variant -> (what it tests, overrides of the reference; ``$dim`` is ``--dim``). The reference samples 800
#: uniform negatives only (no logQ: every column is equally likely); mixing in in-batch negatives needs logQ, so the
#: streaming estimator is compared on that mix.
VARIANTS = {
    "reference": ("the reference configuration", []),
    "samtone_query": ("SamToNe: query-query same-tower negatives", ["task.samtone=query"]),
    "adaptive": ("adaptive temperature and margin (tau0 = the reference's 0.08)", ["task.adaptive={tau0: 0.08}"]),
    "mixed": ("mixed negatives: in-batch ones added, with logQ (counts)", ["negatives.in_batch=true", "task.logq=true"]),
    "streaming_logq": ("mixed negatives with streaming logQ frequency estimation",
                       ["negatives.in_batch=true", "task.logq=true", "task.logq_estimator=streaming"]),
    "popularity": ("popularity negatives (count^0.75) instead of uniform ones", ["negatives.uniform=0",
                                                                                "negatives.popularity=800"]),
    "hard_negatives": ("hard-negative mining: each row's 100 hardest negatives", ["task.hard_negatives=100"]),
    "generative": ("generative interaction: the item tower rebuilds the pooled history",
                   ["model.generative={targets: [item_history], combine: add}"]),
    "projection": ("a linear output projection to the embedding size (dual_augmented's control)",
                   ["model.output_dim=$dim"]),
    "dual_augmented": ("dual augmented towers keyed by the user ID, with the output projection they need",
                       ["model.output_dim=$dim", "model.dual_augmented={query_id: user_id}"]),
}
REFERENCE = "reference"
METRICS = [(f"recall@{K}", f"Recall@{K}"), (f"ndcg@{K}", f"NDCG@{K}")]


#: cf.yaml as this ablation measured it: uniform negatives only (mixed negatives joined cf after it);
#: ``proxy_overrides`` adds the user tower of then (``gated_tower`` without ID dropout; cf reads the user ID
#: only since 2026-12-07).
AS_MEASURED = ["negatives.in_batch=false", "task.logq=false"]


def proxy_overrides(epochs: int, dim: int) -> list:
    """The proxy's config changes to cf.yaml: no output projection (cf's item embedding is the item
    vector), ``epochs``, the gated tower at ``dim``, ``AS_MEASURED``."""
    return ["model.output_dim=0", f"train.epochs={epochs}"] + gated_tower(dim, oov_rate=0.0) + AS_MEASURED


def reference_overrides(dim: int, epochs: int) -> list:
    """The proxy as shown: ``dim`` for every embedding (``package_config``'s ``embedding_dim``) and
    ``proxy_overrides``."""
    return [f"every embedding_dim={dim}"] + proxy_overrides(epochs, dim)


def variant_overrides(name: str, dim: int) -> list:
    """``VARIANTS[name]``'s overrides with ``$dim`` replaced by ``dim``."""
    return [o.replace("$dim", str(dim)) for o in VARIANTS[name][1]]


def variant_config(name: str, dim: int, epochs: int, seed: int):
    return package_config("best", seed, proxy_overrides(epochs, dim) + variant_overrides(name, dim), embedding_dim=dim)


def markdown(doc: dict) -> str:
    runs, ref = doc["variants"], doc["variants"].get(REFERENCE)
    lines = [doc["header"], "",
             f"Reference: `cf` ({', '.join(reference_overrides(doc['dim'], doc['epochs']))}), split `valid` "
             f"(train.txt -> valid.txt), seed {doc['seed']}. Change: relative to the reference.", "",
             "| method | overrides | " + " | ".join(f"{label} | change" for _, label in METRICS)
             + " | train s | examples/s | speed vs reference |", "|---|---|" + "---|---|" * len(METRICS) + "---|---|---|"]
    for name, (what, _) in VARIANTS.items():
        r = runs.get(name)
        if r is None:
            continue
        cells = []
        for key, _ in METRICS:
            change = "" if not ref or name == REFERENCE else f"{100 * (r[key] / ref[key] - 1):+.1f}%"
            cells.append(f"{r[key]:.4f} | {change}")
        speed = "" if not ref or name == REFERENCE else f"{r['examples_per_s'] / ref['examples_per_s']:.2f}x"
        shown = variant_overrides(name, doc["dim"])
        lines.append(f"| {name}: {what} | {', '.join(f'`{o}`' for o in shown) or '–'} | {' | '.join(cells)} | "
                     f"{r['train_seconds']:.0f} | {r['examples_per_s']:,.0f} | {speed} |")
    missing = [n for n in VARIANTS if n not in runs]
    if missing:
        lines += ["", f"Not run yet: {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def header(doc: dict) -> str:
    return (f"Gowalla seed-method ablation, {runs_provenance(doc)}; per-user Recall@{K} / NDCG@{K} over all "
            "40,981 items, training items removed")


def main(argv=None):
    p = argument_parser(__doc__)
    add_common_flags(p, "gowalla_ablation", dataset="gowalla")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from: {', '.join(VARIANTS)}")
    p.add_argument("--dim", type=int, default=64, help="every embedding (the reference's size)")
    p.add_argument("--epochs", type=int, default=3, help="the reference's training length (cf: 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="gowalla's workdir (converted data reused from data/valid)")
    p.add_argument("--render", action="store_true", help="only rewrite --output-md from --output-json")
    args = p.parse_args(argv)
    if args.render:
        write_text(args.output_md, markdown(read_json(args.output_json)))
        return 0
    names = comma_list(args.variants)
    bad = [n for n in names if n not in VARIANTS]
    if bad:
        p.error(f"unknown variant(s) {bad}; known: {list(VARIANTS)}")
    if not args.workdir:
        p.error("--workdir is required to run variants")
    for name in names:  # fail now, not after an hour of training
        variant_config(name, args.dim, args.epochs, args.seed)
    args.set, args.curve = [], False  # what gowalla's run_package reads: no --set, no validation curve
    started = datetime.datetime.now().astimezone()
    data = Split("valid", os.path.abspath(data_dir("gowalla", args.data_dir)), os.path.abspath(args.workdir))
    for name in names:
        log(f"--- variant {name} ---")
        fresh_start(args.seed)
        wall = time.perf_counter()
        config = variant_config(name, args.dim, args.epochs, args.seed)
        r = run_package("best", data, args.seed, args, config=config, run_name=f"ablation-{name}")
        r.update({"variant": name, "overrides": variant_overrides(name, args.dim),
                  "wall_seconds": time.perf_counter() - wall, "load_average": os.getloadavg()[0]})
        log(f"    {name}: Recall@{K} {r[f'recall@{K}']:.4f} NDCG@{K} {r[f'ndcg@{K}']:.4f}; "
            f"train {r['train_seconds']:.0f}s, {r['examples_per_s']:.0f} examples/s")
        doc = read_json(args.output_json) if os.path.exists(args.output_json) else {"variants": {}}
        if any(doc.get(key, value) != value for key, value in (("dim", args.dim), ("epochs", args.epochs),
                                                                ("seed", args.seed))):
            raise SystemExit(f"{args.output_json} holds an ablation at another --dim/--epochs/--seed; "
                             "use another --output-json")
        doc.update(dim=args.dim, epochs=args.epochs, seed=args.seed,
                   reference_overrides=reference_overrides(args.dim, args.epochs), machine=machine())
        doc["variants"][name] = r
        add_run(doc, run_info(started))
        doc["header"] = header(doc)
        write_results(doc, markdown(doc), args.output_json, args.output_md)
    log(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
