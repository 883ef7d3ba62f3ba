"""From a config and TFRecord event logs to what training and evaluation read: the parse spec, the
one-pass statistics, the tf.data input pipeline, and log scans (each user's training items).

The input side of the data flow, below the model: jobs (``train``, ``evaluate``, export, mining)
import it, it imports only the schema (``config``, the feature spec) and the readers.
"""
import collections
from typing import Callable, Dict, Optional

import numpy as np
import tensorflow as tf

from tfrec_towers.choices import POINTWISE_LOSSES
from tfrec_towers.config import Config, check_sizes
from tfrec_towers.data import reader
from tfrec_towers.features.stats import FeatureStats, StatsAccumulator


__all__ = ["check_training_sizes", "compute_stats", "decode", "first_occurrences", "make_input", "parse_spec",
           "item_counts", "positives", "scan_logs", "training_batches", "user_histories"]


def parse_spec(config: Config, *extra: str):
    """The parse spec of all spec features, plus the label and any ``extra`` int64/string keys."""
    spec = config.features.parse_spec()
    if config.data.label:
        spec[config.data.label] = tf.io.FixedLenFeature([], tf.int64)
    for name in extra:
        spec.setdefault(name, tf.io.FixedLenFeature([], tf.string))
    return spec


def batch_keys(config: Config):
    """Log fields that training batches need besides the spec's features: the keys of per-key negatives."""
    n, keys = config.negatives, []
    if n.exposure:
        keys.append(n.exposure_key)
    if n.mined:
        keys.append(config.data.user_id)
    return [k for k in keys if k not in config.features.by_name]


def positives(config: Config) -> Optional[Callable]:
    label = config.data.label
    return (lambda parsed: parsed[label] >= 1) if label else None


def numeric_to_check(config: Config):
    return [f.name for f in config.features.features if f.finite_required]


def compute_stats(config: Config, files, progress=print, items_pattern: Optional[str] = None):
    """One pass over the training logs -> (FeatureStats, ScanReport of what was read and skipped);
    with ``data.idf_from: items`` a second pass over the catalog ``items_pattern`` gives the trigram IDF."""
    acc = StatsAccumulator(config.features, keep=positives(config), log_texts=config.data.idf_from == "logs")
    from_items = bool(acc.tfidf) and not acc.log_texts
    if from_items and not items_pattern:
        raise ValueError("data.idf_from: items computes the tfidf IDF over the catalog, but no items files "
                         "were given (--items)")
    # Sequences are cut to their max_len first: the accumulator's label filter and counts then cost
    # what max_len allows, however long a record's history (the model never sees more of it).
    report = reader.scan(files, parse_spec(config), lambda parsed: acc(config.features.cut_sequences(parsed)),
                         config.data.compression, config.data.corrupt_records,
                         check_finite=numeric_to_check(config), progress=progress)
    if from_items:
        scan_logs(config, reader.list_files(items_pattern), config.features.parse_spec("candidate"),
                  acc.add_catalog_texts, progress=progress)
    return acc.result(), report


def check_training_sizes(config: Config, stats: FeatureStats, files) -> None:
    """``config.check_sizes`` with what the stats pass found: the vocabularies' sizes (embedding
    tables), the training examples (in-batch logits) and records with their bytes on disk (the shuffle
    buffer). Called before the run directory is written: a size that cannot fit leaves no run behind."""
    def vocab_size(source):
        return len(stats.vocabulary(source))

    examples = stats.num_examples
    records = examples + (stats.num_filtered or 0)
    if config.task.loss in POINTWISE_LOSSES:  # every event trains
        examples = records
    check_sizes(config, vocab_size, examples=examples, records=records,
                data_bytes=sum(tf.io.gfile.stat(f).length for f in files))


def _at_most_records(size: int, stats: Optional[FeatureStats]) -> int:
    """``size`` (a batch or shuffle buffer), at most the records of the files ``stats`` describes:
    the same batches and the same order (a buffer holding every record shuffles them alike whatever
    its size), without TensorFlow allocating slots for records that do not exist (a batch size of
    10^8 took 10 GB and minutes before the first batch)."""
    if stats is None or stats.num_filtered is None:
        return size
    return max(1, min(size, stats.num_examples + stats.num_filtered))


def training_batches(config: Config, stats: Optional[FeatureStats]) -> Optional[int]:
    """Batches in one training epoch over the files ``stats`` describes, or None where that is not
    known exactly: no stats (or stats without the filtered count), a corrupt-record policy other
    than "fail" (skipped records would make the count a guess), or several workers (each reads its
    shard of the files, not all of them). ``make_input`` asserts it on the dataset (an epoch of another
    length is an error naming both), which lets ``fit`` run ``train.steps_per_execution`` steps per call."""
    if (stats is None or stats.num_filtered is None or config.data.corrupt_records != "fail"
            or config.train.strategy == "multi_worker"):
        return None
    examples = stats.num_examples + (stats.num_filtered if config.task.loss in POINTWISE_LOSSES else 0)
    return -(-examples // _at_most_records(config.train.batch_size, stats))


def make_input(config: Config, files, training: bool, batch_size: Optional[int] = None,
               stats: Optional[FeatureStats] = None) -> tf.data.Dataset:
    """The tf.data pipeline of ``files``. Given the stats of these files, the label filter (a costly
    per-example re-batching) is left out when their pass found no event to filter; pointwise losses
    train on every event, the label as target. With ``data.in_memory`` training reads the files once
    into memory and gathers shuffled batches there (``reader.in_memory_dataset``). A training
    pipeline of ``training_batches`` batches (or in memory) has that length set (``assert_cardinality``)."""
    d = config.data
    unfiltered = (stats is not None and stats.num_filtered == 0) or (training and config.task.loss in POINTWISE_LOSSES)
    keep = None if unfiltered else positives(config)
    spec = parse_spec(config, *(batch_keys(config) if training else []))
    batches = training_batches(config, stats) if training and batch_size in (None, config.train.batch_size) else None
    batch_size = _at_most_records(batch_size or config.train.batch_size, stats)
    if d.in_memory and training:
        columns, _ = reader.load_examples(files, spec, d.compression, d.corrupt_records, keep,
                                          batch_size=config.eval.batch_size)
        return reader.in_memory_dataset(columns, config.features.prepare, batch_size,
                                        shuffle=d.shuffle_buffer > 0, seed=config.train.seed)
    ds = reader.make_dataset(
        files, spec, config.features.prepare, batch_size,
        compression=d.compression, policy=d.corrupt_records,
        shuffle_buffer=_at_most_records(d.shuffle_buffer, stats) if training and d.shuffle_buffer else 0,
        seed=config.train.seed, keep=keep, cache=d.cache, num_parallel_reads=d.num_parallel_reads)
    return ds if batches is None else ds.apply(tf.data.experimental.assert_cardinality(batches))


def first_occurrences(ids: np.ndarray) -> np.ndarray:
    """Sorted indices of each distinct ID's first occurrence: a catalog keeps an item's first record."""
    _, first = np.unique(ids, return_index=True)
    return np.sort(first)


def decode(values) -> np.ndarray:
    """bytes/ints of a parsed tensor -> an array of str (IDs as the catalog and histories key them)."""
    return np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in np.asarray(values)])


def scan_logs(config: Config, files, spec, on_batch, keep=None, progress=print):
    """``reader.scan`` with the config's compression, corrupt-record policy, eval batch size and NaN
    check; ``on_batch`` sees the kept rows of each parsed batch; skipped records are reported."""
    def kept(parsed):
        on_batch(parsed if keep is None else reader.select(parsed, keep(parsed)))

    report = reader.scan(files, spec, kept, config.data.compression, config.data.corrupt_records,
                         batch_size=config.eval.batch_size, check_finite=numeric_to_check(config), progress=progress)
    if report.skipped:
        progress(report.summary())
    return report


def _scan_positive_ids(config: Config, pattern: str, keys, on_ids, progress) -> None:
    """``scan_logs`` over the positive events of ``pattern`` parsing only the string fields ``keys`` (the
    spec's item ID as the spec parses it) and the label; ``on_ids`` gets each batch's decoded ``keys``."""
    item_key = config.features.item_id
    spec = {key: (config.features.by_name[key].parse_feature() if key == item_key
                  else tf.io.FixedLenFeature([], tf.string)) for key in keys}
    if config.data.label:
        spec[config.data.label] = tf.io.FixedLenFeature([], tf.int64)
    def on_batch(parsed):
        on_ids(*[decode(parsed[key].numpy()) for key in keys])

    scan_logs(config, reader.list_files(pattern), spec, on_batch, keep=positives(config), progress=progress)


def item_counts(config: Config, pattern: str, progress=print) -> Dict[str, int]:
    """item ID -> its positive events in ``pattern`` (e.g. the last days' logs: an export's popularity
    prior). The logs need the spec's item ID and, where the config names one, the label; read with the
    config's compression and corrupt-record policy."""
    counts: Dict[str, int] = collections.Counter()
    _scan_positive_ids(config, pattern, [config.features.item_id], lambda items: counts.update(items.tolist()),
                       progress)
    return dict(counts)


def user_histories(config: Config, pattern: str, progress=print) -> Dict[str, set]:
    """user -> set of item IDs among the positive events of ``pattern`` (the training logs)."""
    history = collections.defaultdict(set)

    def on_ids(users, items):
        for u, i in zip(users, items):
            history[u].add(i)

    _scan_positive_ids(config, pattern, [config.data.user_id, config.features.item_id], on_ids, progress)
    return history
