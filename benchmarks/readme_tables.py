"""Copy the benchmarks' generated tables into the Markdown files, so that no figure there is typed by hand.

A Markdown file (``README.md``, ``benchmarks/README.md``, ``docs/*.md``: ``MARKDOWN``) marks each
generated block with the results file it comes from:

    <!-- generated from benchmarks/results/movielens.md: python benchmarks/readme_tables.py -->
    ... (replaced by that file's content) ...
    <!-- end of generated block -->

    python benchmarks/readme_tables.py           # rewrite the blocks of every file from the results files
    python benchmarks/readme_tables.py --check   # exit 1 naming each block that differs from its file

Each results file starts with a provenance line (``provenance()``): dataset, date, commit, machine.
"""
import argparse
import datetime
import glob
import os
import platform
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
#: The Markdown files whose generated blocks are rewritten and checked (issue 27: the benchmark sections
#: moved from the README to benchmarks/README.md, the reference sections to docs/).
MARKDOWN = ("README.md", "benchmarks/README.md", "docs/*.md", "serving/README.md", "pipelines/README.md")
BLOCK = re.compile(r"(<!-- generated from (\S+): python benchmarks/readme_tables.py -->\n)(.*?)(<!-- end of generated block -->)",
                   re.S)


def commit() -> str:
    """The checkout's short commit, with ``+changes`` when tracked files differ from it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def provenance(dataset: str, started: datetime.datetime) -> str:
    """The first line of a results file: what, when, from which code, on what machine."""
    return (f"{dataset}, {started:%Y-%m-%d}, commit {commit()}, {platform.platform()}, "
            f"{os.cpu_count()} CPUs")


def runs_provenance(doc: dict) -> str:
    """A merged results file's provenance: its runs' date range and commits, the machine, TensorFlow."""
    dates = sorted({r["date"][:10] for r in doc["runs"]})
    commits = sorted({r["commit"] for r in doc["runs"]})
    m = doc["machine"]
    return (f"{' to '.join(dict.fromkeys([dates[0], dates[-1]]))}, commit {', '.join(commits)}, {m['platform']}, "
            f"{m['cpu_count']} CPUs, TensorFlow {m['tensorflow']}")


def markdown_files():
    """The repository-relative paths of ``MARKDOWN``'s files that exist, in that order."""
    paths = []
    for pattern in MARKDOWN:
        for path in sorted(glob.glob(os.path.join(REPO, pattern))):
            rel = os.path.relpath(path, REPO)
            if rel not in paths:
                paths.append(rel)
    return paths


def render(readme: str):
    """(the Markdown text with every block replaced by its file, [paths of blocks that changed])."""
    changed = []

    def replace(match):
        path = os.path.join(REPO, match.group(2))
        with open(path, encoding="utf-8") as f:
            body = f.read().rstrip("\n") + "\n"
        if body != match.group(3):
            changed.append(match.group(2))
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(replace, readme), changed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only report blocks that differ from their files")
    args = p.parse_args(argv)
    found, failed = 0, False
    for rel in markdown_files():
        path = os.path.join(REPO, rel)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if not BLOCK.search(text):
            continue
        found += 1
        new, changed = render(text)
        if args.check:
            for block in changed:
                print(f"{rel}: the block from {block} differs from the file; run python benchmarks/readme_tables.py",
                      file=sys.stderr)
            failed = failed or bool(changed)
            continue
        if new != text:
            with open(path, "w", encoding="utf-8") as f:
                f.write(new)
        print(f"{rel}: {len(changed)} block(s) rewritten: {', '.join(changed) or 'none'}")
    if not found:
        print(f"no generated block in {', '.join(MARKDOWN)}", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
