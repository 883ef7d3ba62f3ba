"""Beam job: raw event logs + user and item tables -> training tf.Examples.

The distributed form of ``tfrec_towers.data.event_logs.build_training_examples``, built from the same
per-row and per-user functions, so on the same inputs it writes byte-identical files (checked by
``tests/test_beam_pipelines.py`` on the DirectRunner)::

    read every events file (position = file index, row index; with --dates only the window's day
    partitions and their context, chosen by path) -> clean each row
        -> rejected: dead letter (JSON line with source, position, reason)
        -> accepted: group by user -> item_history, exposure_negatives, holdout -> (split, shard) groups
           -> each shard sorted and written as one GZIP TFRecord file, on the worker holding it
        -> training clicks per item -> popularity.csv
    item table -> items/, and metadata.json with the counts (and the --dates window)

The user and item tables are side inputs (a dict per worker): fine up to a few million rows; larger
tables want a CoGroupByKey join instead. Run on any runner::

    python pipelines/beam/training_examples.py --events 'logs/*.csv' --items items.csv --users users.csv \\
        --out /data/examples --holdout last -- --runner DirectRunner
    python pipelines/beam/training_examples.py --events 'logs/events/date=*/*.csv' --dates 2024-03-01:2024-03-07 \\
        --history-days 30 --items items.csv --out /data/examples-w09 -- --runner DirectRunner
"""
import argparse
import collections
import json
import os
import sys
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import tfrec_towers  # noqa: E402,F401  (Keras 2 before TensorFlow loads)

import apache_beam as beam  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from tfrec_towers.data import event_logs as E  # noqa: E402


def _read_file(f: int, inputs: E.Inputs, schema: E.LogSchema, users: Optional[Dict], items: Dict):
    """File index -> tagged outputs: ("ok", (user, (position, event))), ("dead", (position, line)) and,
    at the end, ("tally", (name, count)) for ``Inputs.metadata``."""
    tally = collections.Counter()
    for position, event, line in E.read_events(f, inputs, schema, users, items, tally):
        if event is None:
            yield beam.pvalue.TaggedOutput("dead", (position, line))
        else:
            yield event[schema.user_id], (position, event)
    for name, count in tally.items():
        yield beam.pvalue.TaggedOutput("tally", (name, count))


def _user_outputs(user_events, schema: E.LogSchema, users: Optional[Dict], items: Dict, context):
    user, events = user_events
    events = list(events)
    for split, shard, key, record in E.user_examples(user, events, schema, (users or {}).get(user), items, context):
        yield (split, shard), (key, record)
    for item, count in E.click_counts(events, schema, context).items():
        yield beam.pvalue.TaggedOutput("clicks", (item, count))


def _write_shard(split_shard_records, out_dir: str, schema: E.LogSchema):
    (split, shard), records = split_shard_records
    yield (split, shard), E.write_shard(E.shard_path(out_dir, split, shard, schema.num_shards), records)


def _finish(_, out_dir: str, schema: E.LogSchema, written, counts, dead, num_events, tally, items, inputs: E.Inputs):
    """The small remainder on one worker: empty shards, items, popularity, dead letter, metadata."""
    yield E.write_outputs(out_dir, schema, dict(written), items, dict(counts), list(dead), sum(num_events),
                          inputs.metadata(dict(tally)))


def build_pipeline(pipeline: beam.Pipeline, events: str, items: str, out_dir: str, users: Optional[str] = None,
                   schema: E.LogSchema = E.LogSchema(), dates: Optional[E.DateWindow] = None):
    """Adds the job to ``pipeline``; the tables are read, and the files listed, at construction time."""
    item_table = E.read_table(items, schema.item_id)
    user_table = E.read_table(users, schema.user_id) if users else None
    inputs = E.select_inputs(events, dates)
    p = pipeline
    parsed = (p | "Files" >> beam.Create(list(range(len(inputs.files))))
              | "Reshuffle" >> beam.Reshuffle()
              | "ReadAndClean" >> beam.FlatMap(_read_file, inputs, schema, user_table, item_table).with_outputs(
                  "dead", "tally", main="ok"))
    per_user = (parsed.ok | "ByUser" >> beam.GroupByKey()
                | "Examples" >> beam.FlatMap(_user_outputs, schema, user_table, item_table,
                                             inputs.context).with_outputs("clicks", main="records"))
    written = (per_user.records | "ByShard" >> beam.GroupByKey()
               | "WriteShards" >> beam.FlatMap(_write_shard, out_dir, schema))
    counts = per_user.clicks | "Clicks" >> beam.CombinePerKey(sum)
    tally = parsed.tally | "Tally" >> beam.CombinePerKey(sum)
    num_events = ((parsed.ok | "CountOk" >> beam.combiners.Count.Globally()),
                  (parsed.dead | "CountDead" >> beam.combiners.Count.Globally())) | "Events" >> beam.Flatten()
    return (p | "Start" >> beam.Create([None])
            | "Finish" >> beam.FlatMap(_finish, out_dir, schema, beam.pvalue.AsList(written),
                                       beam.pvalue.AsList(counts), beam.pvalue.AsList(parsed.dead),
                                       beam.pvalue.AsList(num_events), beam.pvalue.AsList(tally), item_table,
                                       inputs))


def run(argv: Optional[List[str]] = None) -> Dict:
    """Command line: the job's options, then ``--`` and Beam's pipeline options."""
    argv = list(sys.argv[1:] if argv is None else argv)
    beam_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    E.add_arguments(p)
    args = p.parse_args(argv)
    schema, dates = E.schema_from_args(args), E.window_from_args(args)
    with beam.Pipeline(options=PipelineOptions(beam_args)) as pipeline:
        build_pipeline(pipeline, args.events, args.items, args.out, args.users, schema, dates)
    with open(os.path.join(args.out, "metadata.json"), encoding="utf-8") as f:
        meta = json.load(f)
    print(json.dumps({k: v for k, v in meta.items() if k.startswith(("num_", "events_", "rejected"))}))
    return meta


if __name__ == "__main__":
    run()
