"""The package's public API is declared: every module users import lists its names in ``__all__``, and
each listed name exists. Importing the package changes no process-wide setting but Keras 2's."""
import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import importlib
import os
import pkgutil
import subprocess
import sys
import warnings

import pytest

from test_architecture import DEPRECATED

MODULES = sorted(m.name for m in pkgutil.walk_packages(tfrec_towers.__path__, "tfrec_towers.")
                 if m.name not in DEPRECATED)

#: Modules that must declare ``__all__`` (issue 27): the ones users, the CLI, pipelines, README.md and docs/ import.
DECLARED = ["tfrec_towers.config", "tfrec_towers.choices", "tfrec_towers.lazy_adam", "tfrec_towers.model",
            "tfrec_towers.run", "tfrec_towers.train", "tfrec_towers.warm_start", "tfrec_towers.mining",
            "tfrec_towers.features", "tfrec_towers.features.spec", "tfrec_towers.features.stats",
            "tfrec_towers.tasks", "tfrec_towers.negatives", "tfrec_towers.towers", "tfrec_towers.serving"]
DECLARED += [m for m in MODULES if m.rsplit(".", 1)[0] in (
    "tfrec_towers.tasks", "tfrec_towers.negatives", "tfrec_towers.export", "tfrec_towers.evaluation",
    "tfrec_towers.towers") and m.rsplit(".", 1)[1] != "__init__"]


def _import(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return importlib.import_module(name)


@pytest.mark.parametrize("name", MODULES)
def test_every_name_in_all_exists(name):
    module = _import(name)
    names = getattr(module, "__all__", [])
    assert len(names) == len(set(names)), f"{name}.__all__ repeats a name"
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"


@pytest.mark.parametrize("name", sorted(set(DECLARED)))
def test_public_modules_declare_all(name):
    assert getattr(_import(name), "__all__", None), f"{name} declares no __all__"


def test_import_leaves_tensorflow_logging_to_the_application():
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_USE_LEGACY_KERAS")}
    code = "import os, tfrec_towers; print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'), os.environ['TF_USE_LEGACY_KERAS'])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", "1"]


def test_cli_quiets_tensorflow_before_it_loads(monkeypatch):
    from tfrec_towers import cli

    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    cli._before_tensorflow(["config"])
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    cli._before_tensorflow(["config"])
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
