"""Alembic migrations, applied automatically on first use and by ``celery_romancy migrate``.

Several processes may start at once (a worker pool, beat, the web app): PostgreSQL
serialises them with an advisory lock, SQLite with a lock file beside the database.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "romancy_alembic_version"
_PG_LOCK_KEY = 0x524F4D414E4359  # "ROMANCY"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision``; a no-op costing one query when it is current."""
    head = head_revision()
    with engine.connect() as conn:
        if revision == "head" and current_revision(conn) == head:
            return
    sqlite = engine.dialect.name == "sqlite"
    with _exclusive(engine), engine.connect() as conn:
        if sqlite:
            # A migration that rebuilds a table (batch mode) drops the old one: with
            # foreign keys on, that would cascade-delete every row referencing it (the
            # history of every instance). The pragma only works outside a transaction.
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()  # ends SQLAlchemy's autobegun (empty) transaction
        try:
            with conn.begin():
                if engine.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
                command.upgrade(alembic_config(conn), revision)
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()


@contextmanager
def _exclusive(engine: Engine) -> Iterator[None]:
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate-lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
