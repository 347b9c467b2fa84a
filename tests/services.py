"""Where the real services are, and what to do when one is missing.

Under CI (``CI=true``) a missing PostgreSQL or Redis fails the run; locally the tests
that need it are skipped with the reason.
"""

from __future__ import annotations

import os
import uuid

import pytest
import redis
import sqlalchemy as sa

CI = os.environ.get("CI", "").lower() == "true"
PG_ADMIN_URL = os.environ.get("ROMANCY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("ROMANCY_TEST_REDIS", "redis://127.0.0.1:6379/11")


def missing(service: str, error: Exception) -> None:
    message = f"{service} is not reachable: {error}"
    if CI:
        pytest.fail(f"{message} (CI=true: services are required, never skipped)")
    pytest.skip(message)


def redis_client(url: str = REDIS_URL) -> redis.Redis:
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.RedisError as exc:
        missing("Redis", exc)
    return client


def pg_engine(url: str, **options: object) -> sa.Engine:
    """An engine on psycopg2 (a bare postgresql:// means psycopg 3 to SQLAlchemy 2.1)."""
    parsed = sa.make_url(url)
    return sa.create_engine(parsed.set(drivername="postgresql+psycopg2"), **options)  # type: ignore[arg-type]


def create_pg_database() -> str:
    """A fresh, empty PostgreSQL database for this test session; returns its URL."""
    admin = pg_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"romancy_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        missing("PostgreSQL", exc)
    finally:
        admin.dispose()
    return sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(url: str) -> None:
    name = sa.make_url(url).database
    admin = pg_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
