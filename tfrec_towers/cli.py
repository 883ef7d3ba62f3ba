"""``tfrec-towers``: convert logs, train, evaluate, and run the whole job end to end (``demo``)."""
import argparse
import json
import os
import sys


def _config(args):
    from tfrec_towers.config import Config, packaged

    path = args.config if args.config and os.path.exists(args.config) else packaged(args.config or "default")
    return Config.load(path).with_overrides(getattr(args, "set", None) or [])


def cmd_train(args):
    from tfrec_towers.train import train

    train(_config(args), args.train, args.run_dir, args.eval, args.items)


def cmd_evaluate(args):
    from tfrec_towers.evaluate import evaluate_run

    evaluate_run(args.run_dir, args.eval, args.items, args.history, args.output)


def cmd_report(args):
    from tfrec_towers.embedding_report import write_embedding_report

    write_embedding_report(args.run_dir, args.out, args.eval, args.items, num_points=args.points,
                           num_pairs=args.pairs, method=args.method, seed=args.seed)


def cmd_movielens(args):
    from tfrec_towers.data.movielens import convert_movielens

    meta = convert_movielens(args.data_dir, args.out, protocol=args.protocol, history_len=args.history_len,
                             train_file=args.train_file, test_file=args.test_file, overwrite=args.overwrite)
    print(json.dumps(meta, indent=2))


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
    config = _config(args)
    metrics = train(config, files["train"], os.path.join(workdir, "run"), files["test"], files["items"])
    print(json.dumps({k: metrics[k] for k in ("all_items", "exclude_history") if k in metrics}, indent=2))


def cmd_config(args):
    from tfrec_towers.config import packaged

    with open(packaged(args.name), encoding="utf-8") as f:
        sys.stdout.write(f.read())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tfrec-towers", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def config_args(sp):
        sp.add_argument("--config", help="YAML/JSON config, or a packaged name (default, tutorial); default: default")
        sp.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                        help="override one config value, e.g. train.epochs=3 (repeatable)")

    sp = sub.add_parser("train", help="train a model from TFRecord logs (resumes a killed run)")
    config_args(sp)
    sp.add_argument("--train", required=True, help="glob(s) of training TFRecords, comma-separated")
    sp.add_argument("--eval", help="glob of eval TFRecords: evaluated over the catalog after training")
    sp.add_argument("--items", help="glob of the item catalog TFRecords (default: items of the training logs)")
    sp.add_argument("--run-dir", required=True)
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("evaluate", help="full-catalog metrics of a trained run, as JSON")
    sp.add_argument("--run-dir", required=True)
    sp.add_argument("--eval", required=True, help="glob of eval TFRecords")
    sp.add_argument("--items", help="item catalog glob (default: the run's)")
    sp.add_argument("--history", help="glob whose items are excluded per user (default: the run's training logs)")
    sp.add_argument("--output", help="metrics JSON path (default: RUN/metrics.json)")
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
    sp.add_argument("--data-dir", help="folder with u.data, u.user, u.item (default: $TFREC_TOWERS_ML100K, "
                                       "else ../shared/datasets/ml-100k beside the checkout)")
    sp.add_argument("--out", required=True)
    sp.add_argument("--protocol", choices=["tfrs", "last", "files"], default="tfrs")
    sp.add_argument("--history-len", type=int, default=50)
    sp.add_argument("--train-file", help="u.data-format train file (protocol files)")
    sp.add_argument("--test-file", help="u.data-format test file (protocol files)")
    sp.add_argument("--overwrite", action="store_true")
    sp.set_defaults(func=cmd_movielens)

    sp = sub.add_parser("synthetic", help="generate synthetic event logs with a hidden preference model")
    sp.add_argument("--out", required=True)
    sp.add_argument("--users", type=int, default=1000)
    sp.add_argument("--items", type=int, default=500)
    sp.add_argument("--requests", type=int, default=20000)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--overwrite", action="store_true")
    sp.set_defaults(func=cmd_synthetic)

    sp = sub.add_parser("demo", help="end to end: (synthetic) logs -> train -> evaluate")
    config_args(sp)
    sp.add_argument("--data", help="a folder written by `movielens` or `synthetic` (default: generate synthetic)")
    sp.add_argument("--workdir", default="tfrec-demo", help="where data and the run go (default: ./tfrec-demo)")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("config", help="print a packaged config (default, tutorial)")
    sp.add_argument("name", nargs="?", default="default")
    sp.set_defaults(func=cmd_config)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"tfrec-towers {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
