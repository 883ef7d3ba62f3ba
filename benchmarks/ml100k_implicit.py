"""MovieLens-100K as implicit feedback in the `user item item ...` layout of Gowalla (LightGCN split), a
second dataset of that format to check a configuration chosen on Gowalla before it is packaged.

Ratings >= 3 are interactions; each user's interactions are split at random (seeded) into 70% train,
10% valid and 20% test, at least one in train. Writes OUT/train.txt, valid.txt, test.txt (one line per
user: `user item item ...`, 0-based integer IDs in order of first appearance), which
``python -m benchmarks.gowalla --data-dir OUT`` reads like Gowalla (``--split valid``: train -> valid;
``--split test``: train+valid -> test):

    python -m benchmarks.ml100k_implicit --out /tmp/ml100k-implicit
    python -m benchmarks.gowalla --data-dir /tmp/ml100k-implicit --split valid --models als,default \\
        --output-json benchmarks/results/ml100k_implicit.json --output-md benchmarks/results/ml100k_implicit.md

The derived files are written outside the repository: MovieLens' terms forbid redistributing its data.
"""
import os
import sys

import numpy as np

from benchmarks.harness import add_data_flag, argument_parser, data_dir

__all__ = ["build", "main"]

SPLITS = (("train", 0.7), ("valid", 0.1), ("test", 0.2))


def build(data_dir: str, out: str, min_rating: int = 3, seed: int = 0) -> dict:
    """Writes the three files; returns their interaction counts."""
    rows = np.loadtxt(os.path.join(data_dir, "u.data"), dtype=np.int64)
    rows = rows[rows[:, 2] >= min_rating]
    users, items = {}, {}
    per_user = {}
    for u, i in rows[np.argsort(rows[:, 3], kind="stable"), :2].tolist():
        per_user.setdefault(users.setdefault(u, len(users)), []).append(items.setdefault(i, len(items)))
    rng = np.random.default_rng(seed)
    parts = {name: {} for name, _ in SPLITS}
    for u, its in per_user.items():
        its = [its[k] for k in rng.permutation(len(its))]
        n_train = max(1, int(round(0.7 * len(its))))
        n_valid = int(round(0.1 * len(its)))
        parts["train"][u], parts["valid"][u], parts["test"][u] = (its[:n_train], its[n_train:n_train + n_valid],
                                                                    its[n_train + n_valid:])
    os.makedirs(out, exist_ok=True)
    counts = {}
    for name, lists in parts.items():
        with open(os.path.join(out, f"{name}.txt"), "w", encoding="utf-8") as f:
            for u in sorted(lists):
                if lists[u]:
                    f.write(" ".join(map(str, [u] + lists[u])) + "\n")
        counts[name] = sum(len(v) for v in lists.values())
    return {"users": len(users), "items": len(items), **counts}


def main(argv=None):
    p = argument_parser(__doc__)
    add_data_flag(p, "ml-100k")
    p.add_argument("--out", required=True)
    p.add_argument("--min-rating", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(build(data_dir("ml-100k", args.data_dir), args.out, args.min_rating, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
