"""The package's layers import only downwards, and the server only export's layout (issue 15): the
import contracts in .importlinter, checked by import-linter on the source tree."""
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lint_imports(*args):
    script = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    command = [script] if os.path.exists(script) else [shutil.which("lint-imports") or "lint-imports"]
    return subprocess.run(command + list(args), cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": REPO})


def test_import_contracts_are_kept():
    done = lint_imports()
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The checker sees this tree's imports: a contract that puts the schema above the jobs fails."""
    config = tmp_path / "upside_down.ini"
    config.write_text("[importlinter]\nroot_package = tfrec_towers\n\n[importlinter:contract:x]\nname = upside down\n"
                      "type = layers\nlayers =\n    tfrec_towers.config\n    tfrec_towers.train\n")
    done = lint_imports("--config", str(config))
    assert done.returncode != 0 and "tfrec_towers.train is not allowed to import tfrec_towers.config" in done.stdout


#: The deprecated top-level paths (issue 27) and where their names moved.
DEPRECATED = {
    "tfrec_towers.evaluate": ("tfrec_towers.evaluation.job", "tfrec_towers.evaluation.metrics",
                              "tfrec_towers.evaluation.embeddings"),
    "tfrec_towers.embeddings": ("tfrec_towers.evaluation.embeddings",),
    "tfrec_towers.embedding_report": ("tfrec_towers.evaluation.embedding_report",),
    "tfrec_towers.dual_augmented": ("tfrec_towers.towers.dual_augmented",),
    "tfrec_towers.generative_interaction": ("tfrec_towers.towers.generative_interaction",),
    "tfrec_towers.user_gate": ("tfrec_towers.towers.user_gate",),
}


def _imports(path):
    import ast

    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            if node.module == "tfrec_towers":
                yield from (f"tfrec_towers.{alias.name}" for alias in node.names)


def test_nothing_of_ours_imports_a_deprecated_path():
    """The old paths are for outside code only: the package, pipelines, benchmarks and tests use the new ones."""
    shims = {os.path.join(REPO, *name.split(".")) + ".py" for name in DEPRECATED}
    offenders = []
    for top in ("tfrec_towers", "pipelines", "benchmarks", "tests"):
        for folder, _, files in os.walk(os.path.join(REPO, top)):
            for name in files:
                path = os.path.join(folder, name)
                if name.endswith(".py") and path not in shims and name != "test_deprecated_paths.py":
                    offenders += [f"{os.path.relpath(path, REPO)}: {m}" for m in _imports(path) if m in DEPRECATED]
    assert not offenders, offenders


def test_the_metric_functions_load_without_tensorflow():
    code = ("import sys, tfrec_towers.evaluation.metrics, tfrec_towers.evaluation.scoring; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
