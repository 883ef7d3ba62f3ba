"""Packaging: what a built wheel holds and requires, the constraints file, and ScaNN as an optional extra.

The wheel is built from a copy of the package's sources (``pip wheel --no-deps``), so no build/ directory
of the checkout can hide a missing file. The install of that wheel into a fresh virtual environment
(no scann), ``pip check``, a small ``demo`` with export and ``--index scann`` run in ``.ci/run``.
"""
import glob
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXTRA = "pip install 'tfrec_towers[scann]'"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    for name in ("setup.py", "README.md"):
        shutil.copy(os.path.join(REPO, name), src / name)
    shutil.copytree(os.path.join(REPO, "tfrec_towers"), src / "tfrec_towers",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (path,) = glob.glob(str(out / "tfrec_towers-*.whl"))
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = [Requirement(line.split(":", 1)[1].strip())
                    for line in z.read(meta).decode().splitlines() if line.startswith("Requires-Dist:")]
    return names, requires


def test_wheel_holds_every_module_and_config(wheel):
    names, _ = wheel
    expected = set()
    for dirpath, dirnames, filenames in os.walk(os.path.join(REPO, "tfrec_towers")):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        rel = os.path.relpath(dirpath, REPO).replace(os.sep, "/")
        expected |= {f"{rel}/{f}" for f in filenames if f.endswith((".py", ".yaml"))}
    assert "tfrec_towers/export/exporter.py" in expected
    missing = sorted(expected - names)
    assert not missing, f"not in the wheel (a package without __init__.py?): {missing}"


def _reqs(requires, extra=None):
    out = {}
    for r in requires:
        in_extra = r.marker is not None and r.marker.evaluate({"extra": extra or ""})
        if (r.marker is None and extra is None) or (extra is not None and r.marker is not None and in_extra):
            out.setdefault(r.name.lower().replace("_", "-"), []).append(r)
    return out


def _allows(reqs, name, version):
    return all(r.specifier.contains(Version(version), prereleases=True) for r in reqs[name])


def test_core_takes_tf_2_20_and_2_21_without_scann(wheel):
    core = _reqs(wheel[1])
    assert "scann" not in core, "scann must be an extra: its ops need TF 2.20, TFX needs 2.21"
    for name, versions in {"tensorflow": ["2.20.0", "2.21.0"], "tf-keras": ["2.20.1", "2.21.0"],
                           "tensorflow-text": ["2.20.1", "2.21.1"],
                           "tensorflow-serving-api": ["2.19.1", "2.20.0", "2.21.0"]}.items():  # TFX: 2.19
        for v in versions:
            assert _allows(core, name, v), f"{name} {v} is excluded by {core[name]}"
        assert not _allows(core, name, "2.22.0"), f"{name}: untested 2.22 allowed by {core[name]}"


def test_scann_extra_brings_tf_2_20(wheel):
    extra = _reqs(wheel[1], "scann")
    assert [str(r.specifier) for r in extra["scann"]] == ["==1.4.2"]
    assert _allows(extra, "tensorflow", "2.20.0") and not _allows(extra, "tensorflow", "2.21.0")


def test_constraints_pin_the_verified_set_and_satisfy_setup(wheel):
    pins = {}
    with open(os.path.join(REPO, "constraints.txt"), encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                r = Requirement(line)
                (spec,) = r.specifier
                assert spec.operator == "==", line
                pins[r.name.lower().replace("_", "-")] = spec.version
    for name, version in {"tensorflow": "2.20.0", "tf-keras": "2.20.1", "tensorflow-text": "2.20.1",
                          "tensorflow-recommenders": "0.7.7", "scann": "1.4.2",
                          "tensorflow-serving-api": "2.20.0", "apache-beam": "2.77.0"}.items():
        assert pins.get(name) == version, (name, pins.get(name))
    for group in (None, "scann", "test"):
        for name, reqs in _reqs(wheel[1], group).items():
            assert name in pins, f"constraints.txt does not pin {name}"
            assert _allows({name: reqs}, name, pins[name]), f"{name}=={pins[name]} vs {reqs}"


def test_scann_index_without_scann_names_the_extra():
    # scann is installed here; block its import, as in an environment without the extra.
    code = textwrap.dedent("""
        import sys
        sys.modules["scann"] = None
        import numpy as np
        import tfrec_towers
        from tfrec_towers.export.indexes import build_index
        try:
            build_index("scann", np.array(["a", "b", "c"]), np.eye(3, dtype=np.float32), 2)
        except ValueError as e:  # the CLI prints ValueErrors as one line
            print("ERROR", isinstance(e, ImportError), e)
        else:
            print("NO ERROR")
        """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                          cwd=REPO)
    out = done.stdout.strip().splitlines()
    assert done.returncode == 0 and out and out[-1].startswith("ERROR True"), done.stdout + done.stderr[-3000:]
    assert EXTRA in out[-1], out[-1]
