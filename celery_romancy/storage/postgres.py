"""PostgreSQL: the production backend; several workers and beats may share it.

The hot path is folded into single statements, each its own (autocommit) transaction:
a claim is one ``WITH claimed AS (UPDATE ... RETURNING ...) SELECT ... history`` and a
step's commit is one ``WITH fenced AS (UPDATE ...) INSERT ... SELECT ... FROM fenced``,
so a step costs two round trips instead of eight. The generic path (``Store``) still
serves commits that must share the activity's own transaction or consume an event.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine

from . import schema
from .records import Claim, HistoryEvent, StepWrite
from .store import Store, _instance, claim_parameters

_HISTORY_COLUMNS = (
    "seq",
    "step_id",
    "kind",
    "name",
    "result",
    "error",
    "attempt",
    "worker_id",
    "created_at",
)


class PostgresStore(Store):
    dialect_name = "postgresql"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._autocommit_engine: Engine | None = None
        self._autocommit_pid = 0

    def _create_engine(self, **options: Any) -> Engine:
        url = sa.make_url(self.url)
        if url.drivername == "postgresql":
            # SQLAlchemy 2.1 would pick psycopg 3 for a bare URL; we ship psycopg2.
            url = url.set(drivername="postgresql+psycopg2")
        return sa.create_engine(
            url,
            # No ping per checkout (a round trip on every step): a connection that died
            # with the server fails its statement, SQLAlchemy drops the whole pool, and
            # the step task is retried (see Romancy._step_task).
            pool_pre_ping=False,
            pool_size=5,
            max_overflow=10,
            # A process paused while holding a row lock (SIGSTOP, a debugger) must not
            # block the worker taking its step over forever: fail, and retry the step.
            connect_args={"options": "-c lock_timeout=30000"},
            **options,
        )

    def _autocommit(self) -> Connection:
        """A connection whose every statement is its own transaction.

        A pool of its own: switching a pooled connection in and out of autocommit costs
        a ``SET`` round trip each way.
        """
        self.engine  # noqa: B018 - per-process set-up and migrations happen there
        pid = os.getpid()
        if self._autocommit_engine is None or self._autocommit_pid != pid:
            with self._lock:
                if self._autocommit_engine is None or self._autocommit_pid != pid:
                    if self._autocommit_engine is not None:
                        self._autocommit_engine.dispose(close=False)  # the parent's
                    self._autocommit_engine = self._create_engine(isolation_level="AUTOCOMMIT")
                    self._autocommit_pid = pid
        return self._autocommit_engine.connect()

    def dispose(self) -> None:
        if self._autocommit_engine is not None:
            self._autocommit_engine.dispose()
            self._autocommit_engine = None
        super().dispose()

    def insert_ignoring_conflict(self, table: sa.Table) -> Any:
        return pg_insert(table).on_conflict_do_nothing()

    def lock_for_update(self, stmt: sa.Select[Any]) -> sa.Select[Any]:
        return stmt.with_for_update(skip_locked=True)

    def claim(
        self, instance_id: str, token: str, worker_id: str, lease_seconds: float
    ) -> Claim | None:
        stmt = _claim_with_history()
        params = claim_parameters(instance_id, token, worker_id, lease_seconds)
        with self._autocommit() as conn:
            rows = conn.execute(stmt, params).all()
        if not rows:
            return None
        instance = _instance(rows[0]._mapping)
        history = [
            HistoryEvent(**{name: row._mapping[f"h_{name}"] for name in _HISTORY_COLUMNS})
            for row in rows
            if row._mapping["h_seq"] is not None
        ]
        return Claim(instance=instance, history=history, worker_id=worker_id, epoch=instance.epoch)

    def commit(self, claim: Claim, write: StepWrite, conn: Connection | None = None) -> bool:
        if conn is not None or write.consume_event is not None:
            return super().commit(claim, write, conn)
        now = schema.utcnow()
        instance_id = claim.instance.instance_id
        fenced = (
            self.fence_statement(claim, write, now)
            .returning(schema.instances.c.instance_id)
            .cte("fenced")
        )
        # Every other row is inserted FROM fenced: a fenced-out step writes nothing.
        writes: list[Any] = []
        for table, rows in self.step_rows(instance_id, claim.worker_id, write, now):
            for row in rows:
                values = [sa.bindparam(None, v, type_=table.c[k].type) for k, v in row.items()]
                writes.append(
                    sa.insert(table)
                    .from_select(list(row), sa.select(*values).select_from(fenced))
                    .returning(table.c.id)
                )
        if write.compensation_update is not None:
            step_id, changes = write.compensation_update
            c = schema.compensations
            writes.append(
                sa.update(c)
                .where(
                    c.c.instance_id == instance_id,
                    c.c.step_id == step_id,
                    sa.exists(sa.select(fenced.c.instance_id)),
                )
                .values(**changes)
                .returning(c.c.id)
            )
        stmt = sa.select(sa.func.count()).select_from(fenced)
        if writes:
            stmt = stmt.add_cte(*(w.cte(f"w{i}") for i, w in enumerate(writes)))
        try:
            with self._autocommit() as own:
                return bool(own.execute(stmt).scalar_one() == 1)
        except sa.exc.IntegrityError:
            return False  # the step is already recorded: a duplicate past the claim


@functools.cache
def _claim_with_history() -> sa.Select[Any]:
    """The claim and the instance's history in one statement, built once."""
    t, h = schema.instances, schema.history
    claimed = Store.claim_statement().returning(*t.columns).cte("claimed")
    return (
        sa.select(claimed, *(h.c[name].label(f"h_{name}") for name in _HISTORY_COLUMNS))
        .select_from(claimed.outerjoin(h, h.c.instance_id == claimed.c.instance_id))
        .order_by(h.c.seq)
    )
