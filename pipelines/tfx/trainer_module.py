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

Warm start: give the Trainer a ``base_model`` (in ``pipeline.py --warm-start``: a Resolver with
``LatestArtifactStrategy`` over the pipeline's Model artifacts) and the new run continues the previous
one on this execution's examples (``tfrec_towers.train.train(..., warm_start=PREV)``: vocabularies
extended, weights and optimizer state copied). The package continues a *run directory*, not a SavedModel,
so every execution also keeps what a warm start reads in its Model artifact, beside the SavedModel that
Pusher pushes (Pusher copies only ``Format-Serving/``)::

    <model artifact>/Format-Serving/           the SavedModel (fn_args.serving_model_dir)
    <model artifact>/tfrec_towers_run/         run.json, config.yaml, feature_stats.json, scan.txt,
                                               metrics.json, weights/final.*  (RUN_SUBDIR)

and the next execution finds it from ``fn_args.base_model`` (``<model artifact>/Format-Serving``) as
``<model artifact>/tfrec_towers_run``. A base model without it (made by another module) is refused, as
is a config the previous run cannot continue (``WarmStartError`` naming the key): train that span once
without a base model. With no ``custom_config["config"]`` a warm start takes the previous run's
``config.yaml`` (plus ``overrides``), as ``tfrec-towers train --warm-start`` does. No ``base_model`` (the
first span: the Resolver found no model yet): training starts from scratch.
"""
import importlib
import logging
import os
import shutil
import tempfile
from typing import Optional

import tfrec_towers  # first: sets up Keras 2 for TFRS before TensorFlow loads

import tensorflow as tf

from tfrec_towers.choices import INDEX_TYPES
from tfrec_towers.config import Config, packaged
from tfrec_towers.export.exporter import export_run
from tfrec_towers.train import train

log = logging.getLogger(__name__)

#: Where each execution keeps its run (what a warm start reads) inside its Model artifact.
RUN_SUBDIR = "tfrec_towers_run"
#: The run's files a warm start (and ``tfrec-towers evaluate/export``) needs, besides ``weights/``.
RUN_FILES = ("config.yaml", "feature_stats.json", "scan.txt", "metrics.json", "run.json")
#: The names TFX gives a Model artifact's serving directory (``path_utils.serving_model_dir``).
SERVING_DIR_NAMES = ("Format-Serving", "serving_model_dir")


def load_config(custom_config, previous_config: Optional[str] = None) -> Config:
    """``custom_config["config"]`` (dict, packaged name, file path or None) + ``["overrides"]`` -> Config.
    No config given: ``previous_config`` (the config.yaml of the run a warm start continues), else the
    packaged ``default``."""
    custom = dict(custom_config or {})
    source = custom.get("config") or previous_config or "default"
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


def model_artifact_uri(path: str) -> str:
    """A Model artifact's URI from its serving directory (``fn_args.base_model``,
    ``fn_args.serving_model_dir``: ``<uri>/Format-Serving``); any other path is taken as the URI."""
    path = path.rstrip("/")
    return os.path.dirname(path) if os.path.basename(path) in SERVING_DIR_NAMES else path


def keep_run(run_dir: str, model_uri: str) -> str:
    """Copy what a warm start needs of the local run ``run_dir`` into ``<model_uri>/tfrec_towers_run``
    (local or any tf.io.gfile URI); run.json last. Returns that directory."""
    target = os.path.join(model_uri, RUN_SUBDIR)
    _copy_tree(os.path.join(run_dir, "weights"), os.path.join(target, "weights"))
    for name in RUN_FILES:
        if os.path.exists(os.path.join(run_dir, name)):
            tf.io.gfile.copy(os.path.join(run_dir, name), os.path.join(target, name), overwrite=True)
    return target


def base_run(base_model: Optional[str], scratch: str) -> Optional[str]:
    """The run directory a warm start continues: ``<base model artifact>/tfrec_towers_run`` (None without a
    base model). A remote one is copied into ``scratch`` first (the package reads runs with local file
    APIs); a local one is used in place: a warm start never writes to it."""
    if not base_model:
        return None
    uri = os.path.join(model_artifact_uri(base_model), RUN_SUBDIR)
    if not tf.io.gfile.exists(os.path.join(uri, "run.json")):
        raise ValueError(f"the Trainer's base_model {base_model} holds no tfrec_towers run ({uri}/run.json): it "
                         "was not trained by this module (or by an older version of it); run this span without "
                         "a base model (pipeline.py without --warm-start) and warm-start the next one")
    if _is_local(uri):
        return uri
    local = os.path.join(scratch, RUN_SUBDIR)
    for dirpath, _, names in tf.io.gfile.walk(uri):
        rel = os.path.relpath(dirpath, uri)
        os.makedirs(os.path.join(local, rel), exist_ok=True)
        for name in names:
            tf.io.gfile.copy(os.path.join(dirpath, name), os.path.join(local, rel, name), overwrite=True)
    return local


def run_fn(fn_args) -> None:
    """Train on the train split, evaluate on the eval split, export into ``fn_args.serving_model_dir``."""
    custom = dict(fn_args.custom_config or {})
    scratch = tempfile.mkdtemp(prefix="tfrec-towers-base-")
    try:
        _run(fn_args, custom, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(fn_args, custom, scratch: str) -> None:
    previous = base_run(getattr(fn_args, "base_model", None), scratch)
    config = load_config(custom, os.path.join(previous, "config.yaml") if previous else None)
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
        if previous:
            source = os.path.join(model_artifact_uri(fn_args.base_model), RUN_SUBDIR)
            print(f"tfrec_towers trainer: warm start from the base model {fn_args.base_model}: continuing its run "
                  f"{source}" + (f" (copied to {previous})" if previous != source else "")
                  + ("" if custom.get("config") else ", with its config.yaml"))
        else:
            print("tfrec_towers trainer: no base model: training from scratch")
        # prints and saves the metrics
        train(config, train_files, run_dir, eval_files, items, verbose=2, warm_start=previous)
        version_dir = export_run(run_dir, export_base, "model", index=index, k=k, items=items)
        _copy_tree(version_dir, fn_args.serving_model_dir)
        kept = keep_run(run_dir, model_artifact_uri(fn_args.serving_model_dir))
        print(f"tfrec_towers trainer: run kept for the next warm start in {kept}")
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
