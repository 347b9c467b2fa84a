"""Benchmark: the retention purge of a large history while workflows run.

    python -m benchmarks.purge                       # 1,000,000 finished instances
    python -m benchmarks.purge --instances 100000    # smaller, for a smoke test

A PostgreSQL database of its own is seeded with finished instances (3 history rows
each, ended 60 days ago, a quarter each completed, failed, cancelled and continued).
A real ``celery worker`` (prefork, concurrency 2) runs ``bench.saga3`` workflows fed at
full speed (a backlog of ``IN_FLIGHT`` kept queued) the whole time. Phases alternate:
workflows alone, workflows while ``celery -A benchmarks.bench_app romancy purge`` deletes
half the seed, alone again, the purge of the other half, alone again. Prints the purge's
time and rows/s, and workflows/s alone and during each purge; then the query plan of a
purge batch. Figures, not a timed test.

Needs PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis
import sqlalchemy as sa

from benchmarks.run import (
    REDIS,
    ROOT,
    Bench,
    database,
    naive_utc,
    report,
    settle,
    wait_until,
    worker,
)
from celery_romancy.storage.purge import ended_roots

STATUSES = ("completed", "failed", "cancelled", "continued")
HALVES = (("completed", "failed"), ("cancelled", "continued"))
IN_FLIGHT = 100


def seed(engine: sa.Engine, instances: int) -> float:
    """Finished instances with 3 history rows each, ended 60 days ago (each a millisecond
    apart); returns the seconds it took."""
    began = time.monotonic()
    ended = naive_utc(datetime.now(UTC)) - timedelta(days=60)
    statuses = "(ARRAY['" + "','".join(STATUSES) + "'])[g % 4 + 1]"
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO romancy_instances (instance_id, workflow_name, status, input_data,"
                " output_data, version, created_at, updated_at) "
                f"SELECT 'old-' || g, 'bench.saga3', {statuses}, '{{}}', '\"x\"', 3,"
                " :ended - interval '1 minute', :ended + g * interval '1 millisecond'"
                " FROM generate_series(1, :n) g"
            ),
            {"n": instances, "ended": ended},
        )
        conn.execute(
            sa.text(
                "INSERT INTO romancy_history (instance_id, seq, step_id, kind, name, result,"
                " attempt, created_at) "
                "SELECT 'old-' || (g / 3 + 1), g % 3, 'bench.step:' || (g % 3 + 1),"
                " 'activity', 'bench.step', '\"r\"', 1, :ended FROM generate_series(0, :n - 1) g"
            ),
            {"n": instances * 3, "ended": ended},
        )
    return time.monotonic() - began


class Feeder:
    """Starts ``bench.saga3`` workflows for as long as it runs, keeping ``IN_FLIGHT`` of
    them started and not yet completed: the worker never waits for work."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.since = datetime.now(UTC)
        self.started = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            if self.started - self.bench.completed(self.since) >= IN_FLIGHT:
                time.sleep(0.05)
                continue
            for _ in range(IN_FLIGHT // 4):
                self.bench.romancy.start_workflow(
                    "bench.saga3", f"f{self.started}", instance_id=f"run-{self.started}"
                )
                self.started += 1

    def completed_between(self, start: datetime, end: datetime) -> int:
        with self.bench.poll.connect() as conn:
            return int(
                conn.execute(
                    sa.text(
                        "SELECT count(*) FROM romancy_instances WHERE status = 'completed'"
                        " AND updated_at >= :a AND updated_at < :b AND created_at >= :since"
                    ),
                    {"a": naive_utc(start), "b": naive_utc(end), "since": naive_utc(self.since)},
                ).scalar_one()
            )


def rate(feeder: Feeder, seconds: float) -> float:
    """Workflows completed per second over the next ``seconds``."""
    start = datetime.now(UTC)
    time.sleep(seconds)  # the window measured, not a wait for a condition
    return feeder.completed_between(start, datetime.now(UTC)) / seconds


def purge_half(feeder: Feeder, statuses: tuple[str, ...], env: dict[str, str]) -> dict[str, float]:
    """Run the purge command for ``statuses``; its time, rows and the workflows' rate."""
    args = [sys.executable, "-m", "celery", "-A", "benchmarks.bench_app", "romancy", "purge"]
    args += ["--older-than", "30d"]
    for status in statuses:
        args += ["--status", status]
    start = datetime.now(UTC)
    began = time.monotonic()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    took = time.monotonic() - began
    per_s = feeder.completed_between(start, datetime.now(UTC)) / took
    print("# " + done.stdout.strip().replace("\n", "\n# "), flush=True)
    lines = [line.split() for line in done.stdout.splitlines()]
    rows = sum(int(cells[1]) for cells in lines if cells and cells[0].startswith("romancy_"))
    return {"seconds": took, "rows": rows, "workflows_per_s": per_s}


def plan(bench: Bench) -> str:
    """EXPLAIN ANALYZE of a purge batch's reads: its roots, then their trees' members
    and outbox rows (the deletes go by the instance_id-first indexes)."""
    cutoff = naive_utc(datetime.now(UTC) - timedelta(days=30))
    roots = ended_roots(datetime.now(UTC) - timedelta(days=30), "completed", 1000, None)
    compiled = roots.with_for_update(skip_locked=True).compile(dialect=bench.poll.dialect)
    params = {k: cutoff if isinstance(v, datetime) else v for k, v in compiled.params.items()}
    explain = "EXPLAIN (ANALYZE, BUFFERS) "
    lines: list[str] = []
    # A connection with a transaction, rolled back: the DELETE explained deletes nothing.
    with bench.romancy.storage.engine.connect() as conn:
        lines += [row[0] for row in conn.exec_driver_sql(explain + str(compiled), params)]
        ids = [row[0] for row in conn.exec_driver_sql(str(compiled), params)]
        members = (
            "SELECT instance_id, root_instance_id, status, updated_at FROM romancy_instances"
            " WHERE root_instance_id = ANY(%(ids)s)"
        )
        outbox = (
            "SELECT instance_id FROM romancy_outbox WHERE status IN ('pending', 'in_progress')"
            " AND instance_id = ANY(%(ids)s)"
        )
        history = "DELETE FROM romancy_history WHERE instance_id = ANY(%(ids)s)"
        for sql in (members, outbox, history):
            lines += [row[0] for row in conn.exec_driver_sql(explain + sql, {"ids": ids})]
        conn.rollback()
    return "\n".join(line if len(line) < 160 else line[:150] + " ...}" for line in lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=30.0, help="each workflows-alone phase")
    args = parser.parse_args()
    queue = f"bench-{uuid.uuid4().hex[:6]}"
    redis.Redis.from_url(f"{REDIS}/13").flushdb()
    with database() as db_url:
        bench = Bench(db_url, queue)
        seeded = seed(bench.poll, args.instances)
        report("seed_instances", args.instances, "instances")
        report("seed_seconds", seeded, "s")
        settle(db_url)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        explained = plan(bench).replace("\n", "\n# ")
        print(f"# plan of a purge batch's SELECT, before the purge:\n# {explained}", flush=True)
        with worker(env, Path("/tmp") / f"{queue}-worker.log"):
            bench.workflows(50, "warm")
            feeder = Feeder(bench)
            feeder.thread.start()
            wait_until(lambda: bench.completed(feeder.since) >= IN_FLIGHT, 300, "a warm feeder")
            alone = [rate(feeder, args.seconds)]
            purges = []
            for statuses in HALVES:
                purges.append(purge_half(feeder, statuses, env))
                alone.append(rate(feeder, args.seconds))
            feeder.stop.set()
            feeder.thread.join()
        seconds = sum(p["seconds"] for p in purges)
        rows = sum(p["rows"] for p in purges)
        report("purge_seconds", seconds, "s")
        report("purge_rows", rows, "rows")
        report("purge_rows_per_s", rows / seconds, "rows/s")
        report("purge_instances_per_s", args.instances / seconds, "instances/s")
        for n, value in enumerate(alone):
            report(f"workflows_alone_{n + 1}_per_s", value, "workflows/s")
        for n, p in enumerate(purges):
            report(f"workflows_during_purge_{n + 1}_per_s", p["workflows_per_s"], "workflows/s")
        alone_median = statistics.median(alone)
        during = statistics.mean(p["workflows_per_s"] for p in purges)
        report("workflows_during_purge_vs_alone", during / alone_median, "x")
        with bench.poll.connect() as conn:
            left = conn.execute(
                sa.text("SELECT count(*) FROM romancy_instances WHERE instance_id LIKE 'old-%'")
            ).scalar_one()
        report("seed_instances_left", left, "instances")
        bench.poll.dispose()
        bench.romancy.storage.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
