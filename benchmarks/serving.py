"""Export and serving benchmark on MovieLens-100K: index quality and speed, and a gRPC load test.

1. Train the ``default`` config on the ``tfrs`` protocol (or take ``--run-dir``), export it with each
   index type (``brute``, ``portable``, ``scann``) and reload every version from disk.
2. Quality of each index on the test events' queries: HR@10/50/100 of the true item within the
   index's top-100, and overlap@K with the exact (``brute``) top-K.
3. Speed of ``serving_default`` in this process, batch 1 and batch 256, as a ratio to ``brute``.
4. Load test over TF Serving's gRPC API on 127.0.0.1 (the package's server, the portable export):
   ``--threads`` clients send batch-1 top-K requests for ``--seconds`` / 2, then ``refresh-items``
   publishes a new version while they go on, and they continue ``--seconds`` / 2 after the server
   reports it available. Reported: requests/s, p50/p99 latency, failed requests, versions that
   answered. It stops by itself.
5. Index scaling on synthetic clustered embeddings (D = 128): build time, query time per batch 1 and
   256 and overlap@100 with exact, for catalogs of ``--scaling-sizes`` items: where IVF pays off.

    python benchmarks/serving.py                               # trains first (a few minutes)
    python benchmarks/serving.py --run-dir RUN --seconds 10    # an existing ML-100K run

ML-100K is read by path from ``$TFREC_TOWERS_ML100K`` (default ``<repo>/../shared/datasets/ml-100k``).
"""
import argparse
import datetime
import glob
import json
import os
import platform
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import tfrec_towers  # noqa: E402,F401  (Keras 2 before TensorFlow loads)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfrec_towers.config import Config, packaged  # noqa: E402
from tfrec_towers.data import reader  # noqa: E402
from tfrec_towers.data.movielens import convert_movielens  # noqa: E402
from tfrec_towers.export.exporter import export_run, refresh_items  # noqa: E402
from tfrec_towers.run import RunDir  # noqa: E402
from tfrec_towers.serving.client import RetrievalClient  # noqa: E402
from tfrec_towers.serving.server import ModelServer, import_custom_ops  # noqa: E402
from tfrec_towers.train import parse_spec, positives, train  # noqa: E402

INDEXES = ("brute", "portable", "scann")
K = 100


def test_queries(run_dir: str, limit: int):
    """Query features (dense numpy, batch first) and true item IDs of the run's positive test events."""
    run = RunDir(run_dir)
    config = run.config()
    keep = positives(config)
    batches = []

    def on_batch(parsed):
        inputs = config.features.prepare(parsed if keep is None else reader.select(parsed, keep(parsed)))
        batches.append({name: inputs[name].numpy() for name in [f.name for f in config.features.query]
                        + [config.features.item_id]})

    reader.scan(reader.list_files(run.info()["eval"]), parse_spec(config, config.data.user_id), on_batch,
                config.data.compression)
    joined = {}
    for name in batches[0]:
        width = max(b[name].shape[1] for b in batches) if batches[0][name].ndim == 2 else 0
        joined[name] = np.concatenate([np.pad(b[name], [(0, 0), (0, width - b[name].shape[1])], constant_values=b"")
                                       if width else b[name] for b in batches])[:limit]
    targets = joined.pop(config.features.item_id)
    return joined, targets.astype(str)


def rows(features, start, stop):
    return {k: tf.constant(v[start:stop]) for k, v in features.items()}


def timed(fn, repeats: int) -> float:
    fn()  # warm up (tracing, caches)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def index_quality_and_speed(versions, queries, targets):
    results, exact = {}, None
    n = len(targets)
    for index in INDEXES:
        serve = tf.saved_model.load(versions[index]).signatures["serving_default"]
        ids = np.concatenate([serve(**rows(queries, i, i + 256))["item_ids"].numpy().astype(str)
                              for i in range(0, n, 256)])
        exact = ids if index == "brute" else exact
        hit_rank = np.where(ids == targets[:, None], np.arange(ids.shape[1])[None, :], K)
        first = hit_rank.min(axis=1)
        results[index] = {
            **{f"hr@{k}": float(np.mean(first < k)) for k in (10, 50, 100)},
            **{f"overlap@{k}": float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(ids, exact)]))
               for k in (10, 100)},
            "batch1_ms": 1000 * timed(lambda: [serve(**rows(queries, i, i + 1)) for i in range(50)], 3) / 50,
            "batch256_ms": 1000 * timed(lambda: serve(**rows(queries, 0, 256)), 10),
        }
    for index in INDEXES:
        for key in ("batch1_ms", "batch256_ms"):
            results[index][key.replace("_ms", "_speed_vs_brute")] = results["brute"][key] / results[index][key]
    return results


def load_test(base: str, name: str, queries, threads: int, seconds: float, refresh_catalog: str, log=print):
    """Batch-1 top-K over gRPC for ``seconds``; ``refresh-items`` halfway. Loopback only."""
    latencies, failures, versions, stop = [], [], [], threading.Event()
    lock = threading.Lock()
    n = len(next(iter(queries.values())))

    with ModelServer(base, grpc_port=0, poll_interval_s=0.2, log=log) as server:
        target = f"127.0.0.1:{server.grpc_port}"

        def worker(seed):
            rng = np.random.default_rng(seed)
            mine_lat, mine_ver = [], []
            with RetrievalClient(target, name, timeout_s=10) as client:
                while not stop.is_set():
                    i = int(rng.integers(n))
                    start = time.perf_counter()
                    try:
                        mine_ver.append(client.top_k({k: v[i:i + 1] for k, v in queries.items()}).version)
                        mine_lat.append(time.perf_counter() - start)
                    except Exception as e:  # noqa: BLE001  (every failure is counted and reported)
                        with lock:
                            failures.append(repr(e)[:200])
            with lock:
                latencies.extend(mine_lat)
                versions.extend(mine_ver)

        pool = [threading.Thread(target=worker, args=(s,)) for s in range(threads)]
        started = time.perf_counter()
        for t in pool:
            t.start()
        time.sleep(seconds / 2)
        new_dir = refresh_items(base, name, refresh_catalog, log=log)
        new_version = int(os.path.basename(new_dir))
        with RetrievalClient(target, name) as watcher:  # keep the load on for seconds / 2 after the swap
            while (new_version, "AVAILABLE") not in watcher.status() and time.perf_counter() - started < 600:
                time.sleep(0.05)
        time.sleep(seconds / 2)
        stop.set()
        for t in pool:
            t.join()
        elapsed = time.perf_counter() - started
    lat = np.array(latencies) * 1000
    return {"threads": threads, "seconds": round(elapsed, 1), "requests": len(lat),
            "requests_per_s": len(lat) / elapsed, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "failed": len(failures), "failures": failures[:5],
            "versions_seen": sorted(set(versions)), "new_version": new_version}


def index_scaling(sizes, dim: int = 128, seed: int = 0, log=print):
    """Each index type over synthetic clustered unit vectors: build s, ms per batch, overlap@100."""
    from tfrec_towers.export.indexes import build_index

    rng = np.random.default_rng(seed)
    out = {}
    for n in sizes:
        centers = rng.normal(size=(256, dim)).astype(np.float32)
        x = centers[rng.integers(256, size=n)] + rng.normal(size=(n, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        q = x[rng.integers(n, size=256)] + 0.5 * rng.normal(size=(256, dim)).astype(np.float32)
        q = tf.constant(q / np.linalg.norm(q, axis=1, keepdims=True))
        ids = np.array([f"i{i}" for i in range(n)])
        row, exact = {}, None
        for kind in INDEXES:
            start = time.perf_counter()
            index = build_index(kind, ids, x, K)
            built = time.perf_counter() - start
            search = tf.function(index.__call__)
            got = search(q)[1].numpy()
            exact = got if kind == "brute" else exact
            row[kind] = {"build_s": built,
                         "batch1_ms": 1000 * timed(lambda: [search(q[i:i + 1]) for i in range(20)], 3) / 20,
                         "batch256_ms": 1000 * timed(lambda: search(q), 5),
                         "overlap@100": float(np.mean([len(set(a) & set(b)) / K for a, b in zip(got, exact)])),
                         "params": getattr(index, "params", {})}
            log(f"{n} items, {kind}: {row[kind]}")
        out[str(n)] = row
    return out


def markdown(result) -> str:
    lines = [f"Export and serving on MovieLens-100K (`tfrs` protocol), {result['date']}, {result['machine']}; "
             f"{result['queries']} test queries, catalog of {result['catalog']} items, k = {K}.", "",
             "| index | HR@10 | HR@50 | HR@100 | overlap@10 with exact | overlap@100 | batch 1 ms | batch 256 ms "
             "| speed vs brute (1 / 256) |", "|---|---|---|---|---|---|---|---|---|"]
    for index, r in result["indexes"].items():
        lines.append(f"| {index} | {r['hr@10']:.3f} | {r['hr@50']:.3f} | {r['hr@100']:.3f} | {r['overlap@10']:.3f} "
                     f"| {r['overlap@100']:.3f} | {r['batch1_ms']:.2f} | {r['batch256_ms']:.1f} "
                     f"| {r['batch1_speed_vs_brute']:.2f}x / {r['batch256_speed_vs_brute']:.2f}x |")
    lt = result["load_test"]
    lines += ["", f"gRPC load test (127.0.0.1, portable export, {lt['threads']} client threads, batch 1, "
              f"{lt['seconds']} s, `refresh-items` halfway): {lt['requests']} requests, "
              f"{lt['requests_per_s']:.0f} requests/s, p50 {lt['p50_ms']:.1f} ms, p99 {lt['p99_ms']:.1f} ms, "
              f"{lt['failed']} failed; versions answering: {lt['versions_seen']}.", "",
              "Index scaling (synthetic clustered unit vectors, D = 128, k = 100, in-process `tf.function`):", "",
              "| items | index | build s | batch 1 ms | batch 256 ms | overlap@100 with exact | speed vs brute (1 / 256) |",
              "|---|---|---|---|---|---|---|"]
    for n, row in result["scaling"].items():
        for kind, r in row.items():
            lines.append(f"| {int(n):,} | {kind} | {r['build_s']:.1f} | {r['batch1_ms']:.2f} | {r['batch256_ms']:.1f} "
                         f"| {r['overlap@100']:.3f} | {row['brute']['batch1_ms'] / r['batch1_ms']:.2f}x / "
                         f"{row['brute']['batch256_ms'] / r['batch256_ms']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", help="a trained ML-100K run (default: train the default config in --workdir)")
    p.add_argument("--workdir", default="/tmp/tfrec-serving-bench")
    p.add_argument("--data-dir", help="ml-100k folder (default: $TFREC_TOWERS_ML100K or ../shared/datasets/ml-100k)")
    p.add_argument("--set", action="append", default=[], help="config override for the trained run")
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--scaling-sizes", default="10000,100000,1000000",
                   help="comma-separated catalog sizes of the index scaling part ('' to skip)")
    p.add_argument("--output-json", default=os.path.join(REPO, "benchmarks", "results", "serving.json"))
    p.add_argument("--output-md", default=os.path.join(REPO, "benchmarks", "results", "serving.md"))
    args = p.parse_args(argv)
    import_custom_ops()

    workdir = os.path.abspath(args.workdir)
    run_dir = args.run_dir
    if not run_dir:
        data = convert_movielens(args.data_dir, os.path.join(workdir, "data"), protocol="tfrs", overwrite=True)
        files = data["files"]
        run_dir = os.path.join(workdir, "run")
        if not os.path.exists(RunDir(run_dir).weights + ".index"):
            config = Config.load(packaged("default")).with_overrides(args.set)
            train(config, files["train"], run_dir, files["test"], files["items"], verbose=2)
    base = os.path.join(workdir, "models")
    versions = {index: export_run(run_dir, base, index, index=index, k=K) for index in INDEXES}
    queries, targets = test_queries(run_dir, args.queries)
    indexes = index_quality_and_speed(versions, queries, targets)

    # the refreshed catalog for the load test: the same items minus the first 100
    items = sorted(glob.glob(RunDir(run_dir).info()["items"]))
    catalog = os.path.join(workdir, "refreshed", "items.tfrecord.gz")
    os.makedirs(os.path.dirname(catalog), exist_ok=True)
    with tf.io.TFRecordWriter(catalog, options="GZIP") as w:
        for r in tf.data.TFRecordDataset(items, compression_type="GZIP").skip(100):
            w.write(r.numpy())
    load = load_test(base, "portable", queries, args.threads, args.seconds, catalog)
    scaling = index_scaling([int(n) for n in args.scaling_sizes.split(",") if n])
    result = {"date": datetime.date.today().isoformat(), "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
              "run_dir": run_dir, "queries": len(targets),
              "catalog": json.load(open(os.path.join(versions["brute"], "assets", "tfrec_towers.json")))["catalog"]["num_items"],
              "indexes": indexes, "load_test": load, "scaling": scaling}
    os.makedirs(os.path.dirname(args.output_json), exist_ok=True)
    with open(args.output_json, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    text = markdown(result)
    with open(args.output_md, "w", encoding="utf-8") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
