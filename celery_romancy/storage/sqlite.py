"""SQLite: the embedded default. WAL mode; single node only (no row locks to share work)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.pool import StaticPool

from .store import Store


class SQLiteStore(Store):
    dialect_name = "sqlite"
    # No SELECT ... FOR UPDATE SKIP LOCKED (``lock_for_update`` stays a no-op): a SQLite
    # file is meant for one machine, with one beat.

    def _create_engine(self) -> Engine:
        url = sa.make_url(self.url)
        in_memory = url.database in (None, "", ":memory:")
        kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
        if in_memory:
            # One shared connection, or every checkout would see a new empty database.
            kwargs["poolclass"] = StaticPool
        engine = sa.create_engine(url, **kwargs)

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine

    def insert_ignoring_conflict(self, table: sa.Table) -> Any:
        return sqlite_insert(table).on_conflict_do_nothing()

    def insert_replacing(
        self, table: sa.Table, conflict: tuple[str, ...], updated: tuple[str, ...]
    ) -> Any:
        stmt = sqlite_insert(table)
        return stmt.on_conflict_do_update(
            index_elements=list(conflict), set_={c: stmt.excluded[c] for c in updated}
        )
