"""Benchmark: the dashboard's instance list on a million instances (PostgreSQL).

    python -m benchmarks.dashboard_list                    # 1,000,000 instances, 30 rounds
    python -m benchmarks.dashboard_list --instances 100000 --rounds 10

Creates a database of its own (dropped at the end; ``--keep`` keeps it and prints its
URL), fills it (``benchmarks/dashboard_fill.py``: about a minute for a million), then
calls the dashboard's WSGI app in-process, with no HTTP server and no browser between:
each figure is the server's time from the request to the last byte of the body. Pages:
the first page of the list, the list filtered to ``status=failed``, a page deep in the
keyset (90 % of the way down), the same first page from the JSON API, and one business
key looked up. Prints one ``name median p95 ms`` line per page; the target is < 200 ms.

Needs PostgreSQL on 127.0.0.1:5432 (``BENCH_PG_ADMIN`` to point elsewhere).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from wsgiref.util import setup_testing_defaults

import sqlalchemy as sa
from celery import Celery

from celery_romancy import Romancy
from celery_romancy.contrib.dashboard import Dashboard
from celery_romancy.contrib.dashboard.listing import encode_cursor

from .dashboard_fill import fill

PG_ADMIN = os.environ.get(
    "BENCH_PG_ADMIN", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
TARGET_MS = 200.0

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@contextmanager
def database(keep: bool, existing: str | None = None) -> Iterator[sa.URL]:
    """A new, empty PostgreSQL database, dropped afterwards unless ``keep`` (or
    ``existing``, as it is)."""
    if existing is not None:
        yield sa.make_url(existing).set(drivername="postgresql+psycopg2")
        return
    name = f"romancy_bench_dashboard_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(PG_ADMIN).set(database=name)
    finally:
        if not keep:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def get(app: WSGIApp, path: str, query: str = "") -> tuple[float, str, bytes]:
    """One GET through the WSGI app: (seconds, status line, body)."""
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ.update(REQUEST_METHOD="GET", PATH_INFO=path, QUERY_STRING=query)
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        statuses.append(status)

    began = time.perf_counter()
    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return time.perf_counter() - began, statuses[0], body


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def deep_cursor(romancy: Romancy, engine: sa.Engine, fraction: float) -> str:
    """The list's ``after`` cursor at ``fraction`` of the way down, newest first."""
    with engine.connect() as conn:
        total = conn.execute(sa.text("SELECT count(*) FROM romancy_instances")).scalar_one()
        instance_id = conn.execute(
            sa.text(
                "SELECT instance_id FROM romancy_instances"
                " ORDER BY created_at DESC, instance_id OFFSET :skip LIMIT 1"
            ),
            {"skip": int(total * fraction)},
        ).scalar_one()
    return encode_cursor(romancy.get_instance(instance_id))


def pages(romancy: Romancy, engine: sa.Engine) -> dict[str, tuple[str, str]]:
    """What to measure: name -> (path, query string)."""
    with engine.connect() as conn:
        key = conn.execute(
            sa.text("SELECT value FROM romancy_search WHERE key = 'order_id' LIMIT 1 OFFSET 1000")
        ).scalar_one()
    deep = deep_cursor(romancy, engine, 0.9)
    return {
        "list_first_page": ("/", ""),
        "list_status_failed": ("/", "status=failed"),
        "list_deep_keyset_page": ("/", f"after={deep}"),
        "list_failed_deep_page": ("/", f"status=failed&after={deep}"),
        "list_rare_combination": ("/", "workflow=nightly_report&status=compensation_failed"),
        "list_business_key": ("/", f"search=order_id%3D{key}"),
        "api_first_page": ("/api/instances", ""),
        "api_counts": ("/api/counts", ""),
    }


def measure(app: WSGIApp, path: str, query: str, rounds: int) -> list[float]:
    _, status, body = get(app, path, query)  # warm: connections, statements
    if not status.startswith("200"):
        raise SystemExit(f"GET {path}?{query} answered {status}: {body[:300]!r}")
    return [get(app, path, query)[0] * 1000 for _ in range(rounds)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--database", help="measure this database as it is (one kept before)")
    args = parser.parse_args(argv)

    with database(args.keep, args.database) as url:
        engine = sa.create_engine(url)
        romancy = Romancy(
            Celery("bench_dashboard", broker="memory://"),
            database_url=url.render_as_string(hide_password=False),
        )
        romancy.migrate()
        if args.database is None:
            began = time.perf_counter()
            rows = fill(engine, args.instances)
            print(f"filled {rows} in {time.perf_counter() - began:.1f} s", flush=True)
        app: WSGIApp = Dashboard(romancy)
        slow = []
        print(f"{'page':<24} {'median':>8} {'p95':>8}  (ms, {args.rounds} rounds)")
        for name, (path, query) in pages(romancy, engine).items():
            times = measure(app, path, query, args.rounds)
            median, p95 = statistics.median(times), percentile(times, 95)
            print(f"{name:<24} {median:8.1f} {p95:8.1f}", flush=True)
            if p95 >= TARGET_MS:
                slow.append(name)
        if slow:
            print(f"over the {TARGET_MS:.0f} ms target: {', '.join(slow)}")
        if args.keep:
            print(f"kept: {url.render_as_string(hide_password=False)}")
        romancy.storage.dispose()
        engine.dispose()
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
