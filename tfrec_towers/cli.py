"""``tfrec-towers``: convert logs, train, evaluate, export and serve; the whole job end to end (``demo``)."""
import argparse
import json
import os
import sys

from tfrec_towers import choices  # no TensorFlow: the CLI stays cheap to import
from tfrec_towers.export import layout
from tfrec_towers.export.popularity_prior import DEFAULT_WEIGHT as POPULARITY_WEIGHT  # numpy only


def _config(args, data_dir=None):
    """``--config`` (a file, or a packaged name); else the packaged config that the dataset's converter
    named in its metadata.json (``user-item-lists``: ``cf``); else ``default``."""
    from tfrec_towers.config import Config, packaged

    name = args.config
    if not name and getattr(args, "warm_start", None):
        path = os.path.join(args.warm_start, "config.yaml")
        if os.path.exists(path):
            print(f"config: the one of the run it continues, {path} (--config to choose another)")
            return Config.load(path).with_overrides(getattr(args, "set", None) or [])
    if not name:
        name, source = _suggested_config(data_dir or os.path.dirname(os.path.dirname(_first_match(args.train))))
        if name:
            print(f"config: the packaged '{name}', named by {source} (--config to choose another)")
    path = name if name and os.path.exists(name) else packaged(name or "default")
    return Config.load(path).with_overrides(getattr(args, "set", None) or [])


def _first_match(patterns: str) -> str:
    import glob

    for pattern in (patterns or "").split(","):
        matches = sorted(glob.glob(pattern))
        if matches:
            return os.path.abspath(matches[0])
    return ""


def _suggested_config(data_dir: str):
    """(name, path) of the ``config`` a converted dataset's metadata.json names, or (None, None)."""
    path = os.path.join(data_dir, "metadata.json") if data_dir else ""
    try:
        with open(path, encoding="utf-8") as f:
            name = json.load(f).get("config")
    except (OSError, ValueError, AttributeError):
        return None, None
    return (name, path) if isinstance(name, str) and name else (None, None)


def cmd_train(args):
    from tfrec_towers.train import train

    train(_config(args), args.train, args.run_dir, args.eval, args.items, valid_pattern=args.valid,
          warm_start=args.warm_start)


def cmd_evaluate(args):
    if args.saved_model:
        from tfrec_towers.evaluation.job import evaluate_saved_model

        evaluate_saved_model(args.saved_model, args.eval, args.run_dir, args.history, args.output)
        return
    if not args.run_dir:
        raise ValueError("--run-dir is required (or --saved-model EXPORT_DIR)")
    from tfrec_towers.evaluation.job import evaluate_run

    evaluate_run(args.run_dir, args.eval, args.items, args.history, args.output)


def cmd_report(args):
    from tfrec_towers.evaluation.embedding_report import write_embedding_report

    write_embedding_report(args.run_dir, args.out, args.eval, args.items, num_points=args.points,
                           num_pairs=args.pairs, method=args.method, seed=args.seed)


def cmd_movielens(args):
    from tfrec_towers.data.movielens import convert_movielens

    meta = convert_movielens(args.data_dir, args.out, protocol=args.protocol, history_len=args.history_len,
                             train_file=args.train_file, test_file=args.test_file, overwrite=args.overwrite)
    print(json.dumps(meta, indent=2))


def cmd_beir(args):
    from tfrec_towers.data.beir import convert_beir

    meta = convert_beir(args.beir_dir, args.out, split=args.split, dev_fraction=args.dev_fraction,
                        corpus_pairs_kinds=[p for p in args.corpus_pairs.split(",") if p], ict_per_doc=args.ict_per_doc,
                        policy=args.policy, seed=args.seed, num_shards=args.shards, overwrite=args.overwrite,
                        name=args.name)
    print(json.dumps({k: v for k, v in meta.items() if k not in ("read", "test_query_ids")}, indent=2))


def cmd_user_item_lists(args):
    from tfrec_towers.data.user_item_lists import convert_user_item_lists

    split = lambda text: [p for p in (text or "").split(",") if p]  # noqa: E731
    meta = convert_user_item_lists(split(args.train), args.test, args.out, catalog_files=split(args.catalog),
                                   history_len=args.history_len, policy=args.policy, seed=args.seed,
                                   num_shards=args.shards, overwrite=args.overwrite, name=args.name)
    print(json.dumps({k: v for k, v in meta.items() if k != "read"}, indent=2))


def cmd_synthetic(args):
    from tfrec_towers.data.synthetic import generate_synthetic

    meta = generate_synthetic(args.out, num_users=args.users, num_items=args.items, num_requests=args.requests,
                              seed=args.seed, overwrite=args.overwrite)
    print(json.dumps(meta, indent=2))


def cmd_demo(args):
    """Synthetic logs (or a converted dataset) -> train the default model -> full-catalog metrics."""
    from tfrec_towers.train import train

    workdir = os.path.abspath(args.workdir)
    data = args.data
    if not data:
        from tfrec_towers.data.synthetic import generate_synthetic

        data = os.path.join(workdir, "data")
        if not os.path.exists(os.path.join(data, "metadata.json")):
            print(f"no --data given: generating synthetic logs in {data}")
            generate_synthetic(data)
    with open(os.path.join(data, "metadata.json"), encoding="utf-8") as f:
        files = json.load(f)["files"]
    config = _config(args, data_dir=data)
    run_dir = os.path.join(workdir, "run")
    metrics = train(config, files["train"], run_dir, files["test"], files["items"])
    from tfrec_towers.export.exporter import export_run

    version_dir = export_run(run_dir, os.path.join(workdir, "models"), "tfrec_towers", index="portable")
    print(f"serve it with: tfrec-towers serve {os.path.dirname(os.path.dirname(version_dir))}")
    print(json.dumps({k: metrics[k] for k in ("all_items", "exclude_history") if k in metrics}, indent=2))


def _index_params(args):
    return {k: getattr(args, k) for k in ("num_partitions", "num_probe", "num_rerank") if getattr(args, k)}


def cmd_export(args):
    from tfrec_towers.export.exporter import export_run

    export_run(args.run_dir, args.base_dir, args.name, index=args.index, k=args.k, items=args.items,
               index_params=_index_params(args), max_k=args.max_k, popularity_logs=args.popularity_logs,
               popularity_weight=POPULARITY_WEIGHT if args.popularity_weight is None else args.popularity_weight)


def cmd_refresh_items(args):
    from tfrec_towers.export.exporter import refresh_items

    refresh_items(args.base_dir, args.name, args.items, run_dir=args.run_dir, index=args.index, k=args.k,
                  index_params=_index_params(args), max_k=args.max_k, popularity_logs=args.popularity_logs,
                  popularity_weight=args.popularity_weight)


def cmd_ops(args):
    from tfrec_towers.export.ops import ops_report

    path, latest = args.export_dir, layout.latest_version(args.export_dir)
    if not os.path.exists(os.path.join(path, layout.SAVED_MODEL_FILE)) and latest is not None:
        path = os.path.join(path, str(latest))  # BASE/NAME: its latest version
    report = ops_report(path)
    print(json.dumps(report, indent=2))
    return 0 if report["stock_tf_serving"] or not args.check_stock else 1


def cmd_serve(args):
    from tfrec_towers.serving.server import ModelServer, PortError

    server = ModelServer(args.base_dir, host=args.host, grpc_port=args.port, rest_port=args.rest_port,
                         poll_interval_s=args.poll_seconds, max_batch_size=args.max_batch_size,
                         num_versions=args.num_versions, log=lambda message: print(message, flush=True),
                         **{k: getattr(args, k) for k in ("max_request_bytes", "max_rest_body_bytes")
                            if getattr(args, k) is not None},  # else the server's defaults
                         grace_period_s=args.grace_period)
    try:
        finished = server.serve_forever()  # logs the bound addresses; Ctrl-C or SIGTERM stops it
    except PortError as e:  # checked before any model loads
        print(f"tfrec-towers serve: error: {e}", file=sys.stderr)
        return 2
    if not finished:  # a cancelled request's signature run goes on, and Python would wait for it at exit
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def cmd_examples(args):
    from tfrec_towers.data.event_logs import build_training_examples, schema_from_args, window_from_args

    build_training_examples(args.events, args.items, args.out, users=args.users, schema=schema_from_args(args),
                            dates=window_from_args(args))


def cmd_config(args):
    from tfrec_towers.config import packaged

    with open(packaged(args.name), encoding="utf-8") as f:
        sys.stdout.write(f.read())


def converter_options(sp, seed_help: str, shards: int) -> None:
    """The options every benchmark-format converter shares: bad-line policy, seed, shards, name, overwrite."""
    sp.add_argument("--policy", choices=choices.RECORD_POLICIES, default="fail",
                    help="bad lines: fail naming file:line, or skip and count them")
    sp.add_argument("--seed", type=int, default=0, help=seed_help)
    sp.add_argument("--shards", type=int, default=shards)
    sp.add_argument("--name", default="", help="dataset name recorded in metadata.json")
    sp.add_argument("--overwrite", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tfrec-towers", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def config_args(sp):
        sp.add_argument("--config", help="YAML/JSON config, or a packaged name (default, tutorial, cf, scifact); default: the one the "
                             "dataset's metadata.json names (user-item-lists: cf), else default")
        sp.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                        help="override one config value, e.g. train.epochs=3 (repeatable)")

    sp = sub.add_parser("train", help="train a model from TFRecord logs (resumes a killed run; --warm-start continues a finished one)")
    config_args(sp)
    sp.add_argument("--train", required=True, help="glob(s) of training TFRecords, comma-separated")
    sp.add_argument("--eval", help="glob of eval TFRecords: evaluated over the catalog after training")
    sp.add_argument("--valid", help="glob of validation TFRecords: per-epoch per-user Recall/NDCG, learning-rate "
                                    "decay on plateau, early stopping, best epoch kept (train.validation)")
    sp.add_argument("--items", help="glob of the item catalog TFRecords (default: items of the training logs)")
    sp.add_argument("--run-dir", required=True)
    sp.add_argument("--warm-start", metavar="PREV_RUN",
                    help="continue the finished run PREV_RUN on these (new) logs: its vocabularies extended, its "
                         "weights and optimizer state copied, its config unless --config; PREV_RUN is not modified")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("evaluate", help="full-catalog metrics of a trained run (or of an export's filtered "
                                         "signature, --saved-model), as JSON")
    sp.add_argument("--run-dir", help="the trained run (required unless --saved-model, whose run it defaults to)")
    sp.add_argument("--eval", required=True, help="glob of eval TFRecords")
    sp.add_argument("--items", help="item catalog glob (default: the run's)")
    sp.add_argument("--history", help="glob whose items are excluded per user (default: the run's training logs)")
    sp.add_argument("--saved-model", metavar="EXPORT_DIR",
                    help="evaluate this export version (or BASE/NAME: its latest) in process instead: its `filtered` "
                         "signature with each user's history as exclude_item_ids; HR@K for K <= its max-k")
    sp.add_argument("--output", help="metrics JSON path (default: RUN/metrics.json; --saved-model: "
                                     "RUN/saved_model_metrics.json)")
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("report", help="embedding-space report: 2-D map and same/cross-tower similarities")
    sp.add_argument("run_dir", metavar="RUN_DIR")
    sp.add_argument("--out", required=True, help="folder for the PNGs and embedding_report.json")
    sp.add_argument("--eval", help="glob of eval TFRecords whose queries are shown (default: the run's)")
    sp.add_argument("--items", help="item catalog glob (default: the run's)")
    sp.add_argument("--method", choices=["pca", "tsne"], default="pca", help="2-D map (tsne needs scikit-learn)")
    sp.add_argument("--points", type=int, default=2000, help="at most this many queries and items on the map")
    sp.add_argument("--pairs", type=int, default=20000, help="random pairs per similarity distribution")
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("movielens", help="MovieLens-100K -> TFRecord logs and item catalog")
    sp.add_argument("--data-dir", help="folder with u.data, u.user, u.item (default: $TFREC_TOWERS_ML100K)")
    sp.add_argument("--out", required=True)
    sp.add_argument("--protocol", choices=["tfrs", "last", "files"], default="tfrs")
    sp.add_argument("--history-len", type=int, default=50)
    sp.add_argument("--train-file", help="u.data-format train file (protocol files)")
    sp.add_argument("--test-file", help="u.data-format test file (protocol files)")
    sp.add_argument("--overwrite", action="store_true")
    sp.set_defaults(func=cmd_movielens)

    sp = sub.add_parser("user-item-lists", help="`user item item ...` files (LightGCN-style splits: Gowalla, "
                                                "Yelp2018, ...) -> TFRecord logs and item catalog")
    sp.add_argument("--train", required=True, help="training file(s), comma-separated, merged per user "
                                                   "(Gowalla's published protocol: train.txt,valid.txt)")
    sp.add_argument("--test", required=True, help="evaluation file (test.txt; valid.txt for tuning)")
    sp.add_argument("--catalog", help="further file(s) whose items join the catalog, comma-separated")
    sp.add_argument("--out", required=True)
    sp.add_argument("--history-len", type=int, default=50, help="cap of item_history (a uniform sample beyond)")
    converter_options(sp, "history samples and training-event order", shards=4)
    sp.set_defaults(func=cmd_user_item_lists)

    sp = sub.add_parser("beir", help="a BEIR folder (corpus.jsonl, queries.jsonl, qrels/*.tsv: SciFact, NFCorpus, "
                                     "...) -> query -> document TFRecord logs and the document catalog")
    sp.add_argument("beir_dir", help="the folder holding corpus.jsonl, queries.jsonl and qrels/")
    sp.add_argument("--out", required=True)
    sp.add_argument("--split", choices=["test", "dev"], default="test",
                    help="test: train on qrels/train.tsv, test on qrels/test.tsv; dev: hold out --dev-fraction "
                         "of the training queries as the test split (tuning)")
    sp.add_argument("--dev-fraction", type=float, default=0.2)
    sp.add_argument("--corpus-pairs", default="", help="comma-separated: title (title -> text), ict (a sentence -> "
                                                      "title and the rest of its text); training only")
    sp.add_argument("--ict-per-doc", type=int, default=1, help="sentences drawn per document for ict")
    converter_options(sp, "dev split, ict sentences and training-event order", shards=1)
    sp.set_defaults(func=cmd_beir)

    sp = sub.add_parser("examples", help="raw event logs (CSV/Parquet/TFRecord) + user/item tables -> training "
                                         "tf.Examples (the Beam job's single-process twin)",
                        description="Raw event logs + user/item tables -> training tf.Examples. Logs partitioned "
                                    "by day (date=YYYY-MM-DD directories): --dates FROM:TO picks the days whose "
                                    "events become examples, --history-days N the earlier days read only for "
                                    "item_history; metadata.json records the window.")
    from tfrec_towers.data.event_logs import add_arguments

    add_arguments(sp)
    sp.set_defaults(func=cmd_examples)

    sp = sub.add_parser("synthetic", help="generate synthetic event logs with a hidden preference model")
    sp.add_argument("--out", required=True)
    sp.add_argument("--users", type=int, default=1000)
    sp.add_argument("--items", type=int, default=500)
    sp.add_argument("--requests", type=int, default=20000)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--overwrite", action="store_true")
    sp.set_defaults(func=cmd_synthetic)

    sp = sub.add_parser("demo", help="end to end: (synthetic) logs -> train -> evaluate -> export")
    config_args(sp)
    sp.add_argument("--data", help="a folder written by `movielens` or `synthetic` (default: generate synthetic)")
    sp.add_argument("--workdir", default="tfrec-demo", help="where data and the run go (default: ./tfrec-demo)")
    sp.set_defaults(func=cmd_demo)

    def index_args(sp, default):
        sp.add_argument("--index", choices=choices.INDEX_TYPES, default=default,
                        help="portable: stock TF ops (loads in stock TF Serving); scann: ScaNN custom ops; "
                             "brute: exact" + (f" (default: {default})" if default else
                                               " (default: the latest version's)"))
        sp.add_argument("--k", type=int, default=100 if default else None, help="items per query (serving_default)")
        sp.add_argument("--max-k", type=int, help="largest k of the filtered signatures, their output width "
                                                  "(default: --k" + ("" if default else ", else the latest version's") + ")")
        sp.add_argument("--num-partitions", type=int, help="index partitions/leaves (default ~sqrt(catalog))")
        sp.add_argument("--num-probe", type=int, help="partitions searched per query (default: tuned)")
        sp.add_argument("--num-rerank", type=int, help="exactly re-ranked shortlist (default max(4k, 100); scann max(15k, 100))")
        sp.add_argument("--popularity-logs", metavar="GLOB",
                        help="logs in the run's schema (e.g. the last days' examples): rank by score + W * "
                             "log(1 + the item's positive events there), so what is watched now moves up "
                             "without retraining"
                             + ("" if default else " (default: the latest version's)"))
        sp.add_argument("--popularity-weight", type=float, metavar="W",
                        help="W of --popularity-logs (default " + ("" if default else "the latest version's, else ")
                             + f"{POPULARITY_WEIGHT}, for a normalize: true model's cosine scores; 0: no prior); "
                             "items without an ID row of the run (new ones) weigh the run's task.temperature")

    sp = sub.add_parser("export", help="a trained run -> BASE/NAME/<timestamp>/ SavedModel (towers + item index)")
    sp.add_argument("run_dir", metavar="RUN_DIR")
    sp.add_argument("base_dir", metavar="BASE_DIR")
    sp.add_argument("name", metavar="NAME", help="model name: the version goes to BASE_DIR/NAME/<timestamp>")
    index_args(sp, "portable")
    sp.add_argument("--items", help="item catalog glob (default: the run's)")
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("refresh-items", help="re-embed a new/changed catalog with the latest version's model "
                                              "-> a new version")
    sp.add_argument("base_dir", metavar="BASE_DIR")
    sp.add_argument("name", metavar="NAME")
    sp.add_argument("--items", required=True, help="glob of the new item catalog TFRecords")
    sp.add_argument("--run-dir", help="the run of the latest version (default: recorded in its metadata)")
    index_args(sp, None)
    sp.set_defaults(func=cmd_refresh_items)

    sp = sub.add_parser("ops", help="the non-TensorFlow ops an export needs, and whether stock TF Serving has them")
    sp.add_argument("export_dir", metavar="EXPORT_DIR", help="a version directory, or BASE/NAME (its latest)")
    sp.add_argument("--check-stock", action="store_true", help="exit 1 if stock TF Serving cannot load it")
    sp.set_defaults(func=cmd_ops)

    sp = sub.add_parser("serve", help="serve BASE_DIR/NAME/<version> exports over TF Serving's gRPC (and REST) API")
    sp.add_argument("base_dir", metavar="BASE_DIR")
    sp.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500, as TF Serving)")
    sp.add_argument("--rest-port", type=int, help="also serve TF Serving's REST API on this port")
    sp.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    sp.add_argument("--poll-seconds", type=float, default=1.0, help="how often BASE_DIR is polled for versions")
    sp.add_argument("--max-batch-size", type=int, default=1000,
                    help="larger requests get INVALID_ARGUMENT (default 1000; a row costs memory while it is "
                         "served, ~0.2 MB for a 5,000-item portable export: see serving/README.md)")
    sp.add_argument("--num-versions", type=int, default=1, help="newest versions kept loaded per model")
    sp.add_argument("--max-request-bytes", type=int,
                    help="budget for a request's inputs once decoded, checked on the shapes they declare before "
                         "any is built; more gets INVALID_ARGUMENT (default 64 MiB, the gRPC message cap)")
    sp.add_argument("--max-rest-body-bytes", type=int, help="larger REST bodies get 413 (default 16 MiB)")
    sp.add_argument("--grace-period", type=float, default=5.0, metavar="SECONDS",
                    help="on SIGTERM or Ctrl-C, stop accepting requests and give those in flight this long to "
                         "finish before cancelling them (default 5)")
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("config", help="print a packaged config (default, tutorial, cf, scifact)")
    sp.add_argument("name", nargs="?", default="default")
    sp.set_defaults(func=cmd_config)
    return p


def _before_tensorflow(argv) -> None:
    """What must be decided before TensorFlow loads (building the parser loads it): TensorFlow's C++ logs
    at warnings and above unless the environment says otherwise (the command's own output stays readable;
    the library itself leaves logging to the application); for ``serve``, oneDNN off unless the
    environment says otherwise, so that a large request's memory goes back to the system once answered
    (``tfrec_towers/serving/memory.py``)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if list(argv[:1]) == ["serve"]:
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def main(argv=None):
    _before_tensorflow(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError, FileExistsError, BlockingIOError) as e:  # BlockingIOError: run in use
        print(f"tfrec-towers {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
