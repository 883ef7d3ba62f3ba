"""Packaging: what a built wheel holds.

The wheel is built from a copy of the package's sources (``pip wheel --no-deps``), so no build/ directory
of the checkout can hide a missing file. The install of that wheel into a fresh virtual environment,
``pip check`` and a small ``demo`` with export run in ``.ci/run``.
"""
import glob
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from packaging.requirements import Requirement

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
