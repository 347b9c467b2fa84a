"""The benchmark's chart: throughput per round per system, and the latency percentiles
of each system's median round. Drawn at the end of a run (``--chart``) or from a saved
JSON document:

    python -m benchmarks.chart results.json docs/benchmark.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

LABELS = {"chain": "plain Celery chain", "saga3": "celery_romancy", "dbos": "DBOS queue"}
COLOURS = {"chain": "#7f7f7f", "saga3": "#1f77b4", "dbos": "#ff7f0e"}
PERCENTILES = ("p50", "p90", "p99")


def draw(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt

    rounds: dict[str, list[dict[str, float]]] = results["rounds"]
    systems = [system for system in LABELS if system in rounds]
    if not systems:
        raise ValueError("the results hold no throughput rounds (run without --only-fan-out)")
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    width = 0.8 / len(systems)

    count = len(rounds[systems[0]])
    for i, system in enumerate(systems):
        positions = [r + (i - (len(systems) - 1) / 2) * width for r in range(count)]
        values = [run["per_s"] for run in rounds[system]]
        bars = left.bar(positions, values, width, label=LABELS[system], color=COLOURS[system])
        left.bar_label(bars, fmt="%.0f", fontsize=8)
    left.set_xticks(range(count), [f"round {r + 1}" for r in range(count)])
    left.set_ylabel("workflows per second (higher is better)")
    left.set_title("Throughput per round")

    for i, system in enumerate(systems):
        median = median_round(rounds[system])
        positions = [q + (i - (len(systems) - 1) / 2) * width for q in range(len(PERCENTILES))]
        values = [median[q] * 1000 for q in PERCENTILES]
        bars = right.bar(positions, values, width, label=LABELS[system], color=COLOURS[system])
        right.bar_label(bars, fmt="%.0f", fontsize=8)
    right.set_xticks(range(len(PERCENTILES)), list(PERCENTILES))
    right.set_ylabel("start to completion, ms (lower is better)")
    right.set_title("Latency in the median round")

    n = results["workflows_per_round"]
    day = results["started"][:10]
    figure.suptitle(f"{n:,} three-step workflows started at once per round, {day}")
    handles, labels = left.get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(systems), frameon=False)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def median_round(runs: list[dict[str, float]]) -> dict[str, float]:
    """As the benchmark reports it: the round of median throughput, with its latencies."""
    return sorted(runs, key=lambda run: run["per_s"])[len(runs) // 2]


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: python -m benchmarks.chart RESULTS.json CHART.png", file=sys.stderr)
        return 2
    draw(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
