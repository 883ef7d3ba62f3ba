"""What the benchmark scripts share, so that each results file is made, described and merged one way.

A results file is a JSON document and its markdown (``benchmarks/results/NAME.{json,md}``, the
``--output-json`` / ``--output-md`` of ``add_common_flags``). The markdown's first line says what, when,
from which commit and on what machine (``provenance``, or ``runs_provenance`` for a file that several
invocations merged into: ``ResultsFile``); ``benchmarks.readme_tables`` copies the markdown into the docs.

This module loads no TensorFlow (``readme_tables`` and the tests import it without); ``fresh_start``
imports tf_keras when called, after the script's ``import tfrec_towers`` has chosen Keras 2.
"""
import argparse
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

__all__ = ["REPO", "RESULTS", "DATASETS", "log", "Timer", "fresh_start", "mean_std", "mean_std_by_key", "fmt",
           "comma_list", "seed_list", "data_dir", "argument_parser", "add_data_flag", "add_common_flags", "machine",
           "machine_line", "commit", "provenance", "runs_provenance", "run_info", "read_json", "write_text",
           "write_results", "add_run", "ResultsFile"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
#: Dataset folder name -> the environment variable that points at it (the ML-100K one is the library's
#: ``tfrec_towers.data.movielens.ENV_VAR``).
DATASETS = {"ml-100k": "TFREC_TOWERS_ML100K", "gowalla": "TFREC_TOWERS_GOWALLA", "scifact": "TFREC_TOWERS_SCIFACT"}
#: Packages whose version ``machine`` records when the script has loaded them.
VERSIONED = ("tensorflow", "tensorflow_recommenders", "implicit")


# --- running ------------------------------------------------------------------------------------------

def log(message: str) -> None:
    """A progress line, flushed at once: benchmarks run for hours, often into a file."""
    print(message, flush=True)


class Timer:
    """Wall and process-CPU seconds of a block (CPU time is less disturbed by other jobs)."""

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu


def fresh_start(seed: int) -> None:
    """Before each seeded run in a long process: a new Keras session, garbage collected, every RNG seeded."""
    import tf_keras as keras

    keras.backend.clear_session()
    gc.collect()
    keras.utils.set_random_seed(seed)


# --- statistics ---------------------------------------------------------------------------------------

def mean_std(values) -> tuple:
    """(mean, sample std) of the values that are not None: (None, None) without any, std 0.0 for one."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def mean_std_by_key(rows, keys) -> tuple:
    """({key: mean}, {key: std}) of each key over ``rows`` (dicts; a missing value counts as None)."""
    stats = {k: mean_std([row.get(k) for row in rows]) for k in keys}
    return {k: m for k, (m, _) in stats.items()}, {k: s for k, (_, s) in stats.items()}


def fmt(mean, std=None, digits: int = 3, suffix: str = "", n: int = None) -> str:
    """A table cell: ``mean ± std`` and ``suffix``, "–" without a mean. The std is shown for a mean over
    several values: ``n`` of them when given, else whenever it is not 0 or None (``mean_std``'s std of one)."""
    if mean is None:
        return "–"
    spread = n > 1 if n is not None else bool(std)
    return (f"{mean:.{digits}f} ± {std:.{digits}f}" if spread else f"{mean:.{digits}f}") + suffix


# --- flags --------------------------------------------------------------------------------------------

def comma_list(text: str, cast=str) -> list:
    """``"a,b,,c"`` -> ``[cast("a"), cast("b"), cast("c")]`` (empty items dropped)."""
    return [cast(x) for x in text.split(",") if x.strip()]


def seed_list(text: str) -> list:
    """``--seeds 0,1,2`` -> [0, 1, 2] (an argparse ``type``)."""
    return comma_list(text, int)


def data_dir(dataset: str, given: str = None) -> str:
    """``--data-dir`` if given, else ``$TFREC_TOWERS_...`` (``DATASETS``), else the checkout's
    ``../shared/datasets/<dataset>``: benchmarks run from a checkout, the library computes no such path."""
    return given or os.environ.get(DATASETS[dataset]) or os.path.join(REPO, "..", "shared", "datasets", dataset)


def argument_parser(doc: str) -> argparse.ArgumentParser:
    """A script's parser: its docstring's first paragraph above the options, the rest (usage lines) below."""
    summary, _, rest = doc.partition("\n\n")
    return argparse.ArgumentParser(description=summary, epilog=rest,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_data_flag(parser: argparse.ArgumentParser, dataset: str) -> None:
    """``--data-dir`` of ``dataset`` (a key of ``DATASETS``), None unless given: ``data_dir`` resolves it."""
    parser.add_argument("--data-dir", default=None, help=f"the {dataset} folder (default: ${DATASETS[dataset]} or "
                                                         f"<repo>/../shared/datasets/{dataset})")


def add_common_flags(parser: argparse.ArgumentParser, default_name: str, seeds: str = None,
                     dataset: str = None) -> None:
    """``--output-json`` / ``--output-md`` (default ``benchmarks/results/<default_name>.{json,md}``); with
    ``seeds`` (its default, e.g. "0,1,2") ``--seeds``, parsed into ints; with ``dataset``, ``add_data_flag``."""
    for kind in ("json", "md"):
        parser.add_argument(f"--output-{kind}", default=os.path.join(RESULTS, f"{default_name}.{kind}"),
                            help=f"results file (default: benchmarks/results/{default_name}.{kind})")
    if seeds is not None:
        parser.add_argument("--seeds", default=seeds, type=seed_list,
                            help=f"comma-separated integers (default: {seeds})")
    if dataset is not None:
        add_data_flag(parser, dataset)


# --- provenance ---------------------------------------------------------------------------------------

def machine() -> dict:
    """What a result was measured on: platform, processor, CPUs, Python, and the versions of ``VERSIONED``
    packages the script has loaded."""
    out = {"platform": platform.platform(), "processor": platform.processor() or None, "cpu_count": os.cpu_count(),
           "python": platform.python_version()}
    out.update({name: sys.modules[name].__version__ for name in VERSIONED if name in sys.modules})
    return out


def machine_line(m: dict) -> str:
    """A ``machine()`` dict as a provenance line shows it."""
    return f"{m['platform']}, {m['cpu_count']} CPUs"


def commit() -> str:
    """The checkout's short commit, with ``+changes`` when tracked files differ from it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def provenance(dataset: str, started: datetime.datetime) -> str:
    """The first line of a results file: what, when, from which code, on what machine."""
    return f"{dataset}, {started:%Y-%m-%d}, commit {commit()}, {machine_line(machine())}"


def runs_provenance(doc: dict) -> str:
    """A merged results file's provenance: its runs' date range and commits, the machine, TensorFlow."""
    dates = sorted({r["date"][:10] for r in doc["runs"] if r["date"][:4].isdigit()})
    commits = sorted({r["commit"] for r in doc["runs"] if r.get("commit")}) or ["not recorded"]
    m = doc["machine"]
    return (f"{' to '.join(dict.fromkeys([dates[0], dates[-1]]))}, commit {', '.join(commits)}, {machine_line(m)}, "
            f"TensorFlow {m['tensorflow']}")


def run_info(started: datetime.datetime, **fields) -> dict:
    """One invocation, as a merged results file lists it under ``runs``: its start, commit and ``fields``."""
    return {"date": started.isoformat(timespec="seconds"), "commit": commit(), **fields}


# --- results files ------------------------------------------------------------------------------------

def read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_text(path: str, text: str) -> None:
    """Write through a temporary file, so that an interrupted benchmark never leaves half a results file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def write_results(doc: dict, text: str, json_path: str, md_path: str) -> str:
    """The results JSON (values JSON does not know as strings) and its markdown ``text``; returns ``text``."""
    write_text(json_path, json.dumps(doc, indent=2, default=str))
    write_text(md_path, text)
    return text


def add_run(doc: dict, run: dict) -> None:
    """List ``run`` (``run_info``) under the document's ``runs`` once, however often the invocation writes."""
    runs = doc.setdefault("runs", [])
    if run["date"] not in [r["date"] for r in runs]:
        runs.append(run)


class ResultsFile:
    """An ``--output-json`` that invocations merge into, per split and model, and its ``--output-md``.

    Every ``merge`` reads the file as it is then, so that invocations in parallel processes (other
    seeds, other models) keep each other's results; with ``fresh`` the first one starts over instead.
    """

    def __init__(self, json_path: str, md_path: str, fresh: bool = False):
        self.json_path, self.md_path, self._fresh = json_path, md_path, fresh

    def merge(self, split: str, mine: dict, run: dict, summarize=None, config=None) -> dict:
        """The stored document with this invocation's ``mine`` (model -> summary with its ``seeds``) under
        ``results[split]``, ``run`` among its runs and this machine. With ``config`` (a seed's result -> its
        configuration), a model's stored seeds of our configuration are kept beside ours (ours win) and
        ``summarize``d again with them; without, our summary replaces the stored one."""
        doc = read_json(self.json_path) if os.path.exists(self.json_path) and not self._fresh else {"results": {}}
        self._fresh = False
        stored = doc["results"].setdefault(split, {})
        for model, summary in mine.items():
            if config is not None:
                ours = config(summary["seeds"][0])
                seeds = {s["seed"]: s for s in stored.get(model, {}).get("seeds", []) if config(s) == ours}
                seeds.update({s["seed"]: s for s in summary["seeds"]})
                summary = summarize([seeds[k] for k in sorted(seeds)])
            stored[model] = summary
        add_run(doc, run)
        doc["machine"] = machine()
        return doc

    def write(self, doc: dict, text: str) -> str:
        return write_results(doc, text, self.json_path, self.md_path)
