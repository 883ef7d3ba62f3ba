"""Ablation of the training objectives and negative sources on MovieLens-100K.

Every variant is the packaged ``default`` config plus a few ``--set``-style overrides (``VARIANTS``),
trained at the same budget (epochs, batch size, optimizer) on both protocols of
``benchmarks/movielens.py`` (``tfrs``: random 80/20; ``last``: each user's latest rating), evaluated
over the whole catalog. The reference row is the default model: in-batch softmax, logQ from training
counts, temperature 0.2. Speed is training examples/s relative to the reference's in the same seed loop.

    python -m benchmarks.ablation                                   # everything, 3 seeds, both protocols
    python -m benchmarks.ablation --variants reference,samtone --seeds 0 --protocols tfrs
    python -m benchmarks.ablation --protocols last --output-json /tmp/last.json --resume   # continue a run
    python -m benchmarks.ablation --merge /tmp/tfrs.json /tmp/last.json    # one JSON + table from parts

Results go to ``benchmarks/results/ablation.{json,md}`` after every run (an interrupted ablation keeps
what finished; ``--resume`` skips it). ML-100K is read from ``$TFREC_TOWERS_ML100K`` (default
``<repo>/../shared/datasets/ml-100k``), never copied.
"""
import datetime
import os
import sys
import tempfile
import time

from tfrec_towers.config import Config, packaged
from tfrec_towers.data.movielens import convert_movielens

from benchmarks.harness import (add_common_flags, argument_parser, comma_list, data_dir, fmt, log, machine,
                                machine_line, mean_std_by_key, read_json, write_results)
from benchmarks.movielens import HISTORY_LEN, Dataset, run_package

__all__ = ["VARIANTS", "variant_config", "summarize", "markdown", "main"]

#: variant -> overrides of the default config. ``{run:reference}`` is the same seed's reference run dir.
VARIANTS = {
    "reference": [],
    "bidirectional": ["task.bidirectional=sum"],
    "samtone_query": ["task.samtone=query"],
    "samtone_both": ["task.samtone=both", "task.bidirectional=sum"],
    "pair": ["task.pair_alpha=0.1"],
    "adaptive": ["task.adaptive={tau0: 0.2}"],
    "hinge": ["task.loss=hinge", "task.temperature=null", "task.logq=false"],
    "bce": ["task.loss=bce", "task.logq=false"],
    "bce_balanced": ["task.loss=bce", "task.logq=false", "task.negative_weight=0.002"],  # ~1/(B-1)
    "focal": ["task.loss=focal", "task.logq=false"],
    "hard_in_batch": ["task.hard_negatives=100"],
    "uniform_mixed": ["negatives.uniform=512"],
    "popularity": ["negatives.popularity=512"],
    "exposure": ["negatives.exposure=1", "negatives.exposure_field=rating", "negatives.exposure_below=3"],
    "mined": ["negatives.mined=1", "negatives.mined_from={run:reference}"],
    "streaming_logq": ["task.logq_estimator=streaming"],
    "dual_augmented": ["model.dual_augmented={category: item_genres, alignment_weight: 0.1}"],
    "generative": ["model.generative={targets: [item_history]}"],
}
REFERENCE = "reference"
METRICS = [("hr@10", "HR@10"), ("hr@50", "HR@50"), ("hr@100", "HR@100"), ("ndcg@10", "NDCG@10"), ("mrr", "MRR")]


def variant_config(name: str, seed: int, overrides, extra, workdir: str, protocol: str) -> Config:
    resolved = [o.replace("{run:reference}", run_dir(workdir, protocol, REFERENCE, seed)) for o in overrides]
    config = Config.load(packaged("default")).with_overrides(resolved + list(extra))
    config.train.seed = seed
    return config


def run_dir(workdir, protocol, variant, seed):
    return os.path.join(workdir, "runs", protocol, f"{variant}-seed{seed}")


def summarize(results: dict) -> dict:
    """protocol -> variant -> {mean, std, n} over seeds, with speed relative to the reference."""
    out = {}
    for protocol, variants in results.items():
        ref = variants.get(REFERENCE, {})
        out[protocol] = {}
        for variant, seeds in variants.items():
            rows = {}
            for seed, r in seeds.items():
                row = {k: r["all_items"][k] for k, _ in METRICS}
                row["hr@50_excl"] = r["exclude_history"]["hr@50"]
                row["train_seconds"] = r["train_seconds"]
                if seed in ref and ref[seed].get("examples_per_s") and r.get("examples_per_s"):
                    row["speed"] = r["examples_per_s"] / ref[seed]["examples_per_s"]
                    row["cpu_speed"] = r["examples_per_cpu_s"] / ref[seed]["examples_per_cpu_s"]
                rows[seed] = row
            mean, std = mean_std_by_key(rows.values(), sorted({k for row in rows.values() for k in row}))
            out[protocol][variant] = {"mean": mean, "std": std, "seeds": sorted(rows)}
    return out


def markdown(summary: dict) -> str:
    lines = []
    for protocol, variants in summary.items():
        ref = variants.get(REFERENCE, {}).get("mean", {}).get("hr@50")
        lines += [f"### protocol `{protocol}`", "",
                  "| variant | seeds | " + " | ".join(h for _, h in METRICS)
                  + " | HR@50 vs ref | HR@50 excl. | train s | speed vs ref | CPU speed vs ref |",
                  "|" + "---|" * (len(METRICS) + 7)]
        for variant, s in variants.items():
            m, d = s["mean"], s["std"]
            cells = [variant, str(len(s["seeds"]))] + [fmt(m.get(k), d.get(k)) for k, _ in METRICS]
            cells.append(f"{100 * (m['hr@50'] / ref - 1):+.1f}%" if ref else "–")
            cells.append(fmt(m.get("hr@50_excl"), d.get("hr@50_excl")))
            cells.append(fmt(m.get("train_seconds"), d.get("train_seconds"), 0))
            for key in ("speed", "cpu_speed"):
                cells.append(fmt(m.get(key), d.get(key), 2, "x"))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("All items ranked (`all_items`), mean ± sample std over seeds; HR@50 excl.: the user's training "
                 "items removed. Speed: training examples/s of `fit` (wall, and process CPU time) over the "
                 "reference's in the same seed.")
    return "\n".join(lines) + "\n"


def write(results: dict, settings: dict, json_path: str, md_path: str) -> str:
    summary = summarize(results)
    doc = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": machine(),
           "settings": settings, "variants": VARIANTS, "results": results, "summary": summary}
    table = markdown(summary)
    write_results(doc, f"MovieLens-100K ablation, {doc['date'][:10]}, {machine_line(doc['machine'])}; settings "
                       f"{settings}\n\n{table}", json_path, md_path)
    return table


def parse_args(argv=None):
    p = argument_parser(__doc__)
    add_common_flags(p, "ablation", seeds="0,1,2", dataset="ml-100k")
    p.add_argument("--protocols", default="tfrs,last")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"from: {', '.join(VARIANTS)}, or a custom "
                   "NAME=override;override (e.g. 'best=task.samtone=query;negatives.uniform=512')")
    p.add_argument("--set", action="append", default=[], help="override applied to every variant (the budget)")
    p.add_argument("--workdir", help="data and runs (default: a temporary directory)")
    p.add_argument("--resume", action="store_true", help="keep the output JSON's results and skip them")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="merge result files into the outputs and exit")
    args = p.parse_args(argv)
    args.protocols = comma_list(args.protocols)
    variants = {}
    for item in comma_list(args.variants):
        name, sep, overrides = item.partition("=")
        if sep:
            variants[name] = [o for o in overrides.split(";") if o]
        elif name in VARIANTS:
            variants[name] = VARIANTS[name]
        else:
            p.error(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    args.variants = variants
    for name, overrides in variants.items():  # fail now, not after an hour of training
        try:
            variant_config(name, 0, overrides, args.set, "/tmp", "tfrs")
        except (ValueError, TypeError) as e:
            p.error(f"variant {name}: {e}")
    return args


def main(argv=None):
    args = parse_args(argv)
    results = {}
    if args.merge:
        for path in args.merge:
            doc = read_json(path)
            VARIANTS.update(doc.get("variants", {}))
            for protocol, variants in doc["results"].items():
                for variant, seeds in variants.items():
                    results.setdefault(protocol, {}).setdefault(variant, {}).update(seeds)
        print(write(results, {"merged": args.merge}, args.output_json, args.output_md))
        return 0
    if args.resume and os.path.exists(args.output_json):
        results = read_json(args.output_json)["results"]
    VARIANTS.update(args.variants)
    workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="tfrec-ablation-"))
    settings = {"protocols": args.protocols, "seeds": args.seeds, "budget_overrides": args.set}
    folder = data_dir("ml-100k", args.data_dir)
    for protocol in args.protocols:
        meta = convert_movielens(folder, os.path.join(workdir, "data", protocol), protocol=protocol,
                                 history_len=HISTORY_LEN, overwrite=True, progress=lambda m: log("  " + m))
        data = Dataset(meta, Config.load(packaged("default")))
        for seed in args.seeds:
            for name, overrides in args.variants.items():
                done = results.get(protocol, {}).get(name, {})
                if str(seed) in done:
                    continue
                log(f"\n=== {protocol} seed {seed}: {name} {overrides} ===")
                start = time.perf_counter()
                config = variant_config(name, seed, overrides, args.set, workdir, protocol)
                r = run_package(config, data, run_dir(workdir, protocol, name, seed))
                results.setdefault(protocol, {}).setdefault(name, {})[str(seed)] = r
                log(f"    HR@50 {r['all_items']['hr@50']:.4f}, HR@100 {r['all_items']['hr@100']:.4f}, "
                    f"{r['examples_per_s']:.0f} examples/s ({time.perf_counter() - start:.0f} s in all)")
                write(results, settings, args.output_json, args.output_md)
    print(write(results, settings, args.output_json, args.output_md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
