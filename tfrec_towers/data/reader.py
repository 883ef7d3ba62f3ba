"""TFRecord event logs -> tf.data pipelines, with a schema check and a corrupt-record policy.

Two ways through the data:

* ``scan``: one eager pass, file by file, that parses every record, checks numeric values are
  finite and hands parsed batches to a callback (vocabularies and statistics are computed this way).
  It knows the file and record number of every problem, so errors name them.
* ``make_dataset``: the training/eval pipeline (interleave, shuffle, batch, parse, prefetch), fully
  in TensorFlow so that input is never the bottleneck.

Corrupt records: ``policy="fail"`` (default) raises ``CorruptRecordError`` naming file and record;
``policy="skip"`` skips and counts them (``ScanReport.skipped``). A TFRecord frame that fails its
length or CRC check cannot be re-synchronised, so the rest of that file is unreadable: TensorFlow's
reader moves to the next file, and the report says so. TensorFlow's reader also stops quietly where
a GZIP/ZLIB stream is cut short (a truncated shard reads as a shorter, valid one), so the scan checks
each compressed file's stream to its end (trailer and CRC included) and reports a cut one the same way:
"the GZIP stream ends after record N".

TensorFlow's reader of an uncompressed file allocates a buffer of the length a frame's header
declares before it reads the data: a damaged header declaring 2^40 bytes crashes the process
(std::bad_alloc, a segfault), whatever the policy. So no uncompressed file reaches TensorFlow before
``frame_error`` has walked its frame headers (length, length CRC, and the declared length against
what is left of the file; the data is seeked over, not read): ``scan`` and ``make_dataset`` read
only the frames before a damaged one (``fail`` names file and record; ``skip`` counts the rest of
the file as lost).
"""
import dataclasses
import functools
import glob
import gzip
import os
import re
import struct
import zlib
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from tfrec_towers.choices import COMPRESSIONS, RECORD_POLICIES
from tfrec_towers.features.spec import select  # noqa: F401  (importable from here, where it was)
from tfrec_towers.record_crc import masked_crc32c

__all__ = ["CorruptRecordError", "POLICIES", "ScanReport", "check_policy", "check_schema", "compression_of",
           "frame_error", "in_memory_dataset", "list_files", "load_examples", "make_dataset", "record_dataset", "scan"]


#: The corrupt-record policies (``data.corrupt_records``; names in ``tfrec_towers.choices``): "fail" raises
#: ``CorruptRecordError`` naming file and record, "skip" drops the record and counts it (``ScanReport``);
#: ``check_policy`` refuses any other name, and ``scan`` / ``make_dataset`` act on the two.
POLICIES = RECORD_POLICIES


def check_policy(policy: str, what: str = "corrupt-record policy") -> str:
    """``policy`` if it is one of ``POLICIES``, else ValueError naming ``what`` and the known policies."""
    if policy not in POLICIES:
        raise ValueError(f"{what} must be one of {POLICIES}, got {policy!r}")
    return policy


def _reason(error: tf.errors.OpError) -> str:
    """The first line of a TensorFlow error, without its ``{{function_node ...}}`` prefix."""
    return re.sub(r"^\{\{[^}]*\}\}\s*", "", error.message.splitlines()[0])


class CorruptRecordError(ValueError):
    """A record that cannot be read or parsed; names the file and the record number (0-based)."""

    def __init__(self, path: str, record: int, reason: str):
        self.path, self.record, self.reason = path, record, reason
        super().__init__(f"{path}: record {record}: {reason}")


@dataclasses.dataclass
class ScanReport:
    files: int = 0
    records: int = 0
    #: (path, record number, reason) of each skipped record.
    skipped: List[tuple] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        text = f"read {self.records} records from {self.files} file(s)"
        if self.skipped:
            text += f"; skipped {len(self.skipped)} corrupt record(s):" + "".join(
                f"\n  {p}: record {r}: {why}" for p, r, why in self.skipped)
        return text


def list_files(patterns: Union[str, Sequence[str]]) -> List[str]:
    """Expand globs (comma-separated or a list); a pattern matching nothing is an error."""
    if isinstance(patterns, str):
        patterns = [p for p in patterns.split(",") if p]
    files = []
    for pattern in patterns:
        matched = sorted(tf.io.gfile.glob(pattern) if "://" in pattern else glob.glob(pattern))
        if not matched:
            raise FileNotFoundError(f"no file matches {pattern!r}")
        files.extend(matched)
    return files


def compression_of(path: str, compression: str = "auto") -> str:
    """'auto' -> GZIP for *.gz, none otherwise; or the explicit 'GZIP' / '' / 'ZLIB'."""
    if compression == "auto":
        return "GZIP" if path.endswith(".gz") else ""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS} ('': none), got {compression!r}")
    return compression


# --- TFRecord framing -----------------------------------------------------------------------------

def frame_error(path: str, compression: str = "", limit: Optional[int] = None) -> Optional[Tuple[int, str]]:
    """(record number, reason) of the first frame of an uncompressed TFRecord file whose header
    TensorFlow must not be given, or None when every frame (the first ``limit`` ones) is sound.

    A frame is ``uint64 length, uint32 masked_crc32c(length), data, uint32 masked_crc32c(data)``.
    TensorFlow allocates ``length`` bytes before reading the data, so a header declaring more than the
    file holds (a damaged length, or a file cut inside the frame) is refused here: only headers are
    read, the data is seeked over, so a file costs one 12-byte read per record (buffered). Compressed
    files are not walked (None): their stream is checked by ``stream_error``. Cached by path, size
    and modification time, so the scan and the training pipeline walk a file once.
    """
    if compression:
        return None
    if "://" in path:
        stat = tf.io.gfile.stat(path)
        size, mtime = stat.length, stat.mtime_nsec
    else:
        stat = os.stat(path)
        size, mtime = stat.st_size, stat.st_mtime_ns
    return _frame_error(path, size, mtime, limit)


@functools.lru_cache(maxsize=4096)
def _frame_error(path: str, size: int, mtime: int, limit: Optional[int]) -> Optional[Tuple[int, str]]:
    del mtime  # part of the cache key only
    opened = tf.io.gfile.GFile(path, "rb") if "://" in path else open(path, "rb", buffering=1 << 16)
    with opened as f:
        record = offset = 0
        while offset < size and (limit is None or record < limit):
            left = size - offset
            if left < 12:
                return record, (f"damaged frame: the file ends {left} byte(s) into the record's 12-byte header "
                                "(cut short)")
            f.seek(offset)
            header = f.read(12)
            if len(header) < 12:  # the file shrank while it was read
                return record, "damaged frame: the file ends inside the record's header (cut short)"
            length, crc = struct.unpack("<QI", header)
            if masked_crc32c(header[:8]) != crc:
                hint = ""
                if offset == 0 and header[:2] == b"\x1f\x8b":
                    hint = " (the file starts like a GZIP stream: is it compressed? data.compression: GZIP)"
                return record, "damaged frame: the length header fails its CRC" + hint
            if length > left - 16:
                return record, (f"damaged frame: the header declares {length} bytes of data, but only "
                                f"{max(left - 16, 0)} are left in the file (damaged length, or the file is cut short)")
            offset += 16 + length
            record += 1
    return None


def _frame_limits(files: Sequence[str], comp: str, policy: str) -> List[int]:
    """Per file, how many records TensorFlow may read (-1: all): those before a damaged frame. Under
    ``policy="fail"`` a damaged frame raises CorruptRecordError instead."""
    limits = []
    for path in files:
        damaged = frame_error(path, comp)
        if damaged is not None and policy == "fail":
            raise CorruptRecordError(path, damaged[0], f"{damaged[1]}; the rest of the file is unreadable")
        limits.append(-1 if damaged is None else damaged[0])
    return limits


def record_dataset(path: str, compression: str = "auto", limit: Optional[int] = None) -> tf.data.Dataset:
    """``tf.data.TFRecordDataset(path)`` (at most ``limit`` records) that stops before a damaged frame
    of an uncompressed file: for quick looks at a file's first records (schema, dtype, samples), where
    the scan reports the damage."""
    comp = compression_of(path, compression)
    damaged = frame_error(path, comp, limit)
    ds = tf.data.TFRecordDataset(path, compression_type=comp)
    stops = [n for n in (limit, damaged[0] if damaged else None) if n is not None]
    return ds.take(min(stops)) if stops else ds


# --- schema check ---------------------------------------------------------------------------------

_KIND = {tf.string: "bytes_list", tf.int64: "int64_list", tf.float32: "float_list"}


def check_schema(files: Sequence[str], parse_spec: Dict, compression: str = "auto", records: int = 20) -> int:
    """Check the first ``records`` records of each file against the parse spec, before training;
    returns how many records were checked (0: the files hold no record).

    Raises ValueError listing every feature that is missing (where required) or of another kind, once
    per feature and file, with the first record where it was seen and how many of the checked records
    share the problem. A damaged frame (``frame_error``) ends a file's check there (the scan reports it
    under the corrupt-record policy), unless no file has a record to check before one.
    """
    problems: Dict[tuple, list] = {}  # (file, feature, problem) -> [first record, count, detail]

    def note(path, name, problem, record, detail=""):
        seen = problems.setdefault((path, name, problem), [record, 0, detail])
        seen[1] += 1

    checked, damaged = {}, []
    for path in files:
        frame = frame_error(path, compression_of(path, compression), records)
        if frame is not None:
            damaged.append(f"{path}: record {frame[0]}: {frame[1]}")
        ds = record_dataset(path, compression, records)
        try:
            raws = [r.numpy() for r in ds]
        except tf.errors.OpError as e:  # the scan will say where; the schema check looks no further
            raws = []
            note(path, None, f"unreadable ({_reason(e)})", 0)
        checked[path] = len(raws)
        for i, raw in enumerate(raws):
            try:
                example = tf.train.Example.FromString(raw)
            except Exception:  # noqa: BLE001 - protobuf raises its own DecodeError
                note(path, None, "not a tf.train.Example", i)
                continue
            present = example.features.feature
            for name, feat in parse_spec.items():
                if name not in present:
                    if isinstance(feat, tf.io.FixedLenFeature) and feat.default_value is None:
                        note(path, name, "missing", i, f"; present: {sorted(present)}")
                    continue
                kind = present[name].WhichOneof("kind")
                if kind is not None and kind != _KIND[feat.dtype]:
                    note(path, name, f"{kind} but the spec expects {_KIND[feat.dtype]} ({feat.dtype.name})", i)
    if damaged and not sum(checked.values()):
        raise ValueError("no readable record to check against the feature spec:\n  " + "\n  ".join(damaged[:20]))
    lines = []
    for (path, name, problem), (first, count, detail) in problems.items():
        where = f"{path} (record {first}" + (f", and {count - 1} more of the first {checked[path]})" if count > 1 else ")")
        what = f"feature '{name}' is {problem} in" if name else f"{problem}:"
        lines.append(f"{what} {where}{detail}")
    if lines:
        shown = lines[:20] + ([f"... and {len(lines) - 20} more"] if len(lines) > 20 else [])
        raise ValueError("the logs do not match the feature spec:\n  " + "\n  ".join(shown))
    return sum(checked.values())


# --- the one-pass scan ----------------------------------------------------------------------------

def stream_error(path: str, compression: str) -> Optional[str]:
    """Why the GZIP/ZLIB stream of ``path`` is cut short or damaged, or None when it is whole.

    TensorFlow's TFRecord reader treats the end of a truncated compressed stream as the end of the
    file, so a shard cut at any point (inside the trailer too) would read as complete. Python's gzip
    and zlib check the stream to its end-of-stream marker, CRC and length.
    """
    if compression not in ("GZIP", "ZLIB"):
        return None
    try:
        with tf.io.gfile.GFile(path, "rb") as raw:
            if compression == "GZIP":
                with gzip.GzipFile(fileobj=raw) as stream:
                    while stream.read(1 << 20):
                        pass
                return None
            stream = zlib.decompressobj()
            while not stream.eof:
                chunk = raw.read(1 << 20)
                if not chunk:
                    return "the ZLIB stream ended before its end-of-stream marker"
                stream.decompress(chunk)
    except (EOFError, OSError, zlib.error) as e:
        return str(e) or type(e).__name__
    return None


def _finite_check(parsed: Dict[str, tf.Tensor], numeric: Sequence[str]) -> Optional[tuple]:
    """(feature, index in batch) of the first non-finite numeric value, or None."""
    for name in numeric:
        values = parsed[name].numpy()
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            return name, int(bad[0])
    return None


def scan(files: Sequence[str], parse_spec: Dict, on_batch: Optional[Callable[[Dict], None]] = None,
         compression: str = "auto", policy: str = "fail", batch_size: int = 4096,
         check_finite: Sequence[str] = (), progress: Optional[Callable[[str], None]] = None) -> ScanReport:
    """Parse every record of ``files`` once; ``on_batch(parsed)`` sees each batch of good records.

    ``check_finite`` names float features whose NaN/inf values are errors (named with file and record).
    """
    check_policy(policy)
    report = ScanReport(files=len(files))

    def bad(path, record, reason):
        if policy == "fail":
            raise CorruptRecordError(path, record, reason)
        report.skipped.append((path, record, reason))

    def parse(raws):
        try:
            return tf.io.parse_example(raws, parse_spec)
        except UnicodeDecodeError:
            # TensorFlow's error quotes the bytes of a record that is not an Example; when they are
            # not UTF-8, turning that message into a Python string fails instead.
            raise tf.errors.InvalidArgumentError(None, None, "could not parse the record as a tf.train.Example")

    def consume(path, start, raws):
        """Parse a batch; on failure, record by record so that the bad ones are named."""
        try:
            parsed = parse(raws)
            hit = _finite_check(parsed, check_finite)
            if hit is None:
                report.records += len(raws)
                if on_batch:
                    on_batch(parsed)
                return
        except tf.errors.InvalidArgumentError:
            pass
        if len(raws) == 1:
            try:
                parsed = parse(raws)
            except tf.errors.InvalidArgumentError as e:
                return bad(path, start, _reason(e))
            name, _ = _finite_check(parsed, check_finite)
            return bad(path, start, f"numeric feature '{name}' is NaN or inf "
                                    "(set 'impute: mean' on the feature to replace such values)")
        half = len(raws) // 2
        consume(path, start, raws[:half])
        consume(path, start + half, raws[half:])

    for n, path in enumerate(files):
        comp = compression_of(path, compression)
        done, broken = 0, None
        damaged = frame_error(path, comp)  # TensorFlow reads only the frames before a damaged one
        records = tf.data.TFRecordDataset(path, compression_type=comp)
        if damaged is not None:
            records = records.take(damaged[0])
        try:
            for raws in records.batch(batch_size):
                consume(path, done, raws)
                done += len(raws)
        except tf.errors.OpError as e:
            if isinstance(e, tf.errors.OutOfRangeError):
                raise
            # The batch holding the broken frame was lost: re-read it one record at a time, up to the
            # broken frame, and consume the good records in batches (one callback per record is slow).
            reader = iter(records.skip(done))
            pending = []
            while broken is None:
                try:
                    pending.append(next(reader))
                except StopIteration:
                    break
                except tf.errors.OpError as inner:
                    broken = inner
                if len(pending) == batch_size or (pending and broken is not None):
                    consume(path, done, tf.stack(pending))
                    done += len(pending)
                    pending = []
            if pending:
                consume(path, done, tf.stack(pending))
                done += len(pending)
        cut = stream_error(path, comp)
        if cut is not None:
            last = f"after record {done - 1} ({done} records read)" if done else "before its first record"
            bad(path, done, f"the {comp} stream ends {last}: {cut}; the rest of the file is lost")
        elif broken is not None:
            bad(path, done, f"{_reason(broken)} (the rest of the file is unreadable)")
        elif damaged is not None:
            bad(path, done, f"{damaged[1]}; the rest of the file is unreadable")
        if progress:
            progress(f"scanned {path}: {done} records ({n + 1}/{len(files)} files)")
    return report


# --- the tf.data pipeline -------------------------------------------------------------------------

def make_dataset(files: Sequence[str], parse_spec: Dict, prepare: Callable[[Dict], Dict], batch_size: int,
                 compression: str = "auto", policy: str = "fail", shuffle_buffer: int = 0,
                 seed: Optional[int] = None, keep: Optional[Callable[[Dict], tf.Tensor]] = None,
                 drop_remainder: bool = False, cache: bool = False, num_parallel_reads: int = 8,
                 shard: Optional[tuple] = None) -> tf.data.Dataset:
    """Files -> batches of model inputs: interleave, [cache], shuffle, batch, parse, ``prepare``, prefetch.

    ``keep(parsed) -> bool[batch]`` filters examples (e.g. positives only) before the final batching.
    ``shard=(num_shards, index)`` splits the files between workers; under a tf.distribute strategy
    TensorFlow's auto-sharding does that instead. With ``policy="skip"`` records are parsed one by one
    so that a bad one is dropped alone (slower; the scan counts and reports them).
    """
    check_policy(policy)
    comps = {compression_of(f, compression) for f in files}
    if len(comps) > 1:
        raise ValueError(f"files mix compressions {sorted(comps)}; give one glob per compression")
    comp = comps.pop()
    # Each file's frames are checked before TensorFlow reads it: only those before a damaged frame
    # are read (skip), or the damage is named now (fail).
    # (The pipeline is the plain one, a dataset of file names, unless some file is damaged.)
    limits = _frame_limits(files, comp, policy)
    damaged = any(n >= 0 for n in limits)
    ds = tf.data.Dataset.from_tensor_slices((list(files), tf.constant(limits, tf.int64)) if damaged else list(files))
    if shard:
        ds = ds.shard(*shard)
    if shuffle_buffer:
        ds = ds.shuffle(len(files), seed=seed)

    def read(path, limit=None):
        records = tf.data.TFRecordDataset(path, compression_type=comp)
        if limit is not None:
            records = records.take(limit)
        return records.ignore_errors() if policy == "skip" else records

    ds = ds.interleave(read, cycle_length=max(1, min(len(files), num_parallel_reads)),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle_buffer)
    if cache:
        # Before the shuffle, so that every epoch draws a new order from the cached records. They are
        # cached serialized: reading and decompressing is what the cache saves, while parsing whole
        # batches stays cheap (a parsed cache would have to unbatch and re-batch every epoch).
        ds = ds.cache()
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed)
    if policy == "skip":
        ds = ds.map(lambda r: tf.io.parse_single_example(r, parse_spec), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.ignore_errors().ragged_batch(batch_size, drop_remainder=drop_remainder and keep is None)
    else:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder and keep is None)
        ds = ds.map(lambda r: tf.io.parse_example(r, parse_spec), num_parallel_calls=tf.data.AUTOTUNE)
    if keep is not None:
        ds = ds.map(lambda parsed: select(parsed, keep(parsed)), num_parallel_calls=tf.data.AUTOTUNE).unbatch().ragged_batch(batch_size, drop_remainder)
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def load_examples(files: Sequence[str], parse_spec: Dict, compression: str = "auto", policy: str = "fail",
                  keep: Optional[Callable[[Dict], tf.Tensor]] = None, batch_size: int = 4096,
                  progress: Optional[Callable[[str], None]] = None):
    """Every record of ``files`` parsed (``scan``: same corrupt-record policy), the rows ``keep`` selects,
    as columns (dense [N, ...] or ragged) -> (columns, ScanReport): the data of ``in_memory_dataset``."""
    parts: Dict[str, List[tf.Tensor]] = {}

    def on_batch(parsed):
        for k, v in (parsed if keep is None else select(parsed, keep(parsed))).items():
            parts.setdefault(k, []).append(v)

    report = scan(files, parse_spec, on_batch, compression, policy, batch_size=batch_size,
                  progress=progress or (lambda m: None))
    return {k: tf.concat(v, axis=0) for k, v in parts.items()}, report


def in_memory_dataset(columns: Dict, prepare: Callable[[Dict], Dict], batch_size: int, shuffle: bool = True,
                      seed: Optional[int] = None, drop_remainder: bool = False) -> tf.data.Dataset:
    """Batches of examples held in memory (``load_examples``), with no work per example: each pass over
    the dataset (each epoch) draws a new permutation of all N rows (``stateless_shuffle`` keyed by
    ``Dataset.random``, re-drawn on every iteration), cuts it into batches of row indices and gathers
    each batch's rows, then ``prepare``. Shuffling is over the whole set, not within a buffer."""
    n = int(next(iter(columns.values())).shape[0])
    if not n:
        raise ValueError("no examples to batch")
    batches = n // batch_size if drop_remainder else -(-n // batch_size)

    def epoch(key):
        rows = tf.range(n, dtype=tf.int64)
        if shuffle:
            rows = tf.random.experimental.stateless_shuffle(rows, seed=tf.stack([key, tf.constant(0, tf.int64)]))
        return tf.data.Dataset.range(batches).map(
            lambda i: rows[i * batch_size:tf.minimum((i + 1) * batch_size, n)])

    ds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1).flat_map(epoch)
    ds = ds.map(lambda rows: prepare({k: tf.gather(v, rows) for k, v in columns.items()}),
                num_parallel_calls=tf.data.AUTOTUNE)
    # the length is known here (the random-keyed flat_map hides it): fit may then run several steps a call
    return ds.prefetch(tf.data.AUTOTUNE).apply(tf.data.experimental.assert_cardinality(batches))

