"""benchmarks/ is one package (issue 27): every script runs as ``python -m benchmarks.NAME`` and shares
``benchmarks.harness`` instead of reaching into another script's private names. No benchmark runs here."""
import ast
import datetime
import glob
import importlib
import json
import os
import re
import subprocess
import sys

import pytest

from benchmarks import harness

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(REPO, "benchmarks", "*.py"))
                 if os.path.basename(p) not in ("__init__.py", "harness.py"))
#: The scripts that write no results file of their own.
NO_RESULTS = ("ml100k_implicit", "readme_tables")


def _source(name):
    with open(os.path.join(REPO, "benchmarks", f"{name}.py"), encoding="utf-8") as f:
        return f.read()


def test_the_scripts_are_found():
    assert {"movielens", "gowalla", "gowalla_ablation", "scifact", "readme_tables"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_script_imports_as_a_module_and_answers_help(name):
    importlib.import_module(f"benchmarks.{name}")
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("usage:")
    if name not in NO_RESULTS:
        assert "--output-json" in done.stdout and "--output-md" in done.stdout


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_script_neither_edits_the_path_nor_takes_another_scripts_private_names(name):
    source = _source(name)
    assert "sys.path.insert" not in source
    modules, offenders = {}, []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            top = (node.module or "").split(".")[0]
            if node.level or top in SCRIPTS:  # relative, or a sibling by its bare name: loads it twice
                offenders.append(f"from {'.' * node.level}{node.module} import ...")
            elif top == "benchmarks":
                offenders += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
                modules.update({a.asname or a.name: a.name for a in node.names if a.name in SCRIPTS})
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in SCRIPTS:
                    offenders.append(f"import {alias.name}")
                elif alias.name.startswith("benchmarks.") and alias.asname:
                    modules[alias.asname] = alias.name
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and node.attr.startswith("_")):
            offenders.append(f"{node.value.id}.{node.attr}")
    assert not offenders, offenders


# --- the harness ----------------------------------------------------------------------------------

def test_mean_std_and_fmt():
    assert harness.mean_std([1.0, 2.0, 3.0, None]) == (2.0, 1.0)
    assert harness.mean_std([5]) == (5.0, 0.0)
    assert harness.mean_std([None]) == (None, None)
    mean, std = harness.mean_std_by_key([{"a": 1.0, "b": 2.0}, {"a": 3.0}], ["a", "b", "c"])
    assert mean == {"a": 2.0, "b": 2.0, "c": None} and std["a"] == pytest.approx(2 ** 0.5) and std["b"] == 0.0
    assert harness.fmt(0.12345, 0.0012) == "0.123 ± 0.001"
    assert harness.fmt(0.12345, 0.0012, 4) == "0.1235 ± 0.0012"
    assert harness.fmt(0.5, 0.0) == "0.500"  # one seed: mean_std's std is 0
    assert harness.fmt(1.5, 0.25, 2, "x") == "1.50 ± 0.25x"
    assert harness.fmt(None, 0.1, 2, "x") == "–"
    assert harness.fmt(0.5, 0.0, n=3) == "0.500 ± 0.000"  # several seeds that agree
    assert harness.fmt(0.5, 0.1, n=1) == "0.500"


def test_add_common_flags_defaults_and_seeds(tmp_path):
    p = harness.argument_parser("A benchmark.\n\n    python -m benchmarks.x")
    harness.add_common_flags(p, "x", seeds="0,1,2", dataset="gowalla")
    args = p.parse_args([])
    assert args.output_json == os.path.join(REPO, "benchmarks", "results", "x.json")
    assert args.output_md == os.path.join(REPO, "benchmarks", "results", "x.md")
    assert args.seeds == [0, 1, 2] and args.data_dir is None
    assert p.parse_args(["--seeds", "3,,4", "--output-json", str(tmp_path / "o.json")]).seeds == [3, 4]
    assert "python -m benchmarks.x" in p.format_help()
    bare = harness.argument_parser("A benchmark.")
    harness.add_common_flags(bare, "y")
    with pytest.raises(SystemExit):
        bare.parse_args(["--seeds", "1"])  # no --seeds where the script has none
    assert harness.comma_list("a,b,,c") == ["a", "b", "c"]


def test_data_dir_lookup(monkeypatch):
    from tfrec_towers.data.movielens import ENV_VAR

    assert harness.DATASETS["ml-100k"] == ENV_VAR
    monkeypatch.delenv("TFREC_TOWERS_GOWALLA", raising=False)
    assert harness.data_dir("gowalla") == os.path.join(REPO, "..", "shared", "datasets", "gowalla")
    monkeypatch.setenv("TFREC_TOWERS_GOWALLA", "/env/gowalla")
    assert harness.data_dir("gowalla") == "/env/gowalla"
    assert harness.data_dir("gowalla", "/given") == "/given"


def test_provenance_lines():
    started = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    m = harness.machine()
    assert {"platform", "processor", "cpu_count", "python"} <= set(m)
    machine = re.escape(f"{m['platform']}, {m['cpu_count']} CPUs")
    assert re.fullmatch(r"ML, 2026-01-02, commit \w+(\+changes)?, " + machine, harness.provenance("ML", started))
    assert harness.run_info(started, split="test") == {"date": "2026-01-02T03:04:05+00:00",
                                                       "commit": harness.commit(), "split": "test"}
    doc = {"machine": {"platform": "P", "cpu_count": 2, "tensorflow": "2.20.0"},
           "runs": [{"date": "2026-01-03T00:00:00", "commit": "b"}, {"date": "2026-01-01T00:00:00", "commit": "a"},
                    {"date": "unknown", "commit": "a"}]}
    assert harness.runs_provenance(doc) == "2026-01-01 to 2026-01-03, commit a, b, P, 2 CPUs, TensorFlow 2.20.0"
    doc["runs"] = [{"date": "2026-01-01T00:00:00"}]
    assert harness.runs_provenance(doc) == "2026-01-01, commit not recorded, P, 2 CPUs, TensorFlow 2.20.0"


def _summarize(rows):
    return {"seeds": rows, "mean": harness.mean_std_by_key(rows, ["v"])[0]}


def _seed(seed, value, config="a"):
    return {"seed": seed, "v": value, "config": config}


def test_results_file_merges_by_seed_and_configuration(tmp_path):
    path, md = str(tmp_path / "r.json"), str(tmp_path / "out" / "r.md")
    models = {"m": _summarize([_seed(0, 1.0), _seed(1, 2.0)]), "other": _summarize([_seed(0, 9.0)])}
    stored = {"results": {"test": models},
              "runs": [{"date": "2026-01-01T00:00:00", "commit": "a"}]}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(stored, f)
    results = harness.ResultsFile(path, md)
    run = {"date": "2026-02-01T00:00:00", "commit": "b"}
    doc = results.merge("test", {"m": _summarize([_seed(2, 6.0), _seed(1, 3.0)])}, run, _summarize,
                        lambda s: s["config"])
    assert [s["seed"] for s in doc["results"]["test"]["m"]["seeds"]] == [0, 1, 2]
    assert doc["results"]["test"]["m"]["mean"]["v"] == pytest.approx((1.0 + 3.0 + 6.0) / 3)  # seed 1: ours
    assert doc["results"]["test"]["other"] == stored["results"]["test"]["other"]
    assert doc["machine"] == harness.machine()
    assert results.write(doc, "table\n") == "table\n"
    with open(md, encoding="utf-8") as f:
        assert f.read() == "table\n"
    # another configuration keeps none of the stored seeds; the same run is listed once
    doc = results.merge("test", {"m": _summarize([_seed(5, 1.0, "b")])}, run, _summarize, lambda s: s["config"])
    assert [s["seed"] for s in doc["results"]["test"]["m"]["seeds"]] == [5]
    assert [r["commit"] for r in doc["runs"]] == ["a", "b"]
    # without a configuration, our summary replaces the stored one; other splits are added beside
    doc = results.merge("dev", {"m": {"seeds": [_seed(0, 7.0)]}}, run)
    assert doc["results"]["dev"] == {"m": {"seeds": [_seed(0, 7.0)]}} and "test" in doc["results"]
    # --fresh: the first merge starts over, the later ones read what it wrote
    fresh = harness.ResultsFile(path, md, fresh=True)
    doc = fresh.merge("test", {"n": _summarize([_seed(0, 1.0)])}, run)
    assert set(doc["results"]["test"]) == {"n"} and len(doc["runs"]) == 1
    fresh.write(doc, "")
    doc = fresh.merge("test", {"k": _summarize([_seed(0, 1.0)])}, run)
    assert set(doc["results"]["test"]) == {"n", "k"}
    assert harness.read_json(path)["results"]["test"].keys() == {"n"}


def test_gowalla_never_deletes_a_run_another_process_is_training(tmp_path):
    """Two benchmark invocations with one --workdir: the second is refused, naming the first, and the
    first's run directory stays (it used to be deleted under the training process)."""
    import types

    from benchmarks.gowalla import run_package
    from tfrec_towers.run import RunDir, RunInUseError

    run = tmp_path / "runs" / "valid" / "default-seed0"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom tfrec_towers.run import RunDir\n"
                               f"with RunDir({str(run)!r}).lock():\n    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        args = types.SimpleNamespace(workdir=str(tmp_path), set=[], curve=False)
        with pytest.raises(RunInUseError, match=f"pid {holder.pid} .*another run directory"):
            run_package("default", types.SimpleNamespace(name="valid", files={}), 0, args)
        assert (run / "train.lock.json").exists()
    finally:
        holder.kill()
        holder.wait()
    with RunDir(str(run)).lock():  # free once the holder is gone
        pass
