"""Raw event logs + user and item tables -> training tf.Examples (the single-process path).

Input: events (CSV, Parquet or TFRecord tf.Example; one row per shown or clicked item: user, item,
timestamp, click label, request/exposure ID, any context fields), a user table and an item table.
Output, in the layout of ``writer.write_log_dataset``::

    OUT/train/part-0000i-of-0000N.tfrecord.gz  every event: its fields, the user's and item's fields,
                                              ``item_history`` (the user's clicked items strictly before
                                              it, most recent last) and, on clicks, ``exposure_negatives``
                                              (items of the same request shown and not clicked)
    OUT/test/...                              with ``holdout="last"``: each user's latest click
    OUT/items/part-00000-of-00001.tfrecord.gz the item table
    OUT/popularity.csv                        item_id, count (training clicks), frequency = count / total
                                              (the logQ probability), sampling_probability ~ count^0.75
    OUT/dead_letter.jsonl                     each rejected row, its source and position, and the reason
    OUT/metadata.json                         counts (rejected rows by reason), files; with ``--dates``,
                                              the window and the partitions read (see ``Inputs.metadata``)

Day partitions: with ``dates`` (``--dates FROM:TO``) every events file must sit under a Hive-style
``date=YYYY-MM-DD`` directory (at any depth). The partitions FROM..TO (inclusive) become examples; the
``history_days`` partitions before FROM (default: all of them) are read only as context, for
``item_history`` and ``exposure_negatives``, so an increment's examples get the histories a full run would
give them (and serving sees). No other file is opened; a context partition's rejected rows go to the dead
letter too. The directory decides an event's day, not its timestamp: an accepted event whose timestamp
(Unix seconds, UTC, as the timestamp feature reads it) falls on another day is kept and counted
(``dates.events_off_partition_day`` in metadata.json).

The per-row and per-user functions here are also the steps of the Beam job
(``pipelines/beam/training_examples.py``), so both paths write byte-identical files: users are
assigned to shards by a hash of their ID, and each shard is sorted by (user, timestamp, source
position). Nothing is dropped silently: a bad row goes to the dead letter with its reason.
"""
import collections
import csv
import dataclasses
import datetime
import hashlib
import json
import os
import re
from typing import Collection, Dict, FrozenSet, Iterable, Iterator, List, Optional, Sequence, Tuple

import tensorflow as tf

from tfrec_towers.data.writer import EVENT_KINDS, serialize

__all__ = ["DateWindow", "Inputs", "LogSchema", "add_arguments", "build_training_examples", "click_counts",
           "read_events", "read_rows", "read_table", "schema_from_args", "select_inputs", "shard_path", "user_examples",
           "window_from_args", "write_outputs", "write_shard"]


HOLDOUTS = ("none", "last")
KINDS = {**EVENT_KINDS, "exposure_negatives": "bytes"}


@dataclasses.dataclass(frozen=True)
class LogSchema:
    """Which columns of the raw logs hold what, and how examples are built."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    timestamp: str = "timestamp"
    label: Optional[str] = "label"        # click label (>= 1: clicked); None: every event is a click
    request_id: Optional[str] = "request_id"  # exposure/request ID grouping what was shown together
    history_len: int = 50                 # cap of item_history (most recent kept)
    holdout: str = "none"                 # "last": each user's latest click is a test example
    num_shards: int = 4

    def __post_init__(self):
        if self.holdout not in HOLDOUTS:
            raise ValueError(f"holdout must be one of {HOLDOUTS}, got {self.holdout!r}")
        if self.num_shards < 1 or self.history_len < 0:
            raise ValueError("num_shards must be >= 1 and history_len >= 0")


def add_arguments(parser) -> None:
    """The conversion's command-line options (``tfrec-towers examples`` and the Beam job share them)."""
    parser.add_argument("--events", required=True, help="glob of event files (.csv[.gz], .parquet, .tfrecord[.gz])")
    parser.add_argument("--items", required=True, help="glob of the item table")
    parser.add_argument("--users", help="glob of the user table")
    parser.add_argument("--out", required=True)
    for column in ("user_id", "item_id", "timestamp", "label", "request_id"):
        parser.add_argument(f"--{column.replace('_', '-')}-column", default=column,
                            help=f"column holding the {column.replace('_', ' ')}"
                                 + (" ('' if none)" if column in ("label", "request_id") else ""))
    parser.add_argument("--history-len", type=int, default=LogSchema.history_len)
    parser.add_argument("--holdout", choices=HOLDOUTS, default="none", help="last: each user's latest click -> test/")
    parser.add_argument("--num-shards", type=int, default=LogSchema.num_shards)
    parser.add_argument("--dates", metavar="FROM:TO",
                        help="day partitions (events under date=YYYY-MM-DD directories) whose events become "
                             "examples, inclusive ISO dates; 'FROM:' or ':TO' leave one end open, ':' takes all. "
                             "No other partition is opened, but those of --history-days")
    parser.add_argument("--history-days", type=int, metavar="N",
                        help="with --dates FROM:..., also read the N days of partitions before FROM, only as "
                             "context for item_history (never as examples); default: every earlier partition, "
                             "so histories match a full run's; 0: none")


def schema_from_args(args) -> LogSchema:
    return LogSchema(user_id=args.user_id_column, item_id=args.item_id_column, timestamp=args.timestamp_column,
                     label=args.label_column or None, request_id=args.request_id_column or None,
                     history_len=args.history_len, holdout=args.holdout, num_shards=args.num_shards)


def window_from_args(args) -> Optional["DateWindow"]:
    """``--dates`` and ``--history-days`` -> a ``DateWindow``, or None without ``--dates``."""
    if args.dates is None:
        if args.history_days is not None:
            raise ValueError("--history-days needs --dates FROM:TO")
        return None
    return DateWindow.parse(args.dates, args.history_days)


# --- reading any of the three formats ----------------------------------------------------------------

#: CSV cells of these columns hold "|"-separated lists.
LIST_COLUMNS = ("item_genres",)


def _example_row(raw: bytes) -> Dict:
    row = {}
    for name, feature in tf.train.Example.FromString(raw).features.feature.items():
        kind = feature.WhichOneof("kind")
        values = [v.decode("utf-8") if isinstance(v, bytes) else v for v in (getattr(feature, kind).value if kind else [])]
        row[name] = values[0] if len(values) == 1 else values
    return row


def _csv_row(row: Dict) -> Dict:
    return {k: v.split("|") if k in LIST_COLUMNS else v for k, v in row.items() if v not in ("", None)}


def _integer(value) -> Optional[int]:
    """An int from an int, an integral float or their text (exact for 19-digit timestamps); else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        pass
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def typed(row: Dict) -> Tuple[Dict, str]:
    """Numeric columns of the known schema (timestamp, label, item_year, ...) given as text -> numbers;
    (row, "") or (row, the reason a value is malformed)."""
    out = dict(row)
    for name, value in row.items():
        kind = KINDS.get(name)
        if kind in ("int64", "float") and isinstance(value, str):
            try:
                out[name] = float(value) if kind == "float" else _integer(value)
            except ValueError:
                out[name] = None
            if out[name] is None:
                return out, f"malformed {name}: {value!r} is not {'an integer' if kind == 'int64' else 'a number'}"
    return out, ""


def read_rows(path: str) -> Iterator[Dict]:
    """Rows of one CSV (header line), Parquet or TFRecord (tf.Example, GZIP if .gz) file, as dicts."""
    if path.endswith((".csv", ".csv.gz")):
        import gzip

        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                yield _csv_row(row)
    elif path.endswith(".parquet"):
        import pyarrow.parquet as pq

        for row in pq.read_table(path).to_pylist():
            yield {k: v for k, v in row.items() if v is not None}
    elif ".tfrecord" in path or path.endswith(".tfr"):
        from tfrec_towers.data import reader

        compression = "GZIP" if path.endswith(".gz") else ""
        for raw in reader.record_dataset(path, compression):  # stops before a damaged frame header
            yield _example_row(raw.numpy())
        damaged = reader.frame_error(path, compression)
        if damaged is not None:
            raise reader.CorruptRecordError(path, damaged[0], f"{damaged[1]}; the rest of the file is unreadable")
    else:
        raise ValueError(f"{path}: unknown format (expected .csv[.gz], .parquet or .tfrecord[.gz])")


def list_inputs(pattern: str) -> List[str]:
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no file matches {pattern!r}")
    return files


# --- day partitions ------------------------------------------------------------------------------

_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _iso_date(text: str) -> Optional[datetime.date]:
    """YYYY-MM-DD exactly (``date.fromisoformat`` also takes 20240105 and week dates); else None."""
    if not _ISO_DATE.fullmatch(text):
        return None
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        return None


@dataclasses.dataclass(frozen=True)
class DateWindow:
    """``--dates FROM:TO`` and ``--history-days``: the partitions read as examples, and as context."""

    start: Optional[datetime.date] = None   # None: from the first partition
    end: Optional[datetime.date] = None     # None: to the last one
    history_days: Optional[int] = None      # days of context before ``start``; None: all of them

    def __post_init__(self):
        if self.start and self.end and self.start > self.end:
            raise ValueError(f"--dates {self}: FROM is after TO")
        if self.history_days is not None and self.history_days < 0:
            raise ValueError(f"--history-days must be >= 0, got {self.history_days}")
        if self.history_days is not None and self.start is None:
            raise ValueError(f"--history-days needs a FROM date: with --dates {self} every earlier partition is "
                             "an example already")

    @classmethod
    def parse(cls, text: str, history_days: Optional[int] = None) -> "DateWindow":
        ends = text.split(":")
        dates = [_iso_date(end) if end else None for end in ends]
        if len(ends) != 2 or any(end and date is None for end, date in zip(ends, dates)):
            raise ValueError(f"--dates must be FROM:TO, inclusive dates YYYY-MM-DD (either may be empty), got {text!r}")
        return cls(dates[0], dates[1], history_days)

    def __str__(self):
        return f"{self.start or ''}:{self.end or ''}"

    def role(self, day: datetime.date) -> Optional[str]:
        """A partition's part: "examples", "context" or None (not read)."""
        if (self.start is None or day >= self.start) and (self.end is None or day <= self.end):
            return "examples"
        if self.start and day < self.start and (self.history_days is None
                                                or day >= self.start - datetime.timedelta(days=self.history_days)):
            return "context"
        return None


def partition_date(path: str) -> datetime.date:
    """The day of the ``date=YYYY-MM-DD`` directory holding ``path`` (at any depth), from its name alone."""
    names = [name for name in path.split("/")[:-1] if name.startswith("date=")]
    if not names:
        raise ValueError(f"--dates reads day partitions, but {path} is not under a date=YYYY-MM-DD directory")
    if len(names) > 1:
        raise ValueError(f"{path} is under {len(names)} date= directories ({', '.join(names)})")
    day = _iso_date(names[0][len("date="):])
    if day is None:
        raise ValueError(f"{path}: partition directory {names[0]!r} does not name a date (want date=YYYY-MM-DD)")
    return day


def _dates_text(days: Sequence[datetime.date]) -> str:
    days = sorted(set(days))
    if len(days) <= 10:
        return ", ".join(map(str, days))
    return f"{len(days)} dates from {days[0]} to {days[-1]}"


@dataclasses.dataclass(frozen=True)
class Inputs:
    """The events files to read, in order, and what each is for (the same list in both paths)."""

    files: Tuple[str, ...]
    days: Tuple[datetime.date, ...] = ()            # each file's partition; () without a window
    context: FrozenSet[int] = frozenset()           # indices of the files read only as context
    window: Optional[DateWindow] = None

    def metadata(self, tally: Dict[str, int]) -> Optional[Dict]:
        """metadata.json's ``dates`` (None without a window): the window, the partitions read, and counts
        of accepted events: ``context_events`` and ``events_off_partition_day`` (see the module docstring)."""
        if self.window is None:
            return None
        read = {role: sorted({str(d) for f, d in enumerate(self.days) if (f in self.context) == (role == "context")})
                for role in ("examples", "context")}
        return {"from": self.window.start and str(self.window.start), "to": self.window.end and str(self.window.end),
                "history_days": self.window.history_days, **read,
                **{name: tally.get(name, 0) for name in ("context_events", "events_off_partition_day")}}


def select_inputs(pattern: str, window: Optional[DateWindow] = None) -> Inputs:
    """The files matching ``pattern``; with a window, only its partitions, chosen by path before any is opened."""
    files = list_inputs(pattern)
    if window is None:
        return Inputs(tuple(files))
    days = [partition_date(path) for path in files]
    chosen = [(path, day, window.role(day)) for path, day in zip(files, days)]
    chosen = [c for c in chosen if c[2]]
    if not any(role == "examples" for _, _, role in chosen):
        raise ValueError(f"--dates {window} selects no partition of {pattern!r}, whose partitions are "
                         f"{_dates_text(days)}")
    return Inputs(tuple(c[0] for c in chosen), tuple(c[1] for c in chosen),
                  frozenset(f for f, c in enumerate(chosen) if c[2] == "context"), window)


def _utc_day(timestamp: int) -> Optional[datetime.date]:
    try:
        return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).date()
    except (OverflowError, OSError, ValueError):  # not Unix seconds
        return None


def read_table(pattern: str, key: str) -> Dict[str, Dict]:
    """A user or item table: key value -> row. A row without the key, or a repeated key, is an error."""
    table = {}
    for path in list_inputs(pattern):
        for n, row in enumerate(read_rows(path)):
            if key not in row:
                raise ValueError(f"{path} row {n}: no {key!r} column value")
            value = str(row[key])
            if value in table:
                raise ValueError(f"{path} row {n}: {key} {value!r} appears twice")
            row, problem = typed(row)
            if problem:
                raise ValueError(f"{path} row {n}: {problem}")
            table[value] = {**row, key: value}
    return table


# --- one event row -------------------------------------------------------------------------------

def clean_event(row: Dict, schema: LogSchema, users: Optional[Dict], items: Dict) -> Tuple[Optional[Dict], str]:
    """(the event with typed key fields, "") or (None, the reason it is rejected)."""
    for column in (schema.user_id, schema.item_id, schema.timestamp, schema.label):
        if column is not None and (column not in row or str(row[column]).strip() == ""):
            return None, f"missing {column}"
    event, problem = typed(row)
    if problem:
        return None, problem
    for column in (schema.timestamp, schema.label):  # whatever their names: integers
        if column is None:
            continue
        number = _integer(event[column])
        if number is None:
            return None, f"malformed {column}: {event[column]!r} is not an integer"
        event[column] = number
    event[schema.user_id], event[schema.item_id] = str(event[schema.user_id]), str(event[schema.item_id])
    if schema.request_id and schema.request_id in event:
        event[schema.request_id] = str(event[schema.request_id])
    if users is not None and event[schema.user_id] not in users:
        return None, f"unknown {schema.user_id}"
    if event[schema.item_id] not in items:
        return None, f"unknown {schema.item_id}"
    return event, ""


def read_events(f: int, inputs: Inputs, schema: LogSchema, users: Optional[Dict], items: Dict,
                tally: collections.Counter) -> Iterator[Tuple[Tuple[int, int], Optional[Dict], str]]:
    """The rows of ``inputs.files[f]``: (position, event, "") if accepted, (position, None, dead-letter line)
    if not; partitioned files add to ``tally`` (``Inputs.metadata``'s counts)."""
    path = inputs.files[f]
    for n, row in enumerate(read_rows(path)):
        event, reason = clean_event(row, schema, users, items)
        if event is None:
            yield (f, n), None, dead_letter(path, n, row, reason)
            continue
        if inputs.days:
            tally["context_events"] += f in inputs.context
            tally["events_off_partition_day"] += _utc_day(event[schema.timestamp]) != inputs.days[f]
        yield (f, n), event, ""


def dead_letter(source: str, position: int, row: Dict, reason: str) -> str:
    """One JSON line of the dead-letter output."""
    return json.dumps({"source": source, "row": position, "reason": reason,
                       "record": {k: v if isinstance(v, (int, float, str, list)) else str(v) for k, v in row.items()}},
                      sort_keys=True)


# --- one user's events -> examples -----------------------------------------------------------------

def shard_of(user: str, num_shards: int) -> int:
    """Stable across processes and runners (unlike Python's salted ``hash``)."""
    return int.from_bytes(hashlib.sha1(user.encode("utf-8")).digest()[:8], "big") % num_shards


def _clicked(event: Dict, schema: LogSchema) -> bool:
    return schema.label is None or event[schema.label] >= 1


def user_examples(user: str, events: Iterable[Tuple[Tuple, Dict]], schema: LogSchema, user_row: Optional[Dict],
                  items: Dict, context: Collection[int] = frozenset()) -> List[Tuple[str, int, Tuple, bytes]]:
    """One user's events ((source position, event) pairs) -> [(split, shard, sort key, tf.Example bytes)].

    Events are ordered by (timestamp, source position). ``item_history``: the user's training clicks
    with a strictly earlier timestamp, most recent last, at most ``history_len``. ``exposure_negatives``
    (clicks only): the request's items shown and not clicked, first occurrence order. Events of the files
    in ``context`` (earlier day partitions) take part in both but are no example (nor the holdout).
    """
    ordered = sorted(events, key=lambda pe: (pe[1][schema.timestamp], pe[0]))
    example = [position[0] not in context for position, _ in ordered]
    clicks = [i for i, (_, e) in enumerate(ordered) if example[i] and _clicked(e, schema)]
    test = {clicks[-1]} if schema.holdout == "last" and len(clicks) >= 2 else set()
    unclicked = collections.defaultdict(list)
    if schema.request_id:
        for _, e in ordered:
            request = e.get(schema.request_id)
            if request is not None and not _clicked(e, schema) and e[schema.item_id] not in unclicked[request]:
                unclicked[request].append(e[schema.item_id])
    shard = shard_of(user, schema.num_shards)
    out, history, pending = [], [], []  # pending: clicks of the current timestamp, not yet history
    current = None
    for i, (position, event) in enumerate(ordered):
        if event[schema.timestamp] != current:
            history.extend(pending)
            pending, current = [], event[schema.timestamp]
        if _clicked(event, schema) and i not in test:
            pending.append(event[schema.item_id])
        if not example[i]:
            continue
        row = {**(user_row or {}), **items[event[schema.item_id]], **event}
        row["item_history"] = history[-schema.history_len:] if schema.history_len else []
        if _clicked(event, schema) and schema.request_id:
            row["exposure_negatives"] = [x for x in unclicked.get(event.get(schema.request_id), [])
                                         if x != event[schema.item_id]]
        out.append(("test" if i in test else "train", shard, (user, event[schema.timestamp], position),
                    serialize(row, KINDS)))
    return out


# --- writing -------------------------------------------------------------------------------------

def shard_path(out_dir: str, split: str, shard: int, num_shards: int) -> str:
    return os.path.join(out_dir, split, f"part-{shard:05d}-of-{num_shards:05d}.tfrecord.gz")


def write_shard(path: str, keyed_records: Iterable[Tuple[Tuple, bytes]]) -> int:
    """Records sorted by key into one GZIP TFRecord file (deterministic bytes); returns the count."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    records = sorted(keyed_records, key=lambda kr: kr[0])
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
        for _, record in records:
            w.write(record)
    return len(records)


def popularity_csv(counts: Dict[str, int]) -> str:
    """item_id,count,frequency,sampling_probability lines, by item ID."""
    total = sum(counts.values()) or 1
    smoothed = {item: c ** 0.75 for item, c in counts.items()}
    norm = sum(smoothed.values()) or 1.0
    lines = ["item_id,count,frequency,sampling_probability"]
    lines += [f"{item},{counts[item]},{counts[item] / total:.9g},{smoothed[item] / norm:.9g}" for item in sorted(counts)]
    return "\n".join(lines) + "\n"


def write_outputs(out_dir: str, schema: LogSchema, written: Dict[Tuple[str, int], int], items: Dict,
                  counts: Dict[str, int], dead: List[Tuple[Tuple, str]], num_events: int,
                  dates: Optional[Dict] = None) -> Dict:
    """Everything after the shards, shared by both paths: empty files for shards that got no user,
    the item table, popularity, dead letter, metadata (returned). ``written``: (split, shard) -> records;
    ``dates``: ``Inputs.metadata``."""
    splits = ["train", "test"] if schema.holdout != "none" else ["train"]
    totals = collections.Counter()
    for split in splits:
        for shard in range(schema.num_shards):
            if (split, shard) not in written:
                write_shard(shard_path(out_dir, split, shard, schema.num_shards), [])
            totals[split] += written.get((split, shard), 0)
    write_shard(os.path.join(out_dir, "items", "part-00000-of-00001.tfrecord.gz"),
                [((key,), serialize(row, KINDS)) for key, row in items.items()])
    with open(os.path.join(out_dir, "popularity.csv"), "w", encoding="utf-8") as f:
        f.write(popularity_csv(counts))
    with open(os.path.join(out_dir, "dead_letter.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for _, line in sorted(dead))
    reasons = collections.Counter(json.loads(line)["reason"].split(":")[0] for _, line in dead)
    meta = {"events_read": num_events, "events_rejected": len(dead), "rejected_by_reason": dict(sorted(reasons.items())),
            **{f"num_{split}": totals[split] for split in splits}, "num_items": len(items),
            "schema": dataclasses.asdict(schema),
            "files": {**{s: os.path.join(os.path.abspath(out_dir), s, "part-*.tfrecord.gz") for s in splits},
                      "items": os.path.join(os.path.abspath(out_dir), "items", "part-*.tfrecord.gz")}}
    if dates is not None:
        meta["dates"] = dates
    with open(os.path.join(out_dir, "metadata.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
    return meta


def build_training_examples(events: str, items: str, out_dir: str, users: Optional[str] = None,
                            schema: LogSchema = LogSchema(), progress=print,
                            dates: Optional[DateWindow] = None) -> Dict:
    """The whole conversion in this process (see the module docstring); returns the metadata."""
    item_table = read_table(items, schema.item_id)
    user_table = read_table(users, schema.user_id) if users else None
    inputs = select_inputs(events, dates)
    by_user, dead, num_events, tally = collections.defaultdict(list), [], 0, collections.Counter()
    for f, path in enumerate(inputs.files):
        for position, event, line in read_events(f, inputs, schema, user_table, item_table, tally):
            num_events += 1
            if event is None:
                dead.append((position, line))
            else:
                by_user[event[schema.user_id]].append((position, event))
        progress(f"read {path}")
    shards, counts = collections.defaultdict(list), collections.Counter()
    for user, user_events in by_user.items():
        for split, shard, key, record in user_examples(user, user_events, schema, (user_table or {}).get(user),
                                                        item_table, inputs.context):
            shards[(split, shard)].append((key, record))
        counts.update(click_counts(user_events, schema, inputs.context))
    written = {(split, shard): write_shard(shard_path(out_dir, split, shard, schema.num_shards), records)
               for (split, shard), records in shards.items()}
    meta = write_outputs(out_dir, schema, written, item_table, counts, dead, num_events, inputs.metadata(tally))
    progress(f"wrote {out_dir}: {json.dumps({k: v for k, v in meta.items() if k.startswith(('num_', 'events_'))})}")
    return meta


def click_counts(user_events: Sequence[Tuple[Tuple, Dict]], schema: LogSchema,
                 context: Collection[int] = frozenset()) -> collections.Counter:
    """Training clicks per item among one user's events (context files' and the held-out last click excluded)."""
    ordered = sorted(user_events, key=lambda pe: (pe[1][schema.timestamp], pe[0]))
    clicks = [e[schema.item_id] for p, e in ordered if p[0] not in context and _clicked(e, schema)]
    if schema.holdout == "last" and len(clicks) >= 2:
        clicks = clicks[:-1]
    return collections.Counter(clicks)
