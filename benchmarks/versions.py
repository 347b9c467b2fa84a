"""saga3 on two or more checkouts of the project, in alternating rounds: what a change
gained, measured against its baseline in the same run.

    git worktree add /tmp/before <commit>
    python -m benchmarks.versions /tmp/before . --rounds 5

Each checkout gets a database of its own, and in each round (each checkout going first
in turn) a fresh worker and client that import that checkout's ``celery_romancy``
(``PYTHONPATH``). Prints every round, then medians and each checkout's ratio to the
first: throughput, latency and CPU per workflow by part (as ``benchmarks.run``).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from pathlib import Path
from typing import Any

from benchmarks.run import fresh_round, migrated_databases, round_line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("trees", nargs="+", type=Path, help="checkouts; the first is the base")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-n", type=int, default=1000, help="workflows per round")
    args = parser.parse_args()
    trees = [tree.resolve() for tree in args.trees]
    results: dict[Path, list[dict[str, Any]]] = {tree: [] for tree in trees}
    with contextlib.ExitStack() as stack:
        # Each with this checkout's schema: the newest, if it is the newest checkout.
        urls = migrated_databases(stack, trees)
        for r in range(args.rounds):
            order = trees[r % len(trees) :] + trees[: r % len(trees)]
            for tree in order:
                result = fresh_round(urls[tree], args.n, f"v{r}", tree)
                results[tree].append(result)
                print(f"# round {r + 1} {tree}: {round_line(result)}", flush=True)
    base = trees[0]

    def median(tree: Path, key: str) -> float:
        return statistics.median(run.get(key, 0.0) for run in results[tree])

    parts = {k for runs in results.values() for run in runs for k in run if k.startswith("cpu_")}
    keys = ["per_s", "cpu", *sorted(parts)]
    print("\n| checkout | " + " | ".join(keys) + " | per_s ratio | cpu ratio |")
    print("|---" * (len(keys) + 3) + "|")
    for tree in trees:
        values = " | ".join(f"{median(tree, k):.2f}" for k in keys)
        print(
            f"| {tree} | {values} | {median(tree, 'per_s') / median(base, 'per_s'):.3f} "
            f"| {median(tree, 'cpu') / median(base, 'cpu'):.3f} |"
        )


if __name__ == "__main__":
    main()
