"""Fixtures: every engine test runs against SQLite and PostgreSQL, with Redis as broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from celery_romancy.storage import Store, open_store
from celery_romancy.storage.schema import metadata

from .harness import Harness
from .services import create_pg_database, drop_pg_database, pg_engine


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    url = create_pg_database()
    yield url
    drop_pg_database(url)


# A test marked with this runs on psycopg 3 (``postgresql+psycopg://``) too.
EVERY_DRIVER = pytest.mark.parametrize(
    "database_url", ["sqlite", "postgresql", "psycopg"], indirect=True
)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return empty_database(request.param, request, tmp_path)


def empty_database(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A history database with no rows in it: a new SQLite file, or a truncated PostgreSQL
    (``postgresql``: on psycopg2; ``psycopg``: on psycopg 3)."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'history.db'}"
    url: str = request.getfixturevalue("pg_url")
    engine = pg_engine(url)
    with engine.begin() as conn:
        existing = set(sa.inspect(conn).get_table_names())
        tables = [t.name for t in metadata.sorted_tables if t.name in existing]
        if tables:
            conn.execute(sa.text(f"TRUNCATE {', '.join(tables)} CASCADE"))
    engine.dispose()
    if kind == "psycopg":
        return sa.make_url(url).set(drivername="postgresql+psycopg").render_as_string(False)
    return url


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    opened = open_store(database_url)
    yield opened
    opened.dispose()


@pytest.fixture
def harness(database_url: str, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(
        database_url,
        tmp_path,
        romancy_lease_timeout=2,
        # A SIGKILLed worker's unacked message comes back after 3 s (kombu's defaults
        # scan for such messages only every 100 s).
        broker_transport_options={
            "visibility_timeout": 3,
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
        },
    )
    yield h
    h.close()
