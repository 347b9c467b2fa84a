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
import json
import os
import statistics
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from benchmarks.run import database, settle, worker
from celery_romancy.storage import open_store


def one_round(tree: Path, url: str, n: int, prefix: str) -> dict[str, Any]:
    settle(url)
    queue = f"bench-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "PYTHONPATH": str(tree), "BENCH_DB": url, "BENCH_QUEUE": queue}
    with worker(env, Path("/tmp") / f"{queue}-worker.log", cwd=tree) as process:
        client = subprocess.run(
            [sys.executable, "-m", "benchmarks.run", "--client", str(n), prefix],
            cwd=tree,
            env={**env, "BENCH_WORKER_PID": str(process.pid)},
            capture_output=True,
            text=True,
            check=True,
        )
    result: dict[str, Any] = json.loads(client.stdout.splitlines()[-1])
    result["cpu"] = sum(v for k, v in result.items() if k.startswith("cpu_"))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("trees", nargs="+", type=Path, help="checkouts; the first is the base")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-n", type=int, default=1000, help="workflows per round")
    args = parser.parse_args()
    trees = [tree.resolve() for tree in args.trees]
    results: dict[Path, list[dict[str, Any]]] = {tree: [] for tree in trees}
    with contextlib.ExitStack() as stack:
        urls = {tree: stack.enter_context(database()) for tree in trees}
        for url in urls.values():
            store = open_store(url)
            store.engine  # noqa: B018 - the newest schema: every checkout's migrations
            store.dispose()
        for r in range(args.rounds):
            order = trees[r % len(trees) :] + trees[: r % len(trees)]
            for tree in order:
                result = one_round(tree, urls[tree], args.n, f"v{r}")
                results[tree].append(result)
                parts = ", ".join(
                    f"{k[4:]} {v:.2f}" for k, v in sorted(result.items()) if k.startswith("cpu_")
                )
                print(
                    f"# round {r + 1} {tree}: {result['per_s']:.1f}/s, p50 "
                    f"{result['p50'] * 1000:.0f} ms, cpu {result['cpu']:.2f} ms ({parts})",
                    flush=True,
                )
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
