"""A TFX pipeline around the package: ImportExampleGen -> StatisticsGen -> SchemaGen -> Trainer -> Pusher.

``create_pipeline`` builds it; ``run`` runs it with LocalDagRunner (any TFX orchestrator runs the same
object). The data root holds GZIP tf.Example TFRecords in ``train/`` and ``test/`` (what
``tfrec-towers examples --holdout last``, ``movielens`` or ``synthetic`` write). Pusher copies the
Trainer's SavedModel into ``serving_base/<timestamp>/``, the layout TF Serving polls.

    python pipelines/tfx/pipeline.py --data-root DATA --pipeline-root ROOT --serving-base /srv/models/towers \\
        --set train.epochs=3
"""
import argparse
import os
from typing import Optional, Sequence

from tfx import v1 as tfx

MODULE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trainer_module.py")


def create_pipeline(pipeline_name: str, pipeline_root: str, data_root: str, serving_base: str,
                    module_file: str = MODULE_FILE, config: Optional[dict] = None, overrides: Sequence[str] = (),
                    index: str = "portable", k: int = 100, metadata_path: Optional[str] = None) -> tfx.dsl.Pipeline:
    example_gen = tfx.components.ImportExampleGen(
        input_base=data_root,
        input_config=tfx.proto.Input(splits=[tfx.proto.Input.Split(name="train", pattern="train/*"),
                                             tfx.proto.Input.Split(name="eval", pattern="test/*")]))
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"])
    trainer = tfx.components.Trainer(
        module_file=module_file, examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
        custom_config={"config": config, "overrides": list(overrides), "index": index, "k": k})
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_base)))
    metadata_path = metadata_path or os.path.join(pipeline_root, "metadata.sqlite")
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name, pipeline_root=pipeline_root,
        components=[example_gen, statistics_gen, schema_gen, trainer, pusher],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path))


def run(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True, help="folder with train/ and test/ GZIP tf.Example TFRecords")
    p.add_argument("--pipeline-root", required=True)
    p.add_argument("--serving-base", required=True, help="Pusher's destination: versions go to <it>/<timestamp>")
    p.add_argument("--name", default="tfrec_towers")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override")
    p.add_argument("--index", choices=["portable", "brute"], default="portable",
                   help="scann is not offered: ScaNN's ops do not load on TFX's TensorFlow 2.21")
    p.add_argument("--k", type=int, default=100)
    args = p.parse_args(argv)
    tfx.orchestration.LocalDagRunner().run(create_pipeline(
        args.name, args.pipeline_root, args.data_root, args.serving_base, overrides=args.set, index=args.index,
        k=args.k))


if __name__ == "__main__":
    run()
