"""PostgreSQL: the production backend; several workers and beats may share it.

The hot path is folded into single statements, each its own (autocommit) transaction:
a claim is one ``WITH claimed AS (UPDATE ... RETURNING ...) SELECT ... history`` and a
step's commit is one ``WITH fenced AS (UPDATE ...) INSERT ... SELECT ... FROM fenced``,
so a step costs two round trips instead of eight, and a start is one ``INSERT ... ON
CONFLICT DO NOTHING RETURNING``. These run as prepared statements (``prepared.py``),
each built once per shape, on connections checked for a server-side close without a
round trip. The generic path (``Store``) still serves commits that must
share the activity's own transaction or consume an event.
"""

from __future__ import annotations

import functools
import os
import select
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine

from . import schema
from .prepared import PreparedStatement
from .records import Claim, HistoryEvent, StepWrite, WorkflowInstance
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

    def __init__(self, url: str, prepared_statements: bool = True) -> None:
        super().__init__(url)
        self.prepared_statements = prepared_statements
        self._autocommit_engine: Engine | None = None
        self._autocommit_pid = 0

    def _create_engine(self, pool_pre_ping: bool = True, **options: Any) -> Engine:
        url = sa.make_url(self.url)
        if url.drivername == "postgresql":
            # SQLAlchemy 2.1 would pick psycopg 3 for a bare URL; we ship psycopg2.
            url = url.set(drivername="postgresql+psycopg2")
        return sa.create_engine(
            url,
            pool_pre_ping=pool_pre_ping,
            pool_size=5,
            max_overflow=10,
            # A process paused while holding a row lock (SIGSTOP, a debugger) must not
            # block the worker taking its step over forever: fail, and retry the step.
            connect_args={"options": "-c lock_timeout=30000"},
            **options,
        )

    def _autocommit(self) -> Connection:
        """A connection whose every statement is its own transaction."""
        return self._autocommit_pool().connect()

    def _autocommit_pool(self) -> Engine:
        """This process's engine for autocommit connections.

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
                    # No ping per checkout here (a round trip on every statement of
                    # every step); ``_closed_by_server`` costs no round trip. A
                    # connection that dies mid-statement fails it, the pool is
                    # emptied, and the step task is retried.
                    self._autocommit_engine = self._create_engine(
                        pool_pre_ping=False, isolation_level="AUTOCOMMIT"
                    )
                    sa.event.listen(self._autocommit_engine, "checkout", _closed_by_server)
                    self._autocommit_pid = pid
        return self._autocommit_engine

    def dispose(self) -> None:
        if self._autocommit_engine is not None:
            self._autocommit_engine.dispose()
            self._autocommit_engine = None
        super().dispose()

    def insert_ignoring_conflict(self, table: sa.Table) -> Any:
        return pg_insert(table).on_conflict_do_nothing()

    def lock_for_update(self, stmt: sa.Select[Any]) -> sa.Select[Any]:
        return stmt.with_for_update(skip_locked=True)

    def _run(self, hot: PreparedStatement, values: dict[str, Any]) -> list[dict[str, Any]]:
        """Run a hot-path statement in its own transaction; its rows by column name."""
        if self.prepared_statements:
            rows = hot.execute(self._autocommit_pool(), values)
        else:
            with self._autocommit() as conn:
                rows = [list(row) for row in conn.execute(hot.statement, values)]
        return [dict(zip(hot.columns, row, strict=True)) for row in rows]

    def create_instance(
        self, values: dict[str, Any], write: StepWrite | None = None
    ) -> tuple[WorkflowInstance, bool]:
        if write is not None and (write.events or write.registrations or write.outbox):
            return super().create_instance(values, write)
        now = schema.utcnow()
        row = {"epoch": 0, "created_at": now, "updated_at": now, **values}
        created = self._run(_create_instance(tuple(row)), row)
        if created:
            return _instance(created[0]), True
        existing = self.get_instance(row["instance_id"])
        assert existing is not None
        return existing, False

    def claim(
        self, instance_id: str, token: str, worker_id: str, lease_seconds: float
    ) -> Claim | None:
        params = claim_parameters(instance_id, token, worker_id, lease_seconds)
        rows = self._run(_claim_with_history(), params)
        if not rows:
            return None
        instance = _instance(rows[0])
        history = [
            HistoryEvent(**{name: row[f"h_{name}"] for name in _HISTORY_COLUMNS})
            for row in rows
            if row["h_seq"] is not None
        ]
        return Claim(instance=instance, history=history, worker_id=worker_id, epoch=instance.epoch)

    def commit(self, claim: Claim, write: StepWrite, conn: Connection | None = None) -> bool:
        if conn is not None or write.consume_event is not None:
            return super().commit(claim, write, conn)
        now = schema.utcnow()
        instance_id = claim.instance.instance_id
        fence_values = {**self.fence_values(now), **write.instance_changes}
        rows = [
            (table.name, row)
            for table, table_rows in self.step_rows(instance_id, claim.worker_id, write, now)
            for row in table_rows
        ]
        update = write.compensation_update
        shape = _CommitShape(
            fence=tuple(fence_values),
            rows=tuple((name, tuple(row)) for name, row in rows),
            compensation=tuple(update[1]) if update is not None else None,
        )
        params = {f"f_{k}": v for k, v in fence_values.items()}
        params.update(f_instance_id=instance_id, f_epoch=claim.epoch, f_owner=claim.worker_id)
        for i, (_, row) in enumerate(rows):
            params.update((f"r{i}_{k}", v) for k, v in row.items())
        if update is not None:
            params["c_step_id"] = update[0]
            params.update((f"c_{k}", v) for k, v in update[1].items())
        try:
            (fenced,) = self._run(_commit_statement(shape), params)
        except sa.exc.IntegrityError:
            return False  # the step is already recorded: a duplicate past the claim
        return bool(fenced["fenced"] == 1)


def _closed_by_server(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Drop a pooled connection the server has closed, before a statement is sent on it.

    An idle connection has nothing to read. If its socket is readable, the server ended
    it while it sat in the pool (a restart, a failover, ``pg_terminate_backend``): it
    sent its farewell or closed the socket. The pool then connects anew and the
    statement runs there, so the first start or step after a database restart does not
    fail. One ``poll`` system call; a ping would be a round trip.
    """
    if dbapi_connection.closed or _readable(dbapi_connection.fileno()):
        raise sa.exc.DisconnectionError("the server closed this pooled connection")


def _readable(fd: int) -> bool:
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])  # Windows has no poll


class _CommitShape(NamedTuple):
    """What a commit statement depends on besides its values: built once per shape."""

    fence: tuple[str, ...]  # the instance columns it sets
    rows: tuple[tuple[str, tuple[str, ...]], ...]  # (table, columns) per inserted row
    compensation: tuple[str, ...] | None  # the compensation columns it sets


@functools.lru_cache(maxsize=256)
def _commit_statement(shape: _CommitShape) -> PreparedStatement:
    """A step's commit as one statement, its values bound by name (see ``commit``):
    ``WITH fenced AS (UPDATE instance ... RETURNING) INSERT ... SELECT ... FROM fenced``.

    Cached: building and hashing a fresh statement costs more than running it.
    """
    t = schema.instances
    fenced = (
        sa.update(t)
        .where(
            t.c.instance_id == sa.bindparam("f_instance_id"),
            t.c.epoch == sa.bindparam("f_epoch"),
            t.c.lease_owner == sa.bindparam("f_owner"),
        )
        .values({k: sa.bindparam(f"f_{k}", type_=t.c[k].type) for k in shape.fence})
        .returning(t.c.instance_id)
        .cte("fenced")
    )
    # Every other row is inserted FROM fenced: a fenced-out step writes nothing.
    writes: list[Any] = []
    for i, (name, columns) in enumerate(shape.rows):
        table = schema.metadata.tables[name]
        values = [sa.bindparam(f"r{i}_{k}", type_=table.c[k].type) for k in columns]
        writes.append(
            sa.insert(table)
            .from_select(list(columns), sa.select(*values).select_from(fenced))
            .returning(table.c.id)
        )
    if shape.compensation is not None:
        c = schema.compensations
        writes.append(
            sa.update(c)
            .where(
                c.c.instance_id == sa.bindparam("f_instance_id"),
                c.c.step_id == sa.bindparam("c_step_id"),
                sa.exists(sa.select(fenced.c.instance_id)),
            )
            .values({k: sa.bindparam(f"c_{k}", type_=c.c[k].type) for k in shape.compensation})
            .returning(c.c.id)
        )
    stmt = sa.select(sa.func.count().label("fenced")).select_from(fenced)
    if writes:
        stmt = stmt.add_cte(*(w.cte(f"w{i}") for i, w in enumerate(writes)))
    return PreparedStatement(stmt)


@functools.cache
def _claim_with_history() -> PreparedStatement:
    """The claim and the instance's history in one statement, built once."""
    t, h = schema.instances, schema.history
    claimed = Store.claim_statement().returning(*t.columns).cte("claimed")
    return PreparedStatement(
        sa.select(claimed, *(h.c[name].label(f"h_{name}") for name in _HISTORY_COLUMNS))
        .select_from(claimed.outerjoin(h, h.c.instance_id == claimed.c.instance_id))
        .order_by(h.c.seq)
    )


@functools.lru_cache(maxsize=64)
def _create_instance(columns: tuple[str, ...]) -> PreparedStatement:
    """A start's insert, returning the row (none if the id exists), per set of columns."""
    t = schema.instances
    return PreparedStatement(
        pg_insert(t)
        .values({k: sa.bindparam(k, type_=t.c[k].type) for k in columns})
        .on_conflict_do_nothing()
        .returning(*t.columns)
    )
