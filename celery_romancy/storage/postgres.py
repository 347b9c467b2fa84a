"""PostgreSQL: the production backend; several workers and beats may share it."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Engine

from .store import Store


class PostgresStore(Store):
    dialect_name = "postgresql"
    multi_node = True

    def _create_engine(self) -> Engine:
        url = sa.make_url(self.url)
        if url.drivername == "postgresql":
            # SQLAlchemy 2.1 would pick psycopg 3 for a bare URL; we ship psycopg2.
            url = url.set(drivername="postgresql+psycopg2")
        return sa.create_engine(
            url,
            pool_pre_ping=True,
            pool_size=5,
            max_overflow=10,
            # A process paused while holding a row lock (SIGSTOP, a debugger) must not
            # block the worker taking its step over forever: fail, and retry the step.
            connect_args={"options": "-c lock_timeout=30000"},
        )

    def insert_ignoring_conflict(self, table: sa.Table) -> Any:
        return pg_insert(table).on_conflict_do_nothing()

    def lock_for_update(self, stmt: sa.Select[Any]) -> sa.Select[Any]:
        return stmt.with_for_update(skip_locked=True)
