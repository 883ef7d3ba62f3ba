"""The README's benchmark tables are the results files, copied by benchmarks/readme_tables.py (issue 18)."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_tables_equal_their_results_files():
    done = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "readme_tables.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
