"""The benchmark's Celery app: three trivial activities as a workflow, and the same three
as plain Celery tasks for the baseline chain. Configured from the environment so that
``celery -A benchmarks.bench_app worker`` runs exactly what the client measures."""

from __future__ import annotations

import os
import time

from celery import Celery

from celery_romancy import Romancy, WorkflowContext

app = Celery(
    "bench",
    broker=os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/12"),
    backend=os.environ.get("BENCH_BACKEND", "redis://127.0.0.1:6379/13"),
)
app.conf.update(
    task_default_queue=os.environ.get("BENCH_QUEUE", "bench"),
    worker_prefetch_multiplier=4,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    # BENCH_PREPARED=0 measures PostgreSQL without server-side prepared statements.
    romancy_prepared_statements=os.environ.get("BENCH_PREPARED", "1") != "0",
)
romancy = Romancy(
    app, database_url=os.environ.get("BENCH_DB", "postgresql://postgres@127.0.0.1:5432/bench")
)


@romancy.activity("bench.reserve")
def reserve(order_id: str) -> str:
    return f"R-{order_id}"


@romancy.activity("bench.charge")
def charge(order_id: str, reservation: str) -> str:
    return f"C-{reservation}"


@romancy.activity("bench.ship")
def ship(order_id: str, payment: str) -> str:
    return f"S-{payment}"


@romancy.workflow("bench.saga3")
def saga3(ctx: WorkflowContext, order_id: str) -> str:
    reservation = reserve.execute(ctx, order_id)
    payment = charge.execute(ctx, order_id, reservation)
    return ship.execute(ctx, order_id, payment)


# The baseline: the same three steps as a plain chain with the Redis result backend.
@app.task(name="plain.reserve")
def plain_reserve(order_id: str) -> list[str]:
    return [order_id, f"R-{order_id}"]


@app.task(name="plain.charge")
def plain_charge(previous: list[str]) -> list[str]:
    return [previous[0], f"C-{previous[1]}"]


@app.task(name="plain.ship")
def plain_ship(previous: list[str]) -> list[object]:
    # The completion time, for start-to-completed latency.
    return [previous[0], f"S-{previous[1]}", time.time()]


# Fan-out: one branch per item of a 20 ms I/O-bound activity, against a plain chord.
FAN_OUT_SECONDS = 0.02


@romancy.activity("bench.label")
def label(item: int) -> int:
    time.sleep(FAN_OUT_SECONDS)  # an I/O wait (an HTTP call, a printer)
    return item


@romancy.workflow("bench.fan_out")
def fan_out(ctx: WorkflowContext, count: int) -> int:
    return len(ctx.map(label, range(count)))


@app.task(name="plain.label")
def plain_label(item: int) -> int:
    time.sleep(FAN_OUT_SECONDS)
    return item


@app.task(name="plain.join")
def plain_join(items: list[int]) -> list[float]:
    return [len(items), time.time()]
