"""TFX Trainer module file: ``run_fn(fn_args)`` trains a tfrec_towers two-tower model and hands Pusher a
servable SavedModel (user tower + the item index computed with the same weights).

Use it in any TFX pipeline whose ExampleGen writes tf.Examples in the feature spec's layout (GZIP
TFRecords, as ExampleGen writes them), with ``tfrec_towers`` installed where the Trainer runs (``pip install``
of the package into the TFX environment, as ``run_in_env.sh`` does; no extras)::

    trainer = tfx.components.Trainer(
        module_file="pipelines/tfx/trainer_module.py",
        examples=example_gen.outputs["examples"],          # splits "train" and "eval"
        schema=schema_gen.outputs["schema"],
        custom_config={"config": config_dict,             # package config; default: packaged "default"
                       "overrides": ["train.epochs=5"],   # SECTION.KEY=VALUE, applied in order
                       "index": "portable", "k": 100})    # export index type, items per query
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory="/srv/models/towers")))

``custom_config`` keys (all optional):
  config: the package's config as a dict (what ``Config.from_dict`` takes), or a packaged config name
    (``"default"``, ``"tutorial"``), or a YAML/JSON path readable by the Trainer. Default: ``"default"``.
  overrides: list of ``section.key=value`` strings (``Config.with_overrides``).
  index: ``portable`` (default: stock TF ops, loads in stock TF Serving; the only approximate index that
    works in TFX's TensorFlow 2.21, where ScaNN's ops cannot load), ``brute`` or ``scann``.
  k: items returned per query by ``serving_default`` (default 100, at most the catalog size).
  items: item-catalog TFRecord glob. Default: the distinct items of the training split (``train`` itself
    would find them for evaluation, but export and sampled negatives need a catalog glob, so the training
    files are passed as the catalog).

Training length comes from the config (``train.epochs``; ``train.steps_per_epoch`` caps the batches of an
epoch): the package has no total-step limit, so Trainer's ``train_args.num_steps`` (``fn_args.train_steps``)
is not used, and a warning says so when it is set. ``eval_args`` is not used either: evaluation runs over
the whole eval split. The run directory (checkpoints, TensorBoard logs, ``metrics.json``) is
``fn_args.model_run_dir/run`` (the Trainer's ``model_run`` artifact).
"""
import importlib
import logging
import os
import shutil
import tempfile

import tfrec_towers  # first: sets up Keras 2 for TFRS before TensorFlow loads

import tensorflow as tf

from tfrec_towers.config import Config, packaged
from tfrec_towers.export.exporter import export_run
from tfrec_towers.export.indexes import INDEX_TYPES
from tfrec_towers.train import train

log = logging.getLogger(__name__)


def load_config(custom_config) -> Config:
    """``custom_config["config"]`` (dict, packaged name, file path or None) + ``["overrides"]`` -> Config."""
    custom = dict(custom_config or {})
    source = custom.get("config") or "default"
    if isinstance(source, dict):
        config = Config.from_dict(source)
    elif isinstance(source, str):
        config = Config.load(source if os.path.exists(source) else packaged(source))
    else:
        raise ValueError(f"custom_config['config'] must be a dict, a packaged config name or a path, got {source!r}")
    overrides = custom.get("overrides") or []
    if isinstance(overrides, str):
        overrides = [overrides]
    return config.with_overrides(list(overrides))


def file_patterns(uris) -> str:
    """ExampleGen split URIs (``.../Split-train/*`` patterns, or split directories) -> comma-separated globs."""
    out = []
    for uri in uris or []:
        out.append(os.path.join(uri, "*") if tf.io.gfile.isdir(uri) else uri)
    if not out:
        raise ValueError("the Trainer got no example files for this split")
    return ",".join(out)


def _is_local(path: str) -> bool:
    return "://" not in path


def _copy_tree(src: str, dst: str) -> None:
    """Copy local directory ``src``'s contents into ``dst`` (a local path or any tf.io.gfile URI)."""
    if _is_local(dst):
        shutil.copytree(src, dst, dirs_exist_ok=True)
        return
    for dirpath, _, names in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        target = dst if rel == "." else os.path.join(dst, rel)
        tf.io.gfile.makedirs(target)
        for name in names:
            tf.io.gfile.copy(os.path.join(dirpath, name), os.path.join(target, name), overwrite=True)


def run_fn(fn_args) -> None:
    """Train on the train split, evaluate on the eval split, export into ``fn_args.serving_model_dir``."""
    custom = dict(fn_args.custom_config or {})
    config = load_config(custom)
    index, k = custom.get("index", "portable"), int(custom.get("k", 100))
    if index not in INDEX_TYPES:  # fail before training, not after
        raise ValueError(f"custom_config['index'] must be one of {INDEX_TYPES}, got {index!r}")
    if index == "scann":
        try:
            importlib.import_module("scann")  # registers its ops, or fails here
        except Exception as e:  # ImportError, or its ops failing to load on this TensorFlow
            raise ValueError(f"index 'scann' needs scann's TF ops, which do not load here ({e}); "
                             "use index 'portable'") from e
    if getattr(fn_args, "train_steps", None):
        log.warning("train_args.num_steps=%s is ignored: training length is the config's train.epochs=%d "
                    "(train.steps_per_epoch=%s)", fn_args.train_steps, config.train.epochs,
                    config.train.steps_per_epoch)

    train_files = file_patterns(fn_args.train_files)
    eval_files = file_patterns(fn_args.eval_files) if fn_args.eval_files else None
    items = custom.get("items") or train_files

    # The package writes its run directory with local file APIs: train locally if the URI is remote.
    local_run_root = fn_args.model_run_dir if _is_local(fn_args.model_run_dir) else tempfile.mkdtemp(prefix="tfrec-run-")
    run_dir = os.path.join(local_run_root, "run")
    export_base = tempfile.mkdtemp(prefix="tfrec-towers-export-")
    try:
        print(f"tfrec_towers trainer: tfrec_towers {tfrec_towers.__version__} from "
              f"{os.path.dirname(os.path.abspath(tfrec_towers.__file__))}, TensorFlow {tf.__version__}")
        print(f"tfrec_towers trainer: train {train_files}, eval {eval_files}, items {items}, run {run_dir}")
        train(config, train_files, run_dir, eval_files, items, verbose=2)  # prints and saves the metrics
        version_dir = export_run(run_dir, export_base, "model", index=index, k=k, items=items)
        _copy_tree(version_dir, fn_args.serving_model_dir)
        if not _is_local(fn_args.model_run_dir):
            _copy_tree(local_run_root, fn_args.model_run_dir)
    finally:
        shutil.rmtree(export_base, ignore_errors=True)
        if not _is_local(fn_args.model_run_dir):
            shutil.rmtree(local_run_root, ignore_errors=True)
    if not tf.io.gfile.exists(os.path.join(fn_args.serving_model_dir, "saved_model.pb")):
        raise RuntimeError(f"no SavedModel was written to {fn_args.serving_model_dir}")
    print(f"tfrec_towers {tfrec_towers.__version__} trainer: SavedModel ({index} index, k={k}) in "
          f"{fn_args.serving_model_dir}")
