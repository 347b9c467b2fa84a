"""Benchmark: celery_romancy against a plain Celery chain, measured in the same run.

    python -m benchmarks.run            # full run (about 5-10 minutes)
    python -m benchmarks.run --quick    # smaller numbers, for a smoke test

Needs PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379). Starts a real
``celery worker`` (prefork, concurrency 2) for both the project and the baseline.
Prints one ``name value unit`` line per figure, then a short table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
REDIS = "redis://127.0.0.1:6379"

figures: list[tuple[str, float, str]] = []


def report(name: str, value: float, unit: str) -> None:
    figures.append((name, value, unit))
    print(f"{name} {value:.4g} {unit}", flush=True)


def naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)  # as the history stores it


def aware(stored: datetime) -> float:
    return stored.replace(tzinfo=UTC).timestamp()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(began: float, spans: list[tuple[float, float]]) -> dict[str, float]:
    """Throughput since ``began`` and latency percentiles of (started, finished) spans."""
    latencies = [finished - started for started, finished in spans]
    ended = max(finished for _, finished in spans)
    return {
        "per_s": len(spans) / (ended - began),
        **{f"p{q}": percentile(latencies, q) for q in (50, 95, 99)},
    }


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


@contextmanager
def database() -> Iterator[str]:
    name = f"romancy_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def worker(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "benchmarks.bench_app",
                "worker",
                "-P",
                "prefork",
                "-c",
                "2",
                "-l",
                "INFO",
                "-Q",
                env["BENCH_QUEUE"],
                "-n",
                f"bench{uuid.uuid4().hex[:6]}@localhost",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: "ready." in log.read_text(errors="replace"), 60, "the worker")
        yield process
    finally:
        process.terminate()
        process.wait(timeout=60)


def rss_mb(pid: int) -> float:
    """Resident memory of a worker: its main process and its pool children."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        pids.extend(int(c) for c in children)
    total = 0
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


class Bench:
    def __init__(self, db_url: str, queue: str) -> None:
        os.environ.update(
            BENCH_DB=db_url,
            BENCH_QUEUE=queue,
            BENCH_BROKER=f"{REDIS}/12",
            BENCH_BACKEND=f"{REDIS}/13",
        )
        from benchmarks import bench_app

        self.bench_app = bench_app
        self.romancy = bench_app.romancy
        self.romancy.migrate()
        # Polling through its own connections, one statement each (autocommit), so that
        # it can be told apart from the project's statements.
        self.poll = sa.create_engine(
            db_url.replace("postgresql://", "postgresql+psycopg2://"),
            isolation_level="AUTOCOMMIT",
        )

    # Instances of one phase are the ones created since it began: a range on the
    # created_at index, however many rows the history holds (a LIKE on the id would
    # scan them all, and measure the benchmark's own polling).
    def completed(self, since: datetime) -> int:
        with self.poll.connect() as conn:
            return int(
                conn.execute(
                    sa.text(
                        "SELECT count(*) FROM romancy_instances WHERE created_at >= :since "
                        "AND status = 'completed'"
                    ),
                    {"since": naive_utc(since)},
                ).scalar_one()
            )

    def timings(self, since: datetime) -> list[tuple[float, float]]:
        with self.poll.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT created_at, updated_at FROM romancy_instances "
                    "WHERE created_at >= :since"
                ),
                {"since": naive_utc(since)},
            ).all()
        return [(aware(r.created_at), aware(r.updated_at)) for r in rows]

    def workflows(self, n: int, prefix: str) -> dict[str, float]:
        """Start ``n`` workflows as fast as possible; wait for all; throughput and latency."""
        since = datetime.now(UTC)
        began = time.time()
        for i in range(n):
            self.romancy.start_workflow("bench.saga3", f"o{i}", instance_id=f"{prefix}-{i}")
        wait_until(lambda: self.completed(since) == n, 600, f"{n} workflows")
        return summary(began, self.timings(since))

    def chains(self, n: int) -> dict[str, float]:
        from celery import chain

        app = self.bench_app
        began = time.time()
        sent = []
        for i in range(n):
            sent.append(
                (
                    time.time(),
                    chain(
                        app.plain_reserve.s(f"c{i}"), app.plain_charge.s(), app.plain_ship.s()
                    ).apply_async(),
                )
            )
        return summary(began, [(start, result.get(timeout=600)[2]) for start, result in sent])

    def single_latencies(self, runs: int, prefix: str) -> tuple[float, float]:
        from celery import chain

        app = self.bench_app
        since = datetime.now(UTC)
        for i in range(runs):
            instance_id = f"{prefix}-{i}"
            self.romancy.start_workflow("bench.saga3", f"s{i}", instance_id=instance_id)
            wait_until(lambda i=instance_id: self.status(i) == "completed", 60, "a workflow")
        ours = [done - start for start, done in self.timings(since)]
        plain = []
        for i in range(runs):
            start = time.time()
            result = chain(
                app.plain_reserve.s(f"p{i}"), app.plain_charge.s(), app.plain_ship.s()
            ).apply_async()
            plain.append(result.get(timeout=60)[2] - start)
        return statistics.median(ours), statistics.median(plain)

    def status(self, instance_id: str) -> str | None:
        with self.poll.connect() as conn:
            return conn.execute(
                sa.text("SELECT status FROM romancy_instances WHERE instance_id = :i"),
                {"i": instance_id},
            ).scalar()

    def seed_history(self, rows: int) -> None:
        """Fill the history with finished instances of 3 steps, 1,000,000 rows by default."""
        instances = rows // 3 + 1
        # A day old: before every phase's start, and out of its created_at range.
        at = naive_utc(datetime.now(UTC)) - timedelta(days=1)
        with self.poll.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO romancy_instances (instance_id, workflow_name, status, input_data,"
                    " output_data, epoch, step_takeovers, created_at, updated_at) "
                    "SELECT 'seed-' || g, 'bench.saga3', 'completed', '{}', '\"x\"', 3, 0,"
                    " :at, :at FROM generate_series(1, :n) g"
                ),
                {"n": instances, "at": at},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO romancy_history (instance_id, seq, step_id, kind, name, result,"
                    " attempt, created_at) "
                    "SELECT 'seed-' || (g / 3 + 1), g % 3, 'bench.step:' || (g % 3 + 1),"
                    " 'activity', 'bench.step', '\"r\"', 1, :at FROM generate_series(0, :n - 1) g"
                ),
                {"n": rows, "at": at},
            )
            conn.execute(sa.text("ANALYZE"))


def server_log() -> Path | None:
    logs = sorted(
        Path("/var/log/postgresql").glob("postgresql-*.log"), key=lambda p: p.stat().st_mtime
    )
    return logs[-1] if logs else None


def count_round_trips(bench: Bench, db_url: str, n: int) -> float | None:
    """Round trips per step on the worker side, as the PostgreSQL server saw them: every
    statement it logged for the benchmark database (BEGIN and COMMIT included) while an
    in-process worker ran ``n`` workflows, divided by the steps. None if the server's
    log cannot be read here."""
    from celery_romancy.testing import worker

    log = server_log()
    if log is None:
        return None
    name = sa.make_url(db_url).database
    with bench.poll.connect() as conn:
        conn.execute(sa.text(f"ALTER DATABASE \"{name}\" SET log_statement = 'all'"))
        conn.commit()
    romancy = bench.romancy
    romancy.storage.dispose()  # new connections pick the setting up
    since = datetime.now(UTC)
    for i in range(n):  # started before counting: starts are the client's work
        romancy.start_workflow("bench.saga3", f"rt{i}", instance_id=f"rt-{i}")
    mark = log.stat().st_size
    with worker(bench.bench_app.app, pool="threads", concurrency=2):
        wait_until(lambda: bench.completed(since) == n, 300, "the counted workflows")
    with log.open(errors="replace") as text:
        text.seek(mark)
        lines = [
            line
            for line in text
            if f"@{name} " in line
            and " statement: " in line
            and "created_at >=" not in line  # this script's own polling
        ]
    with bench.poll.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{name}" RESET log_statement'))
        conn.commit()
    return len(lines) / (3 * n)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 200 if args.quick else 1000
    seed_rows = 100_000 if args.quick else 1_000_000
    # RSS after this many workflows of the memory phase, and after this many in all.
    memory_runs = (300, 3000) if args.quick else (1000, 10_000)
    queue = f"bench-{uuid.uuid4().hex[:6]}"
    redis.Redis.from_url(f"{REDIS}/13").flushdb()
    log = Path("/tmp") / f"{queue}-worker.log"
    with database() as db_url:
        bench = Bench(db_url, queue)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with worker(env, log) as process:
            bench.workflows(50, "warm")
            bench.chains(50)
            baseline = bench.chains(n)
            ours = bench.workflows(n, "tp")
            report("saga3_workflows_per_s", ours["per_s"], "workflows/s")
            report("saga3_steps_per_s", ours["per_s"] * 3, "steps/s")
            for q in ("p50", "p95", "p99"):
                report(f"saga3_latency_{q}", ours[q] * 1000, "ms")
            report("chain_workflows_per_s", baseline["per_s"], "chains/s")
            for q in ("p50", "p95", "p99"):
                report(f"chain_latency_{q}", baseline[q] * 1000, "ms")
            report("throughput_ratio_vs_chain", ours["per_s"] / baseline["per_s"], "x")

            single, single_chain = bench.single_latencies(100, "single")
            report("single_latency_p50", single * 1000, "ms")
            report("single_chain_latency_p50", single_chain * 1000, "ms")
            report("single_latency_ratio_vs_chain", single / single_chain, "x")

            bench.workflows(memory_runs[0], "mem1")
            rss_small = rss_mb(process.pid)
            bench.workflows(memory_runs[1] - memory_runs[0], "mem2")  # now memory_runs[1] in all
            rss_large = rss_mb(process.pid)
            report(f"worker_rss_after_{memory_runs[0]}", rss_small, "MB")
            report(f"worker_rss_after_{memory_runs[1]}", rss_large, "MB")
            report("worker_rss_growth", rss_large / rss_small, "x")

            before = bench.workflows(n, "pre-seed")
            bench.seed_history(seed_rows)
            after = bench.workflows(n, "post-seed")
            report(f"throughput_after_{seed_rows}_history_rows", after["per_s"], "workflows/s")
            report("throughput_ratio_after_seed", after["per_s"] / before["per_s"], "x")
        trips = count_round_trips(bench, db_url, 100)
        if trips is not None:
            report("db_round_trips_per_step", trips, "round trips")
        bench.poll.dispose()
        bench.romancy.storage.dispose()
    print("\n| figure | value | unit |\n|---|---|---|")
    for name, value, unit in figures:
        print(f"| {name} | {value:.4g} | {unit} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
