"""The Markdown files' benchmark tables are the results files, copied by benchmarks.readme_tables (issue 18);
since issue 27 the benchmark sections live in benchmarks/README.md and the reference sections in docs/."""
import os
import re
import shutil
import subprocess
import sys

from benchmarks import readme_tables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The Markdown files of issue 27's documentation move: README.md and the pages it links to.
PAGES = ("README.md", "benchmarks/README.md", "docs/guide.md", "docs/serving.md", "docs/operations.md",
         "docs/architecture.md", "serving/README.md", "pipelines/README.md")


def _read(rel):
    with open(os.path.join(REPO, rel), encoding="utf-8") as f:
        return f.read()


def test_readme_tables_equal_their_results_files():
    done = subprocess.run([sys.executable, "-m", "benchmarks.readme_tables", "--check"], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


def test_the_script_covers_the_new_places():
    files = readme_tables.markdown_files()
    assert {"README.md", "benchmarks/README.md", "docs/guide.md", "docs/architecture.md"} <= set(files)
    # every results file with a generated block is in benchmarks/README.md now
    blocks = re.findall(r"<!-- generated from (\S+): python -m benchmarks.readme_tables -->", _read("benchmarks/README.md"))
    assert {"benchmarks/results/movielens.md", "benchmarks/results/continuous.md", "benchmarks/results/gowalla.md",
            "benchmarks/results/ml100k_implicit.md", "benchmarks/results/scifact.md", "benchmarks/results/ablation.md",
            "benchmarks/results/serving.md"} <= set(blocks)


def test_check_names_a_stale_block_in_a_moved_file(tmp_path, monkeypatch):
    module = readme_tables
    for rel in ("benchmarks/README.md", "benchmarks/results/movielens.md"):
        os.makedirs(tmp_path / os.path.dirname(rel), exist_ok=True)
        shutil.copy(os.path.join(REPO, rel), tmp_path / rel)
    page = tmp_path / "benchmarks" / "README.md"
    text = page.read_text(encoding="utf-8")
    block = "<!-- generated from benchmarks/results/movielens.md: python -m benchmarks.readme_tables -->\n"
    page.write_text(text.replace(block, block + "stale line\n", 1), encoding="utf-8")
    # only the movielens block is kept, so that the other results files need not be copied
    kept = module.BLOCK.sub(lambda m: m.group(0) if "movielens.md" in m.group(2) else "", page.read_text(encoding="utf-8"))
    page.write_text(kept, encoding="utf-8")
    monkeypatch.setattr(module, "REPO", str(tmp_path))
    assert module.main(["--check"]) == 1
    assert module.main([]) == 0
    assert module.main(["--check"]) == 0
    assert "stale line" not in page.read_text(encoding="utf-8")


def _anchors(rel):
    """GitHub's anchors of a Markdown file's headings (lower case, punctuation dropped, spaces -> -)."""
    text = re.sub(r"```.*?```", "", _read(rel), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", text, flags=re.M)}


def test_relative_links_resolve():
    for rel in PAGES:
        text = re.sub(r"```.*?```", "", _read(rel), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            path = os.path.normpath(os.path.join(REPO, os.path.dirname(rel), file)) if file else os.path.join(REPO, rel)
            assert os.path.exists(path), f"{rel}: link {target} does not resolve"
            if anchor and path.endswith(".md"):
                assert anchor in _anchors(os.path.relpath(path, REPO)), f"{rel}: link {target}: no such heading"


def test_headline_figures_are_those_of_the_benchmarks_page():
    readme = _read("README.md")
    assert len(readme.splitlines()) <= 300
    table = readme.split("## Headline figures", 1)[1].split("\n## ", 1)[0]
    benchmarks = _read("benchmarks/README.md")
    rows = [line for line in table.splitlines() if line.startswith("| [")]
    assert len(rows) == 6
    for row in rows:
        for number in re.findall(r"\d+\.\d+", row.split("](", 1)[1]):
            assert number in benchmarks, f"README headline figure {number} is not in benchmarks/README.md: {row}"
