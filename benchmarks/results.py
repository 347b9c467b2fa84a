"""The benchmark's results as one JSON document: every figure, every round's raw
numbers, the CPU per part, and what machine and software measured them."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

PG_ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
REDIS = "redis://127.0.0.1:6379"


def collect(
    started: datetime,
    load_at_start: tuple[float, float, float],
    n: int,
    options: dict[str, Any],
    figures: list[tuple[str, float, str]],
    details: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    return {
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "workflows_per_round": n,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in options.items()},
        "environment": {
            k: v
            for k, v in os.environ.items()
            if k.startswith("BENCH_") and k not in ("BENCH_DB", "BENCH_QUEUE")
        },
        "machine": machine(load_at_start),
        "figures": {name: {"value": value, "unit": unit} for name, value, unit in figures},
        **details,
    }


def machine(load_at_start: tuple[float, float, float]) -> dict[str, Any]:
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg(),
        "python": platform.python_version(),
        "postgresql": server_version(),
        "redis": redis.Redis.from_url(REDIS).info("server")["redis_version"],
        "packages": {name: package_version(name) for name in ("celery", "sqlalchemy", "dbos")},
    }


def cpu_model() -> str | None:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None


def server_version() -> str:
    engine = sa.create_engine(PG_ADMIN)
    with engine.connect() as conn:
        text = str(conn.execute(sa.text("SHOW server_version")).scalar_one())
    engine.dispose()
    return text


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None
