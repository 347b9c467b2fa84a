"""PostgreSQL: the production backend; several workers and beats may share it.

The hot path is folded into single statements (``pg_statements.py``), each its own
(autocommit) transaction: a step costs two round trips, a claim and a commit, and a
start one. They run as prepared statements (``prepared.py``), on connections checked
for a server-side close without a round trip. The generic path (``Store``) still serves
commits that must share the activity's own transaction, consume an event, or end steps
an operator chose.
"""

from __future__ import annotations

import dataclasses
import os
import select
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine

from ..states import Status
from . import schema
from .pg_statements import (
    CommitShape,
    bind_rows,
    claim_with_snapshot,
    commit_statement,
    create_statement,
    flat_rows,
    history_events,
    row_shapes,
    snapshot_statement,
)
from .prepared import PreparedStatement
from .records import Claim, CommitResult, Snapshot, StepWrite, WorkflowInstance
from .rows import instance_of, ref_from_json, step_of
from .steps import claim_parameters
from .store import Store


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
        # A process paused while holding a row lock (SIGSTOP, a debugger) must not
        # block the worker taking its step over forever: fail, and retry the step.
        connect_args: dict[str, Any] = {"options": "-c lock_timeout=30000"}
        threshold = options.pop("prepare_threshold", None)
        if url.get_driver_name() == "psycopg":
            # psycopg 3 prepares a statement once a connection has run it this many
            # times. Not on the generic path (as with psycopg2): a statement it prepared
            # before a migration changed its table would fail there on every later run.
            connect_args["prepare_threshold"] = threshold
        return sa.create_engine(
            url,
            pool_pre_ping=pool_pre_ping,
            pool_size=5,
            max_overflow=10,
            connect_args=connect_args,
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
                        pool_pre_ping=False,
                        isolation_level="AUTOCOMMIT",
                        # psycopg 3: the hot statements, prepared on first use (see
                        # ``prepared.py``; it handles a migration under them).
                        prepare_threshold=0 if self.prepared_statements else None,
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
        # Its rowcount tells whether it inserted; SQLAlchemy reads an INSERT's only when
        # asked to (psycopg 3 forgets it once the cursor is closed, psycopg2 does not).
        return pg_insert(table).on_conflict_do_nothing().execution_options(preserve_rowcount=True)

    def insert_replacing(
        self, table: sa.Table, conflict: tuple[str, ...], updated: tuple[str, ...]
    ) -> Any:
        stmt = pg_insert(table)
        return stmt.on_conflict_do_update(
            index_elements=list(conflict), set_={c: stmt.excluded[c] for c in updated}
        )

    def lock_for_update(self, stmt: sa.Select[Any]) -> sa.Select[Any]:
        return stmt.with_for_update(skip_locked=True)

    def _run(self, hot: PreparedStatement, values: dict[str, Any]) -> list[dict[str, Any]]:
        """Run a hot-path statement in its own transaction; its rows by column name."""
        engine = self._autocommit_pool()
        if self.prepared_statements or engine.dialect.driver == "psycopg":
            # psycopg 3 prepares them or not as its connections are set up.
            rows = hot.execute(engine, values)
        else:
            with self._autocommit() as conn:
                rows = [list(row) for row in conn.execute(hot.statement, values)]
        return [dict(zip(hot.columns, row, strict=True)) for row in rows]

    def create_instance(
        self, values: dict[str, Any], write: StepWrite | None = None
    ) -> tuple[WorkflowInstance, bool]:
        if write is not None and write.children:
            return super().create_instance(values, write)  # one statement per tree level
        now = schema.utcnow()
        row = {"version": 0, "created_at": now, "updated_at": now, **values}
        table_rows = flat_rows(row["instance_id"], None, write or StepWrite(), now, 0)
        params = dict(row)
        bind_rows(params, table_rows)
        created = self._run(create_statement(tuple(row), row_shapes(table_rows)), params)
        if created:
            return instance_of(created[0]), True
        existing = self.get_instance(row["instance_id"])
        assert existing is not None
        return existing, False

    def claim(
        self, instance_id: str, token: str, worker_id: str, lease_seconds: float
    ) -> Claim | None:
        params = claim_parameters(instance_id, token, worker_id, lease_seconds)
        rows = self._run(claim_with_snapshot(), params)
        if not rows:
            return None
        (row,) = rows
        step = step_of(row, prefix="s_")
        instance = instance_of(row)
        if instance.status == Status.PENDING:  # set by the same statement, not seen by it
            instance = dataclasses.replace(instance, status=str(Status.RUNNING))
        snapshot = _snapshot_of(instance, row, params["claim_now"])
        return Claim(step=step, snapshot=snapshot, worker_id=worker_id, epoch=step.epoch)

    def snapshot(self, instance_id: str, conn: Connection | None = None) -> Snapshot | None:
        if conn is not None:
            return super().snapshot(instance_id, conn)
        rows = self._run(snapshot_statement(), {"snapshot_instance_id": instance_id})
        if not rows:
            return None
        return _snapshot_of(instance_of(rows[0]), rows[0], schema.utcnow())

    def commit(
        self,
        snapshot: Snapshot,
        write: StepWrite,
        claim: Claim | None = None,
        conn: Connection | None = None,
    ) -> CommitResult:
        hot = (
            claim is not None
            and conn is None
            and write.consume_event is None
            and not write.children
            and write.continued_as is None
            and set(write.remove_steps) <= {claim.step.token}
        )
        if not hot:
            return super().commit(snapshot, write, claim, conn)
        assert claim is not None
        now = schema.utcnow()
        instance_id = snapshot.instance.instance_id
        changes = {"updated_at": now, **write.instance_changes.columns()}
        version = snapshot.instance.version + 1
        table_rows = flat_rows(instance_id, claim.worker_id, write, now, version)
        update = write.compensation_update
        shape = CommitShape(
            changes=tuple(changes),
            rows=row_shapes(table_rows),
            compensation=tuple(update[1]) if update is not None else None,
        )
        params = {f"f_{k}": v for k, v in changes.items()}
        params.update(
            f_instance_id=instance_id,
            f_version=snapshot.instance.version,
            f_token=claim.step.token,
            f_epoch=claim.epoch,
            f_owner=claim.worker_id,
        )
        bind_rows(params, table_rows)
        if update is not None:
            params["c_step_id"] = update[0]
            params.update((f"c_{k}", v) for k, v in update[1].items())
        try:
            (fenced,) = self._run(commit_statement(shape), params)
        except sa.exc.IntegrityError:
            return CommitResult.FENCED  # the step is already recorded: a duplicate
        if fenced["fenced"] == 1:
            return CommitResult.COMMITTED
        # The claim still held when the statement began: the version had moved.
        return CommitResult.MOVED if fenced["held"] else CommitResult.FENCED


def _snapshot_of(instance: WorkflowInstance, row: dict[str, Any], now: datetime) -> Snapshot:
    steps = [ref_from_json(item, now) for item in row["in_flight"] or []]
    complete = row.get("history_read", True)
    return Snapshot(instance, history_events(row["history"]), steps, complete)


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
