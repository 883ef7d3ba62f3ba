"""What bounds the cost of a filtered top-k request (issue 26), measured apart from ``benchmarks/serving.py``.

1. **Depth.** A request that excludes the query's own top M asks for its exact ranks M .. M + k. An
   inverted-file index (``portable``; ScaNN's leaves are a k-means partition too) finds an item only in
   the partitions it probes, ranked by centroid score. Over the export's own ``portable`` index
   (k-means, probe count tuned as ``export`` tunes it): the share of each query's exact ranks [0, k) and
   [M, M + k) that the unfiltered probe count's partitions hold, and the fewest partitions that hold
   ranks [M, M + k) within one point of the top k's share. No filter can scan fewer items than those
   partitions hold and keep recall within a point of the unfiltered search's, so their ratio to the
   unfiltered probe count bounds the filtered search's cost from below (the index's own depth schedule,
   which aims a point higher, is reported beside it).
2. **The filter's input.** Every filtered request maps its B x M excluded item IDs to catalog positions
   through the export's ID table (``Index.positions``, a stock ``StaticHashTable``) and sorts them per row
   (``filtering.sorted_exclusions``). Timed at batch 1 and 64 inside the graph (as a C++ server pays it),
   against the unfiltered ``portable`` search of the same rows, in alternating rounds.

Catalogs are ``serving.clustered_unit_vectors`` (the serving benchmark's: spread 1.5 calibrated to the
issue's probe count, 1.0 a tighter one), D = 64, k = 100, queries drawn from the same mixture.

    python -m benchmarks.filtered_limits                        # 1M items, both spreads (~5 min)
    python -m benchmarks.filtered_limits --items 100000 --output-json /tmp/f.json --output-md /tmp/f.md
"""
import datetime
import sys

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import numpy as np
import tensorflow as tf

from tfrec_towers.export import filtering
from tfrec_towers.export.portable_index import PortableIndex

from benchmarks.harness import add_common_flags, argument_parser, comma_list, log, provenance, write_results
from benchmarks.serving import K, clustered_unit_vectors, exact_top_k, graph_latencies_ms, id_rows

__all__ = ["partition_ranks", "depth_coverage", "input_cost", "markdown", "main"]


def partition_ranks(index: PortableIndex, queries: np.ndarray, depth: int) -> np.ndarray:
    """[Q, depth]: for each query's exact neighbours (best first) in the index's storage, the rank of
    the neighbour's partition among the query's centroid scores (0: the best partition)."""
    stored = index.embeddings.numpy()
    offsets = index.offsets.numpy()
    part_of = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    order = np.argsort(-(queries @ index.centroids.numpy().T), axis=1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(order.shape[1])[None, :].repeat(len(queries), 0), axis=1)
    return np.take_along_axis(rank, part_of[exact_top_k(stored, queries, depth)], axis=1)


def depth_coverage(index: PortableIndex, queries: np.ndarray, excluded: int, k: int = K) -> dict:
    """Shares of ranks [0, k) and [M, M + k) in the unfiltered probe count's partitions, the partitions
    that hold ranks [M, M + k) within a point of the top k's share, and the index's schedule at depth M + k."""
    ranks = partition_ranks(index, queries, excluded + k)
    base = int(index.params["num_probe"])
    top, deep = ranks[:, :k], ranks[:, excluded:]
    top_share = float(np.mean(top < base))
    needed = int(np.quantile(deep, max(0.0, top_share - 0.01), method="higher")) + 1
    table = index.schedule.table()
    scheduled = int(table[min(excluded + k, len(table) - 1)])
    return {"excluded": excluded, "num_partitions": int(index.params["num_partitions"]), "num_probe": base,
            "top_share": top_share, "deep_share_at_num_probe": float(np.mean(deep < base)),
            "probes_within_a_point": needed, "probe_ratio": needed / base,
            "schedule_probes": scheduled, "schedule_ratio": scheduled / base}


def input_cost(index: PortableIndex, ids: np.ndarray, queries: np.ndarray, excluded: int, rng,
               batches=(1, 64), calls: int = 60, rounds: int = 2) -> dict:
    """p50 ms, inside the graph (``serving.graph_latencies_ms``: no Python dispatch), of the ID lookup and
    sort of B x M random excluded IDs, and of the unfiltered search of the same rows; ``rounds`` alternating
    rounds of the three."""
    calls_ = {"search": lambda v, e: index(v),
              "lookup": lambda v, e: filtering.catalog_positions(index.positions, e),
              "lookup_and_sort": lambda v, e: filtering.sorted_exclusions(filtering.catalog_positions(index.positions, e))}
    out = {}
    for b in batches:
        rows = [rng.choice(len(ids), excluded, replace=False) for _ in range(b * calls)]
        stacked = tf.constant(np.stack([queries[i * b:(i + 1) * b] for i in range(calls)]))
        names = tf.stack([id_rows(ids, rows, i * b, (i + 1) * b) for i in range(calls)])
        times = {name: [] for name in calls_}
        for r in range(rounds):
            for name in (list(calls_) if r % 2 == 0 else list(calls_)[::-1]):
                times[name].append(graph_latencies_ms(calls_[name], stacked, names))
        p50 = {name: float(np.median(np.concatenate(t))) for name, t in times.items()}
        out[f"batch{b}"] = {"search_p50_ms": p50["search"],
                            **{name: {"p50_ms": p50[name], "vs_search": p50[name] / p50["search"]}
                               for name in ("lookup", "lookup_and_sort")}}
    return out


def markdown(doc: dict) -> str:
    lines = [doc["provenance"], "", f"Depth (queries' own top M excluded; {doc['queries']} queries, k = {K}): shares "
             "of each query's exact ranks held by the probed partitions of the export's `portable` index.", "",
             "| items | spread | M | partitions | unfiltered probe | ranks [0, k) held | ranks [M, M+k) held at that probe "
             "| probes to hold them within 1 point | ratio | the index's schedule at depth M + k |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in doc["catalogs"]:
        d = c["depth"]
        lines.append(f"| {c['items']:,} | {c['spread']} | {d['excluded']} | {d['num_partitions']} | {d['num_probe']} | "
                     f"{d['top_share']:.3f} | {d['deep_share_at_num_probe']:.3f} | {d['probes_within_a_point']} | "
                     f"{d['probe_ratio']:.2f}x | {d['schedule_probes']} ({d['schedule_ratio']:.2f}x) |")
    lines += ["", f"The filter's input ({doc['input_excluded']} random excluded IDs per row): the ID lookup "
              "(`StaticHashTable`) and the per-row sort, p50 ms inside the graph, against the unfiltered `portable` "
              "search of the same rows.", "",
              "| items | spread | batch | search | lookup | vs search | lookup + sort | vs search |",
              "|---|---|---|---|---|---|---|---|"]
    for c in doc["catalogs"]:
        for b, row in c["input"].items():
            lk, ls = row["lookup"], row["lookup_and_sort"]
            lines.append(f"| {c['items']:,} | {c['spread']} | {b[5:]} | {row['search_p50_ms']:.2f} | {lk['p50_ms']:.2f} | "
                         f"{lk['vs_search']:.0%} | {ls['p50_ms']:.2f} | {ls['vs_search']:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argument_parser(__doc__)
    add_common_flags(p, "filtered_limits")
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--spreads", default="1.5,1.0", help="comma-separated cluster spreads (serving.py's)")
    p.add_argument("--excluded", type=int, default=500, help="M")
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    started = datetime.datetime.now().astimezone()
    catalogs = []
    for spread in comma_list(args.spreads, float):
        rng = np.random.default_rng(args.seed)
        x, q = clustered_unit_vectors([args.items, max(args.queries, 64 * 60)], 64, rng, spread=spread)
        ids = np.array([str(i) for i in range(args.items)]).astype(object).astype(bytes)
        index = PortableIndex(ids, x, K, seed=args.seed)
        depth = depth_coverage(index, q[:args.queries], args.excluded)
        log(f"{args.items:,} items, spread {spread}: {depth}")
        cost = input_cost(index, ids, q, args.excluded, np.random.default_rng(args.seed + 1))
        log(f"{args.items:,} items, spread {spread}: {cost}")
        catalogs.append({"items": args.items, "spread": spread, "depth": depth, "input": cost})
    doc = {"provenance": provenance("Filtered top-k limits (issue 26)", started) + f", TensorFlow {tf.__version__}",
           "date": started.isoformat(timespec="seconds"), "args": vars(args), "queries": args.queries,
           "input_excluded": args.excluded, "catalogs": catalogs}
    log(write_results(doc, markdown(doc), args.output_json, args.output_md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
