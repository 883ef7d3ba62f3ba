"""Beam job: refresh the item index of an export with a new or changed catalog, distributed.

The distributed form of ``tfrec-towers refresh-items`` (``tfrec_towers.export.exporter.refresh_items``):

    catalog files (position = file index, record index)
        -> batches -> the latest version's ``item_embedding_examples`` signature (loaded once per worker)
        -> (position, item ID, embedding) -> first occurrence of each ID, in catalog order
        -> one worker: ``refresh_items`` with these embeddings -> BASE/NAME/<new timestamp>/

The embeddings come from the exported SavedModel of the latest version, whose weights are checked
(by fingerprint) to be the run's; the new version holds the same user tower and the rebuilt index,
and the job refuses if another version appeared meanwhile, so versions never mix.

    python pipelines/beam/refresh_items.py --base BASE --name NAME --items 'catalog/*.tfrecord.gz' \\
        -- --runner DirectRunner
"""
import argparse
import os
import sys
from typing import List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import tfrec_towers  # noqa: E402,F401  (Keras 2 before TensorFlow loads)

import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from tfrec_towers.export.exporter import read_metadata, refresh_items  # noqa: E402
from tfrec_towers.export.versions import latest_version  # noqa: E402
from tfrec_towers.features.spec import FeatureSpec  # noqa: E402


def _records(indexed_path):
    import tensorflow as tf

    f, path = indexed_path
    compression = "GZIP" if path.endswith(".gz") else ""
    for n, raw in enumerate(tf.data.TFRecordDataset(path, compression_type=compression)):
        yield (f, n), raw.numpy()


class _Embed(beam.DoFn):
    """A batch of (position, serialized item Example) -> (position, item ID, embedding)."""

    def __init__(self, version_dir: str):
        self.version_dir = version_dir

    def setup(self):
        import tensorflow as tf
        from tfrec_towers.serving.server import import_custom_ops

        import_custom_ops(log=lambda message: None)
        self.embed = tf.saved_model.load(self.version_dir).signatures["item_embedding_examples"]
        spec = FeatureSpec.from_dict(read_metadata(self.version_dir)["feature_spec"])
        self.item_id = spec.by_name[spec.item_id]
        self.parse_spec = {spec.item_id: self.item_id.parse_feature()}

    def process(self, batch):
        import tensorflow as tf

        positions, raws = zip(*batch)
        embeddings = self.embed(examples=tf.constant(raws))["embedding"].numpy()
        ids = self.item_id.prepare(tf.io.parse_example(list(raws), self.parse_spec)[self.item_id.name]).numpy()
        for position, item, embedding in zip(positions, ids, embeddings):
            yield position, item.decode("utf-8", "replace"), embedding


def _first_occurrences(rows):
    """Catalog order, each ID once (its first record), as the single-process embedding does."""
    seen, ids, embeddings = set(), [], []
    for _, item, embedding in sorted(rows, key=lambda r: r[0]):
        if item not in seen:
            seen.add(item)
            ids.append(item)
            embeddings.append(embedding)
    return np.array(ids), np.stack(embeddings)


def build_pipeline(pipeline, base_dir: str, name: str, items: str, batch_size: int = 1024, index: Optional[str] = None,
                   k: Optional[int] = None):
    import tensorflow as tf

    model_dir = os.path.join(os.path.abspath(base_dir), name)
    version = latest_version(model_dir)
    if version is None:
        raise FileNotFoundError(f"{model_dir} has no version to refresh: run `tfrec-towers export` first")
    files = sorted(tf.io.gfile.glob(items))
    if not files:
        raise FileNotFoundError(f"no file matches {items!r}")

    def finish(rows):
        yield refresh_items(base_dir, name, items, index=index, k=k, catalog=_first_occurrences(rows),
                            from_version=version)

    return (pipeline | "Files" >> beam.Create(list(enumerate(files)))
            | "Reshuffle" >> beam.Reshuffle()
            | "Read" >> beam.FlatMap(_records)
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=batch_size)
            | "Embed" >> beam.ParDo(_Embed(os.path.join(model_dir, str(version))))
            | "Gather" >> beam.combiners.ToList()
            | "Export" >> beam.FlatMap(finish))


def run(argv: Optional[List[str]] = None) -> str:
    """Command line: the job's options, then ``--`` and Beam's pipeline options. Returns the new version dir."""
    argv = list(sys.argv[1:] if argv is None else argv)
    beam_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the export base directory")
    p.add_argument("--name", required=True, help="the model name under it")
    p.add_argument("--items", required=True, help="glob of the new catalog's TFRecord files")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--index", choices=["portable", "scann", "brute"], help="default: the latest version's")
    p.add_argument("--k", type=int, help="default: the latest version's")
    args = p.parse_args(argv)
    model_dir = os.path.join(os.path.abspath(args.base), args.name)
    before = latest_version(model_dir)
    with beam.Pipeline(options=PipelineOptions(beam_args)) as pipeline:
        build_pipeline(pipeline, args.base, args.name, args.items, args.batch_size, args.index, args.k)
    after = latest_version(model_dir)
    if after == before:
        raise RuntimeError(f"the refresh wrote no new version under {model_dir}")
    new_dir = os.path.join(model_dir, str(after))
    print(f"wrote {new_dir}")
    return new_dir


if __name__ == "__main__":
    run()
