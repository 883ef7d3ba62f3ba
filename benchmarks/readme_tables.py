"""Copy the benchmarks' generated tables into the Markdown files, so that no figure there is typed by hand.

A Markdown file (``README.md``, ``benchmarks/README.md``, ``docs/*.md``: ``MARKDOWN``) marks each
generated block with the results file it comes from:

    <!-- generated from benchmarks/results/movielens.md: python -m benchmarks.readme_tables -->
    ... (replaced by that file's content) ...
    <!-- end of generated block -->

    python -m benchmarks.readme_tables           # rewrite the blocks of every file from the results files
    python -m benchmarks.readme_tables --check   # exit 1 naming each block that differs from its file

Each results file starts with a provenance line (``benchmarks.harness.provenance``): dataset, date,
commit, machine.
"""
import glob
import os
import re
import sys

from benchmarks.harness import REPO, argument_parser

__all__ = ["MARKDOWN", "BLOCK", "markdown_files", "render", "main"]

#: The Markdown files whose generated blocks are rewritten and checked (issue 27: the benchmark sections
#: moved from the README to benchmarks/README.md, the reference sections to docs/).
MARKDOWN = ("README.md", "benchmarks/README.md", "docs/*.md", "serving/README.md", "pipelines/README.md")
BLOCK = re.compile(r"(<!-- generated from (\S+): python -m benchmarks\.readme_tables -->\n)(.*?)(<!-- end of generated block -->)",
                   re.S)


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
    p = argument_parser(__doc__)
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
                print(f"{rel}: the block from {block} differs from the file; run python -m benchmarks.readme_tables",
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
