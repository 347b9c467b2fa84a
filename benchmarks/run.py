"""Benchmark: celery_romancy against a plain Celery chain, measured in the same run.

    python -m benchmarks.run            # full run (about 20 minutes, 5 of them seeding
                                        # the 10,000,000-row history)
    python -m benchmarks.run --quick    # smaller numbers, for a smoke test
    python -m benchmarks.run --json results.json --chart docs/benchmark.png

With ``dbos`` installed (the ``bench`` extra), DBOS's queued workflows run the same three
steps on a database of their own, in the same alternating throughput rounds (see
``benchmarks/dbos_peer.py``); without it the benchmark says that it skipped that peer.

    python -m benchmarks.run --drivers psycopg2,psycopg   # saga3 on each driver, alternating

BENCH_SYNCHRONOUS_COMMIT=off sets PostgreSQL's ``synchronous_commit`` for the benchmark's
database: commits stop waiting for their WAL flush. It measures what durability costs
on this disk; the project's guarantees assume it is left on.

Needs PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379). Starts a real
``celery worker`` (prefork, concurrency 2) for both the project and the baseline.
Prints one ``name value unit`` line per figure, then a short table.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import redis
import sqlalchemy as sa

from benchmarks.results import collect
from celery_romancy.storage import open_store

if TYPE_CHECKING:
    from benchmarks.dbos_peer import DbosPeer

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
REDIS = "redis://127.0.0.1:6379"

K = TypeVar("K")
figures: list[tuple[str, float, str]] = []
# Every round's raw numbers and the CPU per part, for --json and --chart.
details: dict[str, dict[str, Any]] = {"rounds": {}, "cpu_ms_per_workflow": {}}


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
        **{f"p{q}": percentile(latencies, q) for q in (50, 90, 95, 99)},
    }


def median_round(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run of median throughput, with its own latencies."""
    return sorted(runs, key=lambda run: run["per_s"])[len(runs) // 2]


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, every: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(every)


@contextmanager
def database() -> Iterator[str]:
    name = f"romancy_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        synchronous_commit = os.environ.get("BENCH_SYNCHRONOUS_COMMIT")
        if synchronous_commit:
            conn.execute(
                sa.text(f'ALTER DATABASE "{name}" SET synchronous_commit = {synchronous_commit}')
            )
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def migrated_databases(stack: ExitStack, keys: Iterable[K]) -> dict[K, str]:
    """A fresh database per key, dropped when ``stack`` closes, each with the schema."""
    urls = {key: stack.enter_context(database()) for key in keys}
    for url in urls.values():
        store = open_store(url)
        store.engine  # noqa: B018 - opening it applies the migrations
        store.dispose()
    return urls


@contextmanager
def ready_process(
    command: list[str], env: dict[str, str], log: Path, what: str, cwd: Path = ROOT
) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` running, its output in ``log``, once that log says "ready."; stopped
    (SIGTERM) after."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "ready." in log.read_text(errors="replace"), 120, what)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=60)


def worker(
    env: dict[str, str], log: Path, cwd: Path = ROOT
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """A ``celery worker`` of the benchmark's app, importing the project from ``cwd``
    (``python -m`` puts the working directory first on the path, before PYTHONPATH)."""
    name = f"bench{uuid.uuid4().hex[:6]}@localhost"
    command = [sys.executable, "-m", "celery", "-A", "benchmarks.bench_app", "worker"]
    command += ["-P", "prefork", "-c", "2", "-l", "INFO", "-Q", env["BENCH_QUEUE"], "-n", name]
    command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    return ready_process(command, env, log, "the worker", cwd)


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


TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(worker_pid: int, peers: tuple[int, ...] = ()) -> dict[tuple[str, int], float]:
    """CPU seconds used so far by each process of a run, by part and pid: this client,
    the worker's consumer, its pool processes, the DBOS peer's worker processes, every
    PostgreSQL and Redis process."""
    used: dict[tuple[str, int], float] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        pid, parent = int(proc.name), int(fields[1])
        if pid == os.getpid():
            part = "client"
        elif pid == worker_pid:
            part = "consumer"
        elif parent == worker_pid:
            part = "pool"
        elif pid in peers:
            part = "dbos_worker"
        elif name.startswith(("postgres", "redis-server")):
            part = name.split("-")[0]
        else:
            continue
        used[part, pid] = (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # user + system
    return used


def cpu_between(
    start: dict[tuple[str, int], float], end: dict[tuple[str, int], float]
) -> dict[str, float]:
    """CPU seconds per part between two readings. A process that ended in between is
    left out (its time is no longer readable); one that began counts from zero."""
    used: dict[str, float] = {}
    for (part, pid), seconds in end.items():
        used[part] = used.get(part, 0.0) + seconds - start.get((part, pid), 0.0)
    return used


def report_cpu(label: str, rounds: list[dict[str, float]], workflows: int) -> float:
    """CPU milliseconds per workflow, in all and per part; returns the total."""
    per_workflow: dict[str, float] = {}
    for used in rounds:
        for part, seconds in used.items():
            per_workflow[part] = per_workflow.get(part, 0.0) + 1000 * seconds / workflows
    total = sum(per_workflow.values())
    details["cpu_ms_per_workflow"][label] = {**per_workflow, "total": total}
    report(f"{label}_cpu_per_workflow", total, "ms")
    parts = ", ".join(f"{part} {ms:.2f}" for part, ms in sorted(per_workflow.items()))
    print(f"# {label} cpu ms per workflow: {parts}", flush=True)
    return total


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
        self.poll = poll_engine(db_url)

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
        # Timings come from the rows, not from this loop: polling more often would only
        # take CPU from the run it measures.
        wait_until(lambda: self.completed(since) == n, 600, f"{n} workflows", every=0.25)
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
        # Each result is read from its key once stored. result.get() waits on a pub/sub
        # message instead, and on this Celery (5.7) it hung past a whole round's end in
        # two runs out of three, results all stored: a message missed, probably.
        for _, result in sent:
            wait_until(result.ready, 600, "a chain's result", every=0.1)
        return summary(began, [(start, result.get(timeout=1)[2]) for start, result in sent])

    def fan_out(self, branches: int, prefix: str) -> float:
        """Seconds from start to completion of one fan-out workflow of ``branches``."""
        since = datetime.now(UTC)
        instance_id = f"{prefix}-fan"
        self.romancy.start_workflow("bench.fan_out", branches, instance_id=instance_id)
        wait_until(lambda: self.status(instance_id) == "completed", 300, "a fan-out", every=0.02)
        [(start, done)] = self.timings(since)
        return done - start

    def chord(self, branches: int) -> float:
        """Seconds from sending to the callback's end of the same fan-out as a chord."""
        from celery import chord

        app = self.bench_app
        start = time.time()
        result = chord(app.plain_label.s(i) for i in range(branches))(app.plain_join.s())
        count, done = result.get(timeout=300)
        assert count == branches
        return float(done) - start

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


def seed_history(engine: sa.Engine, rows: int) -> None:
    """Fill the history with finished instances of 3 steps, 1,000,000 rows by default."""
    instances = rows // 3 + 1
    # A day old: before every phase's start, and out of its created_at range.
    at = naive_utc(datetime.now(UTC)) - timedelta(days=1)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO romancy_instances (instance_id, workflow_name, status, input_data,"
                " output_data, version, created_at, updated_at) "
                "SELECT 'seed-' || g, 'bench.saga3', 'completed', '{}', '\"x\"', 3,"
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


def settle(db_url: str) -> None:
    """Vacuum and checkpoint before a round, so that neither autovacuum nor the writing
    out of earlier pages (a seed's, a round's: it stalls every commit's WAL flush on this
    machine's disk for up to half a second) lands in the round measured."""
    engine = poll_engine(db_url)
    with engine.connect() as conn:
        conn.execute(sa.text("VACUUM ANALYZE romancy_instances, romancy_history"))
        conn.execute(sa.text("CHECKPOINT"))
    engine.dispose()


def poll_engine(db_url: str) -> sa.Engine:
    # psycopg2, whatever driver the project runs on in the round measured.
    url = sa.make_url(db_url).set(drivername="postgresql+psycopg2")
    return sa.create_engine(url, isolation_level="AUTOCOMMIT")


def client_round(n: int, prefix: str) -> None:
    """``--client N PREFIX``: a warm-up, then one round of ``n`` workflows on $BENCH_DB,
    from this fresh process; prints the summary as JSON, with the CPU milliseconds per
    workflow of each part if $BENCH_WORKER_PID names the worker."""
    bench = Bench(os.environ["BENCH_DB"], os.environ["BENCH_QUEUE"])
    bench.workflows(50, f"{prefix}-warm")
    worker_pid = int(os.environ.get("BENCH_WORKER_PID", "0"))
    at_start = cpu_seconds(worker_pid)
    result = bench.workflows(n, prefix)
    used = cpu_between(at_start, cpu_seconds(worker_pid))
    result.update({f"cpu_{part}": 1000 * seconds / n for part, seconds in used.items()})
    print(json.dumps(result))
    bench.poll.dispose()
    bench.romancy.storage.dispose()


def fresh_round(url: str, n: int, prefix: str, tree: Path = ROOT) -> dict[str, Any]:
    """One round of ``n`` saga3 workflows on ``url`` (settled first) with a fresh worker
    and client, both importing the project from the checkout ``tree``: the client's
    summary, with the CPU milliseconds per workflow of each part and in all (``cpu``),
    and the worker's resident memory at the round's end (``worker_rss_mb``)."""
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
        rss = rss_mb(process.pid)
    result: dict[str, Any] = json.loads(client.stdout.splitlines()[-1])
    result["cpu"] = sum(v for k, v in result.items() if k.startswith("cpu_"))
    result["worker_rss_mb"] = rss
    return result


def round_line(result: dict[str, Any]) -> str:
    """A ``fresh_round``'s throughput, latency and CPU per part, for its progress line."""
    parts = ", ".join(f"{k[4:]} {v:.2f}" for k, v in sorted(result.items()) if k.startswith("cpu_"))
    return (
        f"{result['per_s']:.1f}/s, p50 {result['p50'] * 1000:.1f} ms, "
        f"cpu {result['cpu']:.2f} ms ({parts})"
    )


def driver_rounds(n: int, rounds: int, drivers: list[str]) -> None:
    """saga3 throughput and CPU per workflow on each PostgreSQL driver (``psycopg2``,
    ``psycopg``: the URL's ``postgresql+<driver>://``), in alternating rounds with a
    fresh worker and client each, on a database of its own each; medians."""
    with contextlib.ExitStack() as stack:
        urls = migrated_databases(stack, drivers)
        results: dict[str, list[dict[str, float]]] = {d: [] for d in drivers}
        for r in range(rounds):
            order = drivers[r % len(drivers) :] + drivers[: r % len(drivers)]
            for driver in order:  # each driver goes first in turn
                on_driver = sa.make_url(urls[driver]).set(drivername=f"postgresql+{driver}")
                result = fresh_round(on_driver.render_as_string(hide_password=False), n, f"d{r}")
                results[driver].append(result)
                print(f"# driver round {r + 1} {driver}: {round_line(result)}", flush=True)
    for driver, runs in results.items():
        report(f"{driver}_saga3_workflows_per_s", statistics.median(r["per_s"] for r in runs), "/s")
        report(f"{driver}_saga3_cpu_per_workflow", statistics.median(r["cpu"] for r in runs), "ms")
        for part in sorted({k for run in runs for k in run if k.startswith("cpu_")}):
            value = statistics.median(run.get(part, 0.0) for run in runs)
            report(f"{driver}_saga3_{part}_per_workflow", value, "ms")


def scale(n: int, seed_sizes: tuple[int, ...], rounds: int) -> dict[int, dict[str, float]]:
    """Throughput and the worker's resident memory (medians) on an empty history (size 0)
    and on histories of each of ``seed_sizes`` rows.

    Rounds alternate between the databases, each with a fresh worker and client: this
    machine's speed drifts by a fifth over minutes, which a before-and-after comparison
    would report as the history's doing.
    """
    sizes = (0, *seed_sizes)
    with contextlib.ExitStack() as stack:
        urls = migrated_databases(stack, sizes)
        for size, url in urls.items():
            if size:
                began = time.monotonic()
                seeding = poll_engine(url)
                seed_history(seeding, size)
                seeding.dispose()
                print(f"# seeded {size} history rows in {time.monotonic() - began:.0f} s")
        runs: dict[int, dict[str, list[float]]] = {size: {"per_s": [], "rss": []} for size in sizes}
        for r in range(rounds):
            # Each database goes first in turn, and starts its round settled.
            for size in sizes[r % len(sizes) :] + sizes[: r % len(sizes)]:
                result = fresh_round(urls[size], n, f"s{r}")
                runs[size]["per_s"].append(result["per_s"])
                runs[size]["rss"].append(result["worker_rss_mb"])
            print(
                f"# scale round {r + 1}: "
                + ", ".join(
                    f"{size} rows {runs[size]['per_s'][-1]:.1f}/s "
                    f"(worker {runs[size]['rss'][-1]:.0f} MB)"
                    for size in sizes
                ),
                flush=True,
            )
        return {
            size: {part: statistics.median(values) for part, values in run.items()}
            for size, run in runs.items()
        }


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


FAN_OUT_BRANCHES = 100


def fan_out_rounds(bench: Bench, rounds: int) -> None:
    """A fan-out of 100 branches of a 20 ms activity against a chord of the same tasks,
    on the same worker, in alternating rounds; medians."""
    bench.fan_out(10, "fan-warm")
    bench.chord(10)
    pairs = []
    for r in range(rounds):
        chord_s = bench.chord(FAN_OUT_BRANCHES)
        ours_s = bench.fan_out(FAN_OUT_BRANCHES, f"fan{r}")
        pairs.append((chord_s, ours_s))
        print(
            f"# fan-out round {r + 1}: chord {chord_s:.3f} s, gather {ours_s:.3f} s, "
            f"ratio {ours_s / chord_s:.3f}",
            flush=True,
        )
    report("fan_out_100_chord_s", statistics.median(c for c, _ in pairs), "s")
    report("fan_out_100_gather_s", statistics.median(o for _, o in pairs), "s")
    report("fan_out_ratio_vs_chord", statistics.median(o / c for c, o in pairs), "x")


def throughput_rounds(
    bench: Bench, db_url: str, worker_pid: int, n: int, rounds: int, peer: DbosPeer | None
) -> None:
    """``n`` workflows at once, in rounds that alternate the chain, the project and DBOS
    (when installed); the medians are reported: on a shared 2-core machine one round's
    throughput varies by a tenth or more. The CPU of every process involved is read
    around each system's round: where the time goes."""
    bench.workflows(50, "warm")
    bench.chains(50)
    runs: dict[str, list[dict[str, float]]] = {}
    cpu: dict[str, list[dict[str, float]]] = {}

    def measure(
        system: str, run: Callable[[], dict[str, float]], peers: tuple[int, ...] = ()
    ) -> None:
        at_start = cpu_seconds(worker_pid, peers)
        runs.setdefault(system, []).append(run())
        cpu.setdefault(system, []).append(cpu_between(at_start, cpu_seconds(worker_pid, peers)))

    for r in range(rounds):
        measure("chain", lambda: bench.chains(n))
        measure("saga3", lambda r=r: bench.workflows(n, f"tp{r}"))
        settle(db_url)  # not during the next round
        if peer is not None:
            # Fresh workers per round: their polling takes nothing from the other rounds.
            with peer.workers(f"dbos-r{r}") as pids:
                peer.workflows(50, f"dbos-warm{r}")
                measure("dbos", lambda r=r: summary(*peer.workflows(n, f"dbos{r}")), tuple(pids))
            peer.settle()
    details["rounds"] = {system: list(values) for system, values in runs.items()}
    for r in range(rounds):
        line = ", ".join(f"{system} {runs[system][r]['per_s']:.1f}/s" for system in runs)
        ratio = runs["saga3"][r]["per_s"] / runs["chain"][r]["per_s"]
        print(f"# round {r + 1}: {line}, saga3/chain {ratio:.3f}", flush=True)
    totals: dict[str, float] = {}
    for system, unit in (("saga3", "workflows/s"), ("chain", "chains/s"), ("dbos", "workflows/s")):
        if system not in runs:
            continue
        median = median_round(runs[system])
        report(f"{system}_workflows_per_s", median["per_s"], unit)
        if system == "saga3":
            report("saga3_steps_per_s", median["per_s"] * 3, "steps/s")
        for q in ("p50", "p90", "p95", "p99"):
            report(f"{system}_latency_{q}", median[q] * 1000, "ms")
        totals[system] = report_cpu(system, cpu[system], n * rounds)
    report("cpu_ratio_vs_chain", totals["saga3"] / totals["chain"], "x")
    report("throughput_ratio_vs_chain", median_ratio(runs["saga3"], runs["chain"]), "x")
    if peer is None:
        print('# dbos peer skipped: dbos is not installed (pip install -e ".[bench]")')
        return
    report("dbos_cpu_ratio_vs_chain", totals["dbos"] / totals["chain"], "x")
    report("dbos_throughput_ratio_vs_chain", median_ratio(runs["dbos"], runs["chain"]), "x")
    report("throughput_ratio_vs_dbos", median_ratio(runs["saga3"], runs["dbos"]), "x")


def median_ratio(ours: list[dict[str, float]], theirs: list[dict[str, float]]) -> float:
    """The median of the rounds' throughput ratios (each pair measured side by side)."""
    return statistics.median(o["per_s"] / t["per_s"] for o, t in zip(ours, theirs, strict=True))


def dbos_peer(stack: ExitStack) -> DbosPeer | None:
    """The DBOS peer on a database of its own, or None when dbos is not installed."""
    if importlib.util.find_spec("dbos") is None:
        details["dbos"] = {"skipped": "dbos is not installed"}
        return None
    from benchmarks.dbos_peer import DbosPeer, settings

    details["dbos"] = settings()

    peer = DbosPeer(stack.enter_context(database()))
    stack.callback(peer.close)
    return peer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (median)")
    parser.add_argument("--client", nargs=2, metavar=("N", "PREFIX"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--only-fan-out", action="store_true", help="only the fan-out against a chord"
    )
    parser.add_argument(
        "--only-throughput",
        action="store_true",
        help="only saga3 against the chain (and DBOS), in rounds",
    )
    parser.add_argument(
        "--drivers",
        help="only saga3 on each of these PostgreSQL drivers, alternating (psycopg2,psycopg)",
    )
    parser.add_argument("--json", type=Path, help="write every figure and round to this file")
    parser.add_argument("--chart", type=Path, help="draw the rounds and latencies to this PNG")
    args = parser.parse_args()
    if args.client:
        client_round(int(args.client[0]), args.client[1])
        return 0
    started, load_at_start = datetime.now(UTC), os.getloadavg()
    n = 200 if args.quick else 1000
    if args.drivers:
        driver_rounds(n, args.rounds, args.drivers.split(","))
        return 0
    with ExitStack() as stack:
        measure(args, n, dbos_peer(stack))
    print("\n| figure | value | unit |\n|---|---|---|")
    for name, value, unit in figures:
        print(f"| {name} | {value:.4g} | {unit} |")
    results = collect(started, load_at_start, n, vars(args), figures, details)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"# wrote {args.json}")
    if args.chart:
        from benchmarks.chart import draw

        draw(results, args.chart)
        print(f"# wrote {args.chart}")
    return 0


def measure(args: argparse.Namespace, n: int, peer: DbosPeer | None) -> None:
    """Every phase that ``args`` asks for, each figure through ``report``."""
    seed_sizes = (100_000,) if args.quick else (1_000_000, 10_000_000)
    # RSS after this many workflows of the memory phase, and after this many in all.
    memory_runs = (300, 3000) if args.quick else (1000, 10_000)
    queue = f"bench-{uuid.uuid4().hex[:6]}"
    redis.Redis.from_url(f"{REDIS}/13").flushdb()
    log = Path("/tmp") / f"{queue}-worker.log"
    with database() as db_url:
        bench = Bench(db_url, queue)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with worker(env, log) as process:
            if not args.only_throughput:
                fan_out_rounds(bench, args.rounds)
            if args.only_fan_out:
                return
            throughput_rounds(bench, db_url, process.pid, n, args.rounds, peer)
            if args.only_throughput:
                return

            single, single_chain = bench.single_latencies(100, "single")
            report("single_latency_p50", single * 1000, "ms")
            report("single_chain_latency_p50", single_chain * 1000, "ms")
            report("single_latency_ratio_vs_chain", single / single_chain, "x")
            if peer is not None:
                with peer.workers("dbos-single"):
                    peer.workflows(20, "dbos-single-warm")
                    report("single_dbos_latency_p50", peer.single_latency(100) * 1000, "ms")

            bench.workflows(memory_runs[0], "mem1")
            rss_small = rss_mb(process.pid)
            bench.workflows(memory_runs[1] - memory_runs[0], "mem2")  # now memory_runs[1] in all
            rss_large = rss_mb(process.pid)
            report(f"worker_rss_after_{memory_runs[0]}", rss_small, "MB")
            report(f"worker_rss_after_{memory_runs[1]}", rss_large, "MB")
            report("worker_rss_growth", rss_large / rss_small, "x")

        trips = count_round_trips(bench, db_url, 100)
        if trips is not None:
            report("db_round_trips_per_step", trips, "round trips")
        bench.poll.dispose()
        bench.romancy.storage.dispose()
    by_size = scale(n, seed_sizes, args.rounds)
    empty = by_size[0]
    report("throughput_empty_history", empty["per_s"], "workflows/s")
    report("worker_rss_empty_history", empty["rss"], "MB")
    for size in seed_sizes:
        report(f"throughput_after_{size}_history_rows", by_size[size]["per_s"], "workflows/s")
        report(f"throughput_ratio_after_{size}_rows", by_size[size]["per_s"] / empty["per_s"], "x")
        report(f"worker_rss_after_{size}_history_rows", by_size[size]["rss"], "MB")


if __name__ == "__main__":
    sys.exit(main())
