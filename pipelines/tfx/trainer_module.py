"""TFX Trainer module file: ``run_fn(fn_args)`` trains a tfrec_towers model and hands Pusher an export.

Use it in any TFX pipeline whose ExampleGen writes tf.Examples in the feature spec's layout::

    trainer = tfx.components.Trainer(
        module_file="pipelines/tfx/trainer_module.py",
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
        custom_config={"config": my_config_dict,            # default: the packaged default config
                       "overrides": ["train.epochs=5"],     # optional SECTION.KEY=VALUE list
                       "index": "portable", "k": 100})      # export index type and top-K
    pusher = tfx.components.Pusher(model=trainer.outputs["model"], push_destination=...)

The item catalog is the distinct items of the training examples. Training length comes from the
config's ``train.epochs`` (and ``train.steps_per_epoch``); TFX's ``train_args.num_steps`` is not used.
The index defaults to ``portable``: stock ops, loadable by stock TF Serving, and the one that works
where ScaNN's ops cannot load (TFX's TF 2.21 here).
"""
import glob
import os
import shutil
import tempfile

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

from tfrec_towers.config import Config, packaged
from tfrec_towers.export.exporter import export_run
from tfrec_towers.train import train


def _patterns(uris) -> str:
    """ExampleGen split URIs (directories, or globs such as ``.../Split-train/*``) -> one glob list."""
    out = []
    for uri in uris:
        out.append(os.path.join(uri, "*") if os.path.isdir(uri) else uri)
    return ",".join(out)


def run_fn(fn_args) -> None:
    custom = dict(fn_args.custom_config or {})
    config = Config.from_dict(custom["config"]) if custom.get("config") else Config.load(packaged("default"))
    config = config.with_overrides(list(custom.get("overrides") or []))
    train_files, eval_files = _patterns(fn_args.train_files), _patterns(fn_args.eval_files)
    run_dir = os.path.join(fn_args.model_run_dir, "run")
    metrics = train(config, train_files, run_dir, eval_files, train_files, verbose=2)
    print({k: metrics[k] for k in ("all_items",) if k in metrics})
    base = tempfile.mkdtemp(prefix="tfrec-towers-export-")
    try:
        version_dir = export_run(run_dir, base, "model", index=custom.get("index", "portable"),
                                 k=int(custom.get("k", 100)), items=train_files)
        os.makedirs(fn_args.serving_model_dir, exist_ok=True)
        for name in os.listdir(version_dir):
            src, dst = os.path.join(version_dir, name), os.path.join(fn_args.serving_model_dir, name)
            (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, dst)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert glob.glob(os.path.join(fn_args.serving_model_dir, "saved_model.pb")), "no SavedModel was written"
