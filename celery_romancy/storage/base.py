"""Connections, per process: the part of a store every query group stands on.

The engine is created lazily and re-created in a forked child (Celery's prefork pool)
so that no connection is ever shared between processes; creating it applies the
migrations. Dialect differences ("insert or ignore", row locks) are the two hooks
that ``sqlite.py`` and ``postgres.py`` fill in.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine


class StoreBase:
    dialect_name = "generic"

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def _create_engine(self) -> Engine:
        return sa.create_engine(self.url, pool_pre_ping=True)

    @property
    def engine(self) -> Engine:
        pid = os.getpid()
        if self._engine is None or self._pid != pid:
            with self._lock:
                if self._engine is None or self._pid != pid:
                    if self._engine is not None:
                        # Inherited from the parent: drop the pool without closing its sockets.
                        self._engine.dispose(close=False)
                    engine = self._create_engine()
                    from .migrate import upgrade

                    upgrade(engine)
                    self._engine, self._pid = engine, pid
        return self._engine

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def connect(self) -> Connection:
        return self.engine.connect()

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def insert_ignoring_conflict(self, table: sa.Table) -> Any:
        """An INSERT that does nothing when the primary key already exists."""
        raise NotImplementedError

    def insert_replacing(
        self, table: sa.Table, conflict: tuple[str, ...], updated: tuple[str, ...]
    ) -> Any:
        """An INSERT that, where a row with the same ``conflict`` columns exists, sets
        its ``updated`` columns instead."""
        raise NotImplementedError

    def lock_for_update(self, stmt: sa.Select[Any]) -> sa.Select[Any]:
        """Row-lock the selected rows, skipping rows another transaction holds."""
        return stmt
