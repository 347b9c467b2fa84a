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

import dataclasses
import functools
import os
import select
from datetime import UTC, datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine

from ..states import Status, StepKind
from . import schema
from .instances import HISTORY_COLUMNS
from .prepared import PreparedStatement
from .records import Claim, CommitResult, HistoryEvent, Snapshot, StepWrite, WorkflowInstance
from .rows import instance_of, ref_from_json, step_of, write_rows
from .steps import StepProtocol, claim_clauses, claim_parameters, version_clauses
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
        now = schema.utcnow()
        row = {"version": 0, "created_at": now, "updated_at": now, **values}
        table_rows = _flat_rows(row["instance_id"], None, write or StepWrite(), now, 0)
        params = dict(row)
        _bind_rows(params, table_rows)
        created = self._run(_create_statement(tuple(row), _row_shapes(table_rows)), params)
        if created:
            return instance_of(created[0]), True
        existing = self.get_instance(row["instance_id"])
        assert existing is not None
        return existing, False

    def claim(
        self, instance_id: str, token: str, worker_id: str, lease_seconds: float
    ) -> Claim | None:
        params = claim_parameters(instance_id, token, worker_id, lease_seconds)
        rows = self._run(_claim_with_snapshot(), params)
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
        rows = self._run(_snapshot_statement(), {"snapshot_instance_id": instance_id})
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
            and set(write.remove_steps) <= {claim.step.token}
        )
        if not hot:
            return super().commit(snapshot, write, claim, conn)
        assert claim is not None
        now = schema.utcnow()
        instance_id = snapshot.instance.instance_id
        changes = {"updated_at": now, **write.instance_changes.columns()}
        version = snapshot.instance.version + 1
        table_rows = _flat_rows(instance_id, claim.worker_id, write, now, version)
        update = write.compensation_update
        shape = _CommitShape(
            changes=tuple(changes),
            rows=_row_shapes(table_rows),
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
        _bind_rows(params, table_rows)
        if update is not None:
            params["c_step_id"] = update[0]
            params.update((f"c_{k}", v) for k, v in update[1].items())
        try:
            (fenced,) = self._run(_commit_statement(shape), params)
        except sa.exc.IntegrityError:
            return CommitResult.FENCED  # the step is already recorded: a duplicate
        if fenced["fenced"] == 1:
            return CommitResult.COMMITTED
        # The claim still held when the statement began: the version had moved.
        return CommitResult.MOVED if fenced["held"] else CommitResult.FENCED


def _snapshot_of(instance: WorkflowInstance, row: dict[str, Any], now: datetime) -> Snapshot:
    steps = [ref_from_json(item, now) for item in row["in_flight"] or []]
    complete = row.get("history_read", True)
    return Snapshot(instance, _history_events(row["history"]), steps, complete)


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


RowShapes = tuple[tuple[str, tuple[str, ...]], ...]


def _flat_rows(
    instance_id: str, worker_id: str | None, write: StepWrite, now: datetime, version: int
) -> list[tuple[str, dict[str, Any]]]:
    return [
        (table.name, row)
        for table, rows in write_rows(instance_id, worker_id, write, now, version)
        for row in rows
    ]


def _row_shapes(table_rows: list[tuple[str, dict[str, Any]]]) -> RowShapes:
    return tuple((name, tuple(row)) for name, row in table_rows)


def _bind_rows(params: dict[str, Any], table_rows: list[tuple[str, dict[str, Any]]]) -> None:
    for i, (_, row) in enumerate(table_rows):
        params.update((f"r{i}_{k}", v) for k, v in row.items())


def _inserts_from(source: sa.CTE, shapes: RowShapes) -> list[sa.CTE]:
    """One INSERT ... SELECT ... FROM ``source`` per row: if ``source`` is empty (a
    fenced-out commit, an id that exists), nothing is inserted."""
    writes = []
    for i, (name, columns) in enumerate(shapes):
        table = schema.metadata.tables[name]
        values = [sa.bindparam(f"r{i}_{k}", type_=table.c[k].type) for k in columns]
        insert = sa.insert(table).from_select(list(columns), sa.select(*values).select_from(source))
        writes.append(insert.returning(table.primary_key.columns[0]).cte(f"w{i}"))
    return writes


class _CommitShape(NamedTuple):
    """What a commit statement depends on besides its values: built once per shape."""

    changes: tuple[str, ...]  # the instance columns it sets
    rows: RowShapes  # (table, columns) per inserted row
    compensation: tuple[str, ...] | None  # the compensation columns it sets


@functools.lru_cache(maxsize=256)
def _commit_statement(shape: _CommitShape) -> PreparedStatement:
    """A transition's commit as one statement, its values bound by name (see ``commit``):
    ``WITH fenced AS (UPDATE instance ... WHERE version ... AND the claim holds),
    DELETE the claimed step, INSERT ... SELECT ... FROM fenced``.

    Cached: building and hashing a fresh statement costs more than running it.
    """
    t, s = schema.instances, schema.steps
    claim_holds = sa.exists(
        sa.select(s.c.token).where(
            *claim_clauses(
                sa.bindparam("f_instance_id"),
                sa.bindparam("f_token"),
                sa.bindparam("f_epoch"),
                sa.bindparam("f_owner"),
            )
        )
    )
    values = {k: sa.bindparam(f"f_{k}", type_=t.c[k].type) for k in shape.changes}
    fenced = (
        sa.update(t)
        .where(
            *version_clauses(sa.bindparam("f_instance_id"), sa.bindparam("f_version")),
            claim_holds,
        )
        .values(version=t.c.version + 1, **values)
        .returning(t.c.instance_id)
        .cte("fenced")
    )
    ended = (
        sa.delete(s)
        .where(
            s.c.instance_id == sa.bindparam("f_instance_id"),
            s.c.token == sa.bindparam("f_token"),
            sa.exists(sa.select(fenced.c.instance_id)),
        )
        .returning(s.c.token)
        .cte("ended")
    )
    writes = [ended, *_inserts_from(fenced, shape.rows)]
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
            .cte("compensated")
        )
    stmt = sa.select(
        sa.select(sa.func.count()).select_from(fenced).scalar_subquery().label("fenced"),
        claim_holds.label("held"),
    ).add_cte(*writes)
    return PreparedStatement(stmt)


def _in_flight(instance_id: Any) -> sa.ScalarSelect[Any]:
    """The instance's steps as one JSON array (decoded once, whatever their number)."""
    s = schema.steps
    row = sa.func.json_build_array(s.c.token, s.c.step_id, s.c.kind, s.c.lease_expires_at)
    return sa.select(sa.func.json_agg(row)).where(s.c.instance_id == instance_id).scalar_subquery()


def _history(instance_id: Any) -> sa.ScalarSelect[Any]:
    """The instance's history as one JSON array in seq order (see ``_history_events``)."""
    h = schema.history
    row = sa.func.json_build_array(*(h.c[name] for name in HISTORY_COLUMNS))
    return (
        sa.select(sa.func.json_agg(aggregate_order_by(row, h.c.seq)))
        .where(h.c.instance_id == instance_id)
        .scalar_subquery()
    )


def _history_events(rows: list[list[Any]] | None) -> list[HistoryEvent]:
    events = []
    for row in rows or []:
        values = dict(zip(HISTORY_COLUMNS, row, strict=True))
        values["created_at"] = datetime.fromisoformat(values["created_at"]).replace(tzinfo=UTC)
        events.append(HistoryEvent(**values))
    return events


@functools.cache
def _claim_with_snapshot() -> PreparedStatement:
    """The claim, and the instance's row, steps and history, as one row of one statement."""
    s, t = schema.steps, schema.instances
    claimed = StepProtocol.claim_statement().returning(*s.columns).cte("claimed")
    started = (
        StepProtocol.start_statement()
        .where(sa.exists(sa.select(claimed.c.token)))
        .returning(t.c.instance_id)
        .cte("started")
    )
    instance_id: sa.BindParameter[str] = sa.bindparam("claim_instance_id")
    # A branch of a gather that sent every branch at once, with siblings in flight, will
    # not replay when it is recorded (transition.replayed): its claim need not read the
    # history, which grows with the fan-out. Should it replay after all, it reads again.
    other = s.alias("sibling")
    siblings_run = sa.exists(
        sa.select(other.c.token).where(
            other.c.instance_id == instance_id,
            other.c.token != claimed.c.token,
            other.c.kind == str(StepKind.ACTIVITY),
        )
    )

    def field(name: str) -> sa.ColumnElement[str]:
        key: sa.ColumnElement[str] = sa.literal_column(f"'{name}'")
        return sa.func.json_extract_path_text(claimed.c.command, key)

    history_read = sa.not_(
        sa.and_(field("group_id").is_not(None), field("group_limit").is_(None), siblings_run)
    )
    return PreparedStatement(
        sa.select(
            *(claimed.c[c.name].label(f"s_{c.name}") for c in s.columns),
            *t.columns,
            _in_flight(instance_id).label("in_flight"),
            sa.case((history_read, _history(instance_id)), else_=sa.null()).label("history"),
            history_read.label("history_read"),
        )
        .select_from(claimed.join(t, t.c.instance_id == claimed.c.instance_id))
        .add_cte(started)
    )


@functools.cache
def _snapshot_statement() -> PreparedStatement:
    t = schema.instances
    instance_id: sa.BindParameter[str] = sa.bindparam("snapshot_instance_id")
    return PreparedStatement(
        sa.select(
            *t.columns,
            _in_flight(instance_id).label("in_flight"),
            _history(instance_id).label("history"),
        ).where(t.c.instance_id == instance_id)
    )


@functools.lru_cache(maxsize=64)
def _create_statement(columns: tuple[str, ...], rows: RowShapes) -> PreparedStatement:
    """A start: the instance (none if the id exists) and what it dispatched and
    recorded, in one statement, per shape."""
    t = schema.instances
    created = (
        pg_insert(t)
        .values({k: sa.bindparam(k, type_=t.c[k].type) for k in columns})
        .on_conflict_do_nothing()
        .returning(*t.columns)
        .cte("created")
    )
    stmt = sa.select(created)
    if rows:
        stmt = stmt.add_cte(*_inserts_from(created, rows))
    return PreparedStatement(stmt)
