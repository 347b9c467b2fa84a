"""DBOS as a peer in the benchmark: the same three steps as ``bench.saga3``, as DBOS
queued workflows on a PostgreSQL database of their own on the same server.

Only used when ``dbos`` is importable (``pip install -e ".[bench]"``). Each round starts
``WORKER_PROCESSES`` fresh DBOS worker processes (``python -m benchmarks.dbos_peer URL ID``),
so that their queue polling takes no CPU from the other systems' rounds; the client
enqueues by name through a ``DBOSClient``, as the project's client starts by name.

Fairness: the Celery worker runs its tasks in 2 prefork processes, so DBOS gets 2
processes as well (each its own GIL, as each Celery pool process has). Within a process
DBOS runs each workflow in a thread of its own, overlapping their commits' waits as its
design intends; ``WORKER_CONCURRENCY`` bounds them per process. 16 gave DBOS its best
throughput in a short sweep on the (then busy) machine, 300 workflows a round, medians:
1 per process 19/s, 4 41/s, 16 49/s, no limit 35/s. DBOS dequeues by polling the queue
table; its default interval of 1 s would bound a round by the polls (each claims at most
``WORKER_CONCURRENCY``), so the queue polls every ``POLLING_INTERVAL_S`` (0.01 s was no
faster), a cost that the CPU figures include.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

import sqlalchemy as sa
from dbos import DBOS, DBOSClient, DBOSConfig

from benchmarks.run import ready_process, wait_until

APP = "romancy-bench"
QUEUE = "bench"
WORKER_PROCESSES = 2
# BENCH_DBOS_CONCURRENCY and BENCH_DBOS_POLLING_S measure other settings.
# "none": no limit per process, DBOS's default.
_concurrency = os.environ.get("BENCH_DBOS_CONCURRENCY", "16")
WORKER_CONCURRENCY = None if _concurrency == "none" else int(_concurrency)
POLLING_INTERVAL_S = float(os.environ.get("BENCH_DBOS_POLLING_S", "0.05"))
ROOT = Path(__file__).resolve().parent.parent


@DBOS.step(name="bench.reserve")
def reserve(order_id: str) -> str:
    return f"R-{order_id}"


@DBOS.step(name="bench.charge")
def charge(order_id: str, reservation: str) -> str:
    return f"C-{reservation}"


@DBOS.step(name="bench.ship")
def ship(order_id: str, payment: str) -> str:
    return f"S-{payment}"


@DBOS.workflow(name="bench.saga3")
def saga3(order_id: str) -> str:
    reservation = reserve(order_id)
    payment = charge(order_id, reservation)
    return ship(order_id, payment)


def settings() -> dict[str, object]:
    """What the JSON output records of this peer's configuration."""
    from importlib.metadata import version

    return {
        "version": version("dbos"),
        "worker_processes": WORKER_PROCESSES,
        "worker_concurrency": WORKER_CONCURRENCY,
        "polling_interval_s": POLLING_INTERVAL_S,
    }


def serve(url: str, executor_id: str) -> None:
    """A DBOS worker process: launch, listen to the queue, run until SIGTERM."""
    config: DBOSConfig = {"name": APP, "system_database_url": url, "executor_id": executor_id}
    DBOS(config=config)
    DBOS.launch()
    DBOS.register_queue(
        QUEUE,
        worker_concurrency=WORKER_CONCURRENCY,
        polling_interval_sec=POLLING_INTERVAL_S,
        on_conflict="always_update",
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready.", flush=True)
    stop.wait()
    DBOS.destroy()


class DbosPeer:
    """The client side: workers per round, enqueues, completion and timings from rows."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.rows = sa.create_engine(
            url.replace("postgresql://", "postgresql+psycopg2://"), isolation_level="AUTOCOMMIT"
        )
        self.client: DBOSClient | None = None

    @contextmanager
    def workers(self, log_prefix: str) -> Iterator[list[int]]:
        """Start the worker processes one after another (the first one creates the
        schema); yield their pids; stop them."""
        with ExitStack() as stack:
            pids = [
                stack.enter_context(self._worker(f"{log_prefix}-{i}")).pid
                for i in range(WORKER_PROCESSES)
            ]
            if self.client is None:  # the schema exists now
                self.client = DBOSClient(system_database_url=self.url, application_name=APP)
            yield pids

    def _worker(self, executor_id: str) -> AbstractContextManager[subprocess.Popen[bytes]]:
        command = [sys.executable, "-m", "benchmarks.dbos_peer", self.url, executor_id]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return ready_process(command, env, Path("/tmp") / f"{executor_id}.log", "a DBOS worker")

    def workflows(
        self, n: int, prefix: str, every: float = 0.25
    ) -> tuple[float, list[tuple[float, float]]]:
        """Enqueue ``n`` workflows as fast as possible; wait for all; the start time and
        each workflow's (enqueued, completed) times from its status row."""
        assert self.client is not None, "start the workers first"
        since_ms = int(time.time() * 1000) - 1
        began = time.time()
        for i in range(n):
            self.client.enqueue(
                {
                    "workflow_name": "bench.saga3",
                    "queue_name": QUEUE,
                    "workflow_id": f"{prefix}-{i}",
                },
                f"o{i}",
            )
        wait_until(lambda: self.completed(since_ms) == n, 600, f"{n} DBOS workflows", every=every)
        with self.rows.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT created_at, updated_at FROM dbos.workflow_status "
                    "WHERE created_at >= :since AND queue_name = :queue"
                ),
                {"since": since_ms, "queue": QUEUE},
            ).all()
        return began, [(r.created_at / 1000, r.updated_at / 1000) for r in rows]

    def single_latency(self, runs: int) -> float:
        """The median seconds from enqueueing to completion of one workflow at a time."""
        latencies = []
        for i in range(runs):
            _, [(enqueued, done)] = self.workflows(1, f"single-{i}", every=0.02)
            latencies.append(done - enqueued)
        return statistics.median(latencies)

    def settle(self) -> None:
        """As the project's database before a round: vacuumed, and a checkpoint."""
        with self.rows.connect() as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
            conn.execute(sa.text("CHECKPOINT"))

    def completed(self, since_ms: int) -> int:
        with self.rows.connect() as conn:
            return int(
                conn.execute(
                    sa.text(
                        "SELECT count(*) FROM dbos.workflow_status WHERE created_at >= :since"
                        " AND queue_name = :queue AND status = 'SUCCESS'"
                    ),
                    {"since": since_ms, "queue": QUEUE},
                ).scalar_one()
            )

    def close(self) -> None:
        if self.client is not None:
            self.client.destroy()
        self.rows.dispose()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
