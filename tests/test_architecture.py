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
