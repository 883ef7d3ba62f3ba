"""A TFX pipeline around the package: ImportExampleGen -> StatisticsGen -> SchemaGen -> Trainer -> Pusher.

``create_pipeline`` builds it (any TFX orchestrator runs the returned object); ``run`` runs it with
LocalDagRunner. The data root holds GZIP tf.Example TFRecords in ``train/`` and ``test/`` (what
``tfrec-towers synthetic``, ``movielens`` or ``examples --holdout last`` write); they become the splits
``train`` and ``eval``. The Trainer runs ``trainer_module.py``; Pusher copies its SavedModel into
``serving_base/<unix timestamp>/``, the layout TF Serving polls. Inside the TFX root::

    pipelines/tfx/run_in_env.sh --workdir /data python pipelines/tfx/pipeline.py \\
        --data-root /data/logs --pipeline-root /data/tfx --serving-base /data/models/towers --set train.epochs=5

Warm start (``--warm-start``, ``create_pipeline(warm_start=True)``): a Resolver
(``LatestArtifactStrategy``, id ``latest_model_resolver``) picks the newest Model artifact of this pipeline
in its ML Metadata store and the Trainer gets it as ``base_model``: each run continues the previous run's
model on its own logs (new users and items appended to the vocabularies; ``trainer_module.py`` says how).
The latest model, not the latest *blessed* one (``LatestBlessedModelStrategy``): the pipeline has no
Evaluator, so nothing blesses models. Run each span of logs as one run with its own ``--data-root`` and
the same ``--name``, ``--pipeline-root`` and metadata; the first run finds no model and trains from
scratch::

    ... pipeline.py --warm-start --data-root /data/logs/span-1 --pipeline-root /data/tfx --serving-base ...
    ... pipeline.py --warm-start --data-root /data/logs/span-2 --pipeline-root /data/tfx --serving-base ...
"""
import argparse
import json
import os
from typing import Optional, Sequence

import yaml
from tfx import v1 as tfx

MODULE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trainer_module.py")


def create_pipeline(pipeline_name: str, pipeline_root: str, data_root: str, serving_base: str,
                    module_file: str = MODULE_FILE, config=None, overrides: Sequence[str] = (),
                    index: str = "portable", metadata_path: Optional[str] = None, k: int = 100,
                    items: Optional[str] = None, beam_pipeline_args: Optional[Sequence[str]] = None,
                    enable_cache: bool = False, warm_start: bool = False) -> tfx.dsl.Pipeline:
    """The pipeline object.

    Args:
      data_root: folder with ``train/`` and ``test/`` GZIP tf.Example TFRecords.
      serving_base: Pusher's filesystem destination; versions go to ``serving_base/<timestamp>/``.
      config: the package's config (dict, packaged name or path the Trainer can read); None: ``default``.
      overrides: ``section.key=value`` strings applied to the config.
      index, k, items: the export's index type, items per query and catalog glob (None: the train split).
      metadata_path: ML Metadata SQLite file (default ``pipeline_root/metadata.sqlite``).
      warm_start: add ``latest_model_resolver`` (a Resolver with ``LatestArtifactStrategy`` over this
        pipeline's Model artifacts) and give its model to the Trainer as ``base_model``: the Trainer then
        continues that model's run on this run's examples (from scratch when there is none yet). The
        latest model rather than the latest blessed one: this pipeline has no Evaluator to bless models
        (a pipeline with one would use ``LatestBlessedModelStrategy`` with ``model`` and
        ``model_blessing`` channels).
    """
    example_gen = tfx.components.ImportExampleGen(
        input_base=data_root,
        input_config=tfx.proto.Input(splits=[tfx.proto.Input.Split(name="train", pattern="train/*"),
                                             tfx.proto.Input.Split(name="eval", pattern="test/*")]))
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"])
    custom_config = {"config": config, "overrides": list(overrides), "index": index, "k": int(k)}
    if items:
        custom_config["items"] = items
    resolver = None
    if warm_start:
        resolver = tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestArtifactStrategy,
            model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model)).with_id("latest_model_resolver")
    trainer = tfx.components.Trainer(
        module_file=module_file, examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
        base_model=resolver.outputs["model"] if resolver else None, custom_config=custom_config)
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_base)))
    metadata_path = metadata_path or os.path.join(pipeline_root, "metadata.sqlite")
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name, pipeline_root=pipeline_root,
        components=[example_gen, statistics_gen, schema_gen, *([resolver] if resolver else []), trainer, pusher],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path),
        beam_pipeline_args=list(beam_pipeline_args or ["--direct_num_workers=1"]),
        enable_cache=enable_cache)


def run(argv=None) -> None:
    """Parse the command line and run the pipeline with LocalDagRunner."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True, help="folder with train/ and test/ GZIP tf.Example TFRecords")
    p.add_argument("--pipeline-root", required=True, help="TFX artifacts (and metadata.sqlite) go here")
    p.add_argument("--serving-base", required=True, help="Pusher's destination: versions go to <it>/<timestamp>")
    p.add_argument("--name", default="tfrec_towers", help="pipeline name")
    p.add_argument("--config", default=None,
                   help="package config: YAML/JSON path or packaged name (default: the packaged default)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override")
    p.add_argument("--index", choices=["portable", "brute", "scann"], default="portable",
                   help="export index (scann needs scann's ops, which do not load on TFX's TensorFlow 2.21)")
    p.add_argument("--k", type=int, default=100, help="items per query in serving_default")
    p.add_argument("--items", default=None, help="item-catalog glob (default: the items of the train split)")
    p.add_argument("--metadata-path", default=None, help="ML Metadata SQLite (default: PIPELINE_ROOT/metadata.sqlite)")
    p.add_argument("--warm-start", action="store_true",
                   help="the Trainer continues this pipeline's latest Model (a Resolver passes it as base_model; "
                        "none yet: from scratch); run each span of logs with its own --data-root")
    args = p.parse_args(argv)
    config = args.config
    if config and os.path.exists(config):  # pass the config's contents: the Trainer may not see this path
        with open(config, encoding="utf-8") as f:
            config = json.load(f) if config.endswith(".json") else yaml.safe_load(f)
    tfx.orchestration.LocalDagRunner().run(create_pipeline(
        args.name, args.pipeline_root, args.data_root, args.serving_base, config=config, overrides=args.set,
        index=args.index, metadata_path=args.metadata_path, k=args.k, items=args.items, warm_start=args.warm_start))


if __name__ == "__main__":
    run()
