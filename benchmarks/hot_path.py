"""The PostgreSQL hot path per driver, in one process: start, claim and commit.

    python -m benchmarks.hot_path                       # psycopg2 against psycopg 3
    python -m benchmarks.hot_path --drivers psycopg2,psycopg --rounds 7 --steps 500

For each driver in turn (alternating which goes first), ``--steps`` instances are started
(one step each), claimed, and committed as a middle step is (a history row and the next
step). Reported per operation, as medians over the rounds: the microseconds of wall
time, of this process's CPU (the driver and the store's own Python) and of the server
process's CPU (read from /proc: PostgreSQL must run on this machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from benchmarks.run import database
from celery_romancy.commands import ActivityCommand
from celery_romancy.states import StepKind
from celery_romancy.storage import Claim, HistoryEvent, NewStep, StepWrite, open_store, schema
from celery_romancy.storage.postgres import PostgresStore

COMMAND = ActivityCommand(StepKind.ACTIVITY, "bench.reserve", "bench.reserve:1", 0, {})
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def server_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def backend_pid(store: PostgresStore) -> int:
    """The server process of the store's one hot-path connection (one thread, one)."""
    connection = store._autocommit_pool().raw_connection()
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
        return int(pid)
    finally:
        connection.close()


def timed(
    store: PostgresStore, items: list[Any], operation: Callable[[Any], Any]
) -> tuple[list[Any], dict[str, float]]:
    pid = backend_pid(store)
    wall, cpu, server = time.perf_counter(), time.process_time(), server_cpu(pid)
    results = [operation(item) for item in items]
    n = len(items)
    assert backend_pid(store) == pid, "the hot path moved to another connection"
    return results, {
        "wall": 1e6 * (time.perf_counter() - wall) / n,
        "client": 1e6 * (time.process_time() - cpu) / n,
        "server": 1e6 * (server_cpu(pid) - server) / n,
    }


def one_round(store: PostgresStore, steps: int, prefix: str) -> dict[str, dict[str, float]]:
    ids = [f"{prefix}-{i}" for i in range(steps)]

    def start(instance_id: str) -> None:
        values = {"instance_id": instance_id, "workflow_name": "bench.saga3"}
        step = NewStep(f"{instance_id}-t1", COMMAND, schema.utcnow())
        store.create_instance(
            {**values, "status": "pending", "input_data": {"order": instance_id}},
            StepWrite(add_steps=[step]),
        )

    def claim(instance_id: str) -> Claim:
        claimed = store.claim(instance_id, f"{instance_id}-t1", "bench-worker", 300.0)
        assert claimed is not None
        return claimed

    def commit(claimed: Claim) -> None:
        instance_id = claimed.step.instance_id
        recorded = HistoryEvent(0, "bench.reserve:1", "activity", "bench.reserve", result="R")
        following = replace(COMMAND, name="bench.charge", step_id="bench.charge:1", seq=1)
        write = StepWrite(
            events=[recorded],
            add_steps=[NewStep(f"{instance_id}-t2", following, schema.utcnow())],
        )
        assert store.commit(claimed.snapshot, write, claimed).name == "COMMITTED"

    _, started = timed(store, ids, start)
    claims, claimed = timed(store, ids, claim)
    _, committed = timed(store, claims, commit)
    return {"start": started, "claim": claimed, "commit": committed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--drivers", default="psycopg2,psycopg")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()
    drivers = args.drivers.split(",")
    with database() as url:
        stores = {}
        for driver in drivers:
            on_driver = sa.make_url(url).set(drivername=f"postgresql+{driver}")
            store = open_store(on_driver.render_as_string(hide_password=False))
            assert isinstance(store, PostgresStore)
            one_round(store, 50, f"warm-{driver}")  # connections made, statements prepared
            stores[driver] = store
        results: dict[str, list[dict[str, dict[str, float]]]] = {d: [] for d in drivers}
        for r in range(args.rounds):
            order = drivers[r % len(drivers) :] + drivers[: r % len(drivers)]
            for driver in order:
                results[driver].append(one_round(stores[driver], args.steps, uuid.uuid4().hex[:8]))
        for store in stores.values():
            store.dispose()
    print(f"# medians of {args.rounds} rounds of {args.steps}, microseconds per operation")
    print("| driver | operation | wall | client cpu | server cpu |\n|---|---|---|---|---|")
    for driver, rounds in results.items():
        for operation in ("start", "claim", "commit"):
            values = {
                part: statistics.median(run[operation][part] for run in rounds)
                for part in ("wall", "client", "server")
            }
            print(
                f"| {driver} | {operation} | {values['wall']:.0f} | {values['client']:.0f} "
                f"| {values['server']:.0f} |"
            )


if __name__ == "__main__":
    main()
