"""The storage interface: every query the engine runs, written once in SQLAlchemy Core.

Dialect differences (engine options, "insert or ignore", row locks) live in the thin
subclasses in ``sqlite.py`` and ``postgres.py``; ``open_store`` picks one from the URL.
The engine is created lazily and re-created in a forked child (Celery's prefork pool)
so that no connection is ever shared between processes.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from . import schema
from .records import (
    AttemptRecord,
    Claim,
    CompensationRecord,
    EventRecord,
    HistoryEvent,
    OutboxRecord,
    StepWrite,
    WorkflowInstance,
)

_INSTANCE_COLUMNS = [c.name for c in schema.instances.columns]


class Store:
    """History storage. Subclasses set the dialect details; the SQL is here."""

    dialect_name = "generic"

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None
        self._pid = 0
        self._lock = threading.Lock()

    # -- connections -----------------------------------------------------------------

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

    def lock_for_update(self, stmt: sa.Select[Any]) -> sa.Select[Any]:
        """Row-lock the selected rows, skipping rows another transaction holds."""
        return stmt

    # -- instances ---------------------------------------------------------------------

    def create_instance(
        self, values: dict[str, Any], write: StepWrite | None = None
    ) -> tuple[WorkflowInstance, bool]:
        """Insert an instance unless its id exists; return it and whether it was created.

        ``write`` holds history rows and compensations the start itself recorded (a
        workflow may register a compensation before its first step).
        """
        now = schema.utcnow()
        row = {"epoch": 0, "created_at": now, "updated_at": now, **values}
        with self.transaction() as conn:
            result = conn.execute(self.insert_ignoring_conflict(schema.instances).values(**row))
            created = result.rowcount == 1
            if created and write is not None:
                self._insert_step_rows(conn, row["instance_id"], None, write, now)
            instance = self._get_instance(conn, row["instance_id"])
        assert instance is not None
        return instance, created

    def get_instance(self, instance_id: str) -> WorkflowInstance | None:
        with self.engine.connect() as conn:
            return self._get_instance(conn, instance_id)

    def _get_instance(self, conn: Connection, instance_id: str) -> WorkflowInstance | None:
        row = conn.execute(
            sa.select(schema.instances).where(schema.instances.c.instance_id == instance_id)
        ).first()
        return _instance(row._mapping) if row is not None else None

    def find_instances(
        self,
        status: str | Sequence[str] | None = None,
        workflow: str | None = None,
        limit: int = 100,
    ) -> list[WorkflowInstance]:
        t = schema.instances
        stmt = sa.select(t).order_by(t.c.created_at.desc(), t.c.instance_id).limit(limit)
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            stmt = stmt.where(t.c.status.in_(statuses))
        if workflow is not None:
            stmt = stmt.where(t.c.workflow_name == workflow)
        with self.engine.connect() as conn:
            return [_instance(r._mapping) for r in conn.execute(stmt)]

    def update_instance(
        self,
        instance_id: str,
        changes: dict[str, Any],
        *,
        only_if: dict[str, Any] | None = None,
        status_in: Sequence[str] | None = None,
    ) -> bool:
        """Change an instance if it still matches ``only_if``/``status_in``; True if it did."""
        t = schema.instances
        stmt = sa.update(t).where(t.c.instance_id == instance_id)
        for column, value in (only_if or {}).items():
            stmt = stmt.where(t.c[column].is_(None) if value is None else t.c[column] == value)
        if status_in is not None:
            stmt = stmt.where(t.c.status.in_(list(status_in)))
        with self.transaction() as conn:
            result = conn.execute(stmt.values(updated_at=schema.utcnow(), **changes))
            return result.rowcount == 1

    # -- history -----------------------------------------------------------------------

    def get_history(self, instance_id: str) -> list[HistoryEvent]:
        with self.engine.connect() as conn:
            return self._get_history(conn, instance_id)

    def _get_history(self, conn: Connection, instance_id: str) -> list[HistoryEvent]:
        h = schema.history
        rows = conn.execute(
            sa.select(
                h.c.seq,
                h.c.step_id,
                h.c.kind,
                h.c.name,
                h.c.result,
                h.c.error,
                h.c.attempt,
                h.c.worker_id,
                h.c.created_at,
            )
            .where(h.c.instance_id == instance_id)
            .order_by(h.c.seq)
        )
        return [HistoryEvent(**r._mapping) for r in rows]

    def get_compensations(self, instance_id: str) -> list[CompensationRecord]:
        c = schema.compensations
        stmt = (
            sa.select(
                c.c.seq,
                c.c.step_id,
                c.c.name,
                c.c.arguments,
                c.c.status,
                c.c.error,
                c.c.attempts,
                c.c.created_at,
                c.c.finished_at,
            )
            .where(c.c.instance_id == instance_id)
            .order_by(c.c.seq.desc())
        )
        with self.engine.connect() as conn:
            return [CompensationRecord(**r._mapping) for r in conn.execute(stmt)]

    def get_attempts(self, instance_id: str) -> list[AttemptRecord]:
        a = schema.attempts
        stmt = (
            sa.select(
                a.c.step_id, a.c.attempt, a.c.error, a.c.retry_in, a.c.worker_id, a.c.created_at
            )
            .where(a.c.instance_id == instance_id)
            .order_by(a.c.id)
        )
        with self.engine.connect() as conn:
            return [AttemptRecord(**r._mapping) for r in conn.execute(stmt)]

    # -- the step protocol ----------------------------------------------------------------

    def claim(
        self, instance_id: str, token: str, worker_id: str, lease_seconds: float
    ) -> Claim | None:
        """Take the lease for the dispatch ``token``; None for a duplicate or a held lease.

        One conditional UPDATE decides, so two workers given the same message cannot
        both win, on any dialect.
        """
        params = claim_parameters(instance_id, token, worker_id, lease_seconds)
        stmt = self.claim_statement().returning(*schema.instances.columns)
        with self.transaction() as conn:
            row = conn.execute(stmt, params).first()
            if row is None:
                return None
            instance = _instance(row._mapping)
            history = self._get_history(conn, instance_id)
        return Claim(instance=instance, history=history, worker_id=worker_id, epoch=instance.epoch)

    @staticmethod
    @functools.cache
    def claim_statement() -> sa.Update:
        """The claim's UPDATE, with bind parameters named as in ``claim_parameters``.

        Built once: it runs on every step, and building it costs more than running it.
        """
        t = schema.instances
        now = sa.bindparam("claim_now", type_=schema.UTCDateTime())
        return (
            sa.update(t)
            .where(
                t.c.instance_id == sa.bindparam("claim_instance_id"),
                t.c.dispatch_token == sa.bindparam("claim_token"),
                sa.or_(t.c.lease_owner.is_(None), t.c.lease_expires_at < now),
            )
            .values(
                lease_owner=sa.bindparam("claim_worker_id"),
                lease_expires_at=sa.bindparam("claim_expires", type_=schema.UTCDateTime()),
                epoch=t.c.epoch + 1,
                status=sa.case((t.c.status == "pending", "running"), else_=t.c.status),
                # An expired lease still set means the last holder died or stalled.
                step_takeovers=sa.case(
                    (t.c.lease_owner.is_not(None), t.c.step_takeovers + 1),
                    else_=t.c.step_takeovers,
                ),
                updated_at=now,
            )
        )

    def lease_held_for(self, instance_id: str, token: str) -> float | None:
        """Seconds left on a live lease over dispatch ``token``; None if there is none.

        Tells a redelivery that must wait (its step is in flight, or its worker died
        holding the lease) from a duplicate of a step already recorded.
        """
        t = schema.instances
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t.c.lease_expires_at).where(
                    t.c.instance_id == instance_id,
                    t.c.dispatch_token == token,
                    t.c.lease_owner.is_not(None),
                )
            ).first()
        expires: datetime | None = row.lease_expires_at if row is not None else None
        if expires is None:
            return None
        return max((expires - schema.utcnow()).total_seconds(), 0.0)

    def commit(self, claim: Claim, write: StepWrite, conn: Connection | None = None) -> bool:
        """Commit a step if the claim still holds; False (nothing written) if fenced out.

        ``conn`` is the activity's own open transaction when it wrote through
        ``current_activity().session``: its writes then commit with the history row.
        """
        if conn is None:
            with self.engine.connect() as own:
                return self._commit(own, claim, write)
        return self._commit(conn, claim, write)

    def _commit(self, conn: Connection, claim: Claim, write: StepWrite) -> bool:
        now = schema.utcnow()
        instance_id = claim.instance.instance_id
        txn = conn.get_transaction() or conn.begin()
        try:
            # The fencing check first: it also row-locks the instance until commit.
            fenced = conn.execute(self.fence_statement(claim, write, now))
            if fenced.rowcount != 1:
                txn.rollback()
                return False
            if write.consume_event is not None:
                e = schema.events
                consumed = conn.execute(
                    sa.update(e)
                    .where(e.c.id == write.consume_event, e.c.consumed_by.is_(None))
                    .values(consumed_by=instance_id, consumed_at=now)
                )
                if consumed.rowcount != 1:
                    txn.rollback()  # another wait took the event first
                    return False
            self._insert_step_rows(conn, instance_id, claim.worker_id, write, now)
            if write.compensation_update is not None:
                step_id, changes = write.compensation_update
                c = schema.compensations
                conn.execute(
                    sa.update(c)
                    .where(c.c.instance_id == instance_id, c.c.step_id == step_id)
                    .values(**changes)
                )
            txn.commit()
        except sa.exc.IntegrityError:
            # The step is already recorded: a duplicate that slipped past the claim.
            txn.rollback()
            return False
        except BaseException:
            txn.rollback()
            raise
        return True

    def fence_statement(self, claim: Claim, write: StepWrite, now: datetime) -> sa.Update:
        """The instance's update for a step: applies only if the claim still holds."""
        t = schema.instances
        return (
            sa.update(t)
            .where(
                t.c.instance_id == claim.instance.instance_id,
                t.c.epoch == claim.epoch,
                t.c.lease_owner == claim.worker_id,
            )
            .values(**self.fence_values(now), **write.instance_changes)
        )

    @staticmethod
    def fence_values(now: datetime) -> dict[str, Any]:
        """What every step's commit sets on its instance: the lease is given back."""
        return {
            "lease_owner": None,
            "lease_expires_at": None,
            "step_takeovers": 0,
            "updated_at": now,
        }

    def step_rows(
        self, instance_id: str, worker_id: str | None, write: StepWrite, now: datetime
    ) -> list[tuple[sa.Table, list[dict[str, Any]]]]:
        """The rows a step inserts, per table."""
        rows: list[tuple[sa.Table, list[dict[str, Any]]]] = []
        if write.events:
            rows.append(
                (
                    schema.history,
                    [
                        {
                            "instance_id": instance_id,
                            "seq": e.seq,
                            "step_id": e.step_id,
                            "kind": e.kind,
                            "name": e.name,
                            "result": e.result,
                            "error": e.error,
                            "attempt": e.attempt,
                            "worker_id": worker_id,
                            "created_at": now,
                        }
                        for e in write.events
                    ],
                )
            )
        if write.outbox:
            rows.append(
                (
                    schema.outbox,
                    [
                        {
                            "instance_id": instance_id,
                            "status": "pending",
                            "attempts": 0,
                            "available_at": now,
                            "created_at": now,
                            **row,
                        }
                        for row in write.outbox
                    ],
                )
            )
        if write.registrations:
            rows.append(
                (
                    schema.compensations,
                    [
                        {
                            "instance_id": instance_id,
                            "seq": r.seq,
                            "step_id": r.step_id,
                            "name": r.name,
                            "arguments": r.arguments,
                            "status": "registered",
                            "attempts": 0,
                            "created_at": now,
                        }
                        for r in write.registrations
                    ],
                )
            )
        if write.attempt is not None:
            rows.append(
                (
                    schema.attempts,
                    [
                        {
                            "instance_id": instance_id,
                            "worker_id": worker_id,
                            "created_at": now,
                            **write.attempt,
                        }
                    ],
                )
            )
        return rows

    def _insert_step_rows(
        self,
        conn: Connection,
        instance_id: str,
        worker_id: str | None,
        write: StepWrite,
        now: datetime,
    ) -> None:
        for table, rows in self.step_rows(instance_id, worker_id, write, now):
            conn.execute(sa.insert(table), rows)

    def insert_event(self, values: dict[str, Any]) -> bool:
        """Keep an event for a wait; False if its dedupe key was stored already."""
        row = {"received_at": schema.utcnow(), **values}
        with self.transaction() as conn:
            if row.get("dedupe_key") is None:
                conn.execute(sa.insert(schema.events).values(**row))
                return True
            result = conn.execute(self.insert_ignoring_conflict(schema.events).values(**row))
            return bool(result.rowcount == 1)

    def kept_event_hash(self, dedupe_key: str) -> str | None:
        """The data hash of the event kept under ``dedupe_key``; None if there is none."""
        e = schema.events
        stmt = sa.select(e.c.data_hash).where(e.c.dedupe_key == dedupe_key)
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        return None if row is None else str(row.data_hash)

    def purge_events(self, received_before: datetime, limit: int) -> int:
        """Delete up to ``limit`` events received before ``received_before``, consumed or
        not; returns how many. Finds them by the received_at index, and takes a write
        lock only when there is something to delete."""
        e = schema.events
        stmt = sa.select(e.c.id).where(e.c.received_at < received_before).limit(limit)
        with self.transaction() as conn:
            ids = list(conn.execute(stmt).scalars())
            if not ids:
                return 0
            return int(conn.execute(sa.delete(e).where(e.c.id.in_(ids))).rowcount)

    def find_event(
        self, event_type: str, instance_id: str, correlation_id: str | None
    ) -> EventRecord | None:
        """The oldest unconsumed event of ``event_type`` for this instance or correlation id."""
        e = schema.events
        target = e.c.instance_id == instance_id
        if correlation_id is not None:
            target = sa.or_(target, e.c.correlation_id == correlation_id)
        stmt = (
            sa.select(
                e.c.id,
                e.c.event_type,
                e.c.instance_id,
                e.c.correlation_id,
                e.c.data,
                e.c.received_at,
            )
            .where(e.c.event_type == event_type, e.c.consumed_by.is_(None), target)
            .order_by(e.c.id)
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        return EventRecord(**row._mapping) if row is not None else None

    def waiting_for(
        self, event_type: str, instance_id: str | None, correlation_id: str | None
    ) -> list[WorkflowInstance]:
        """Instances waiting for ``event_type`` that an event so addressed would reach."""
        t = schema.instances
        stmt = sa.select(t).where(
            t.c.status == "waiting_for_event", t.c.wait_event_type == event_type
        )
        if instance_id is not None:
            stmt = stmt.where(t.c.instance_id == instance_id)
        else:
            stmt = stmt.where(t.c.wait_correlation_id == correlation_id)
        with self.engine.connect() as conn:
            return [_instance(r._mapping) for r in conn.execute(stmt.limit(1000))]

    def due_waits(self, now: datetime, limit: int) -> list[WorkflowInstance]:
        """Instances sleeping or waiting for an event whose time (timer, timeout) has come."""
        t = schema.instances
        stmt = (
            sa.select(t)
            .where(
                t.c.status.in_(["waiting_for_timer", "waiting_for_event"]),
                t.c.dispatch_at <= now,
            )
            .order_by(t.c.dispatch_at)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [_instance(r._mapping) for r in conn.execute(stmt)]

    def waiting_with_kept_events(self, limit: int) -> list[WorkflowInstance]:
        """Instances waiting for an event that is already kept for them."""
        t, e = schema.instances, schema.events
        kept = (
            sa.select(e.c.id)
            .where(
                e.c.event_type == t.c.wait_event_type,
                e.c.consumed_by.is_(None),
                sa.or_(
                    e.c.instance_id == t.c.instance_id,
                    e.c.correlation_id == t.c.wait_correlation_id,
                ),
            )
            .exists()
        )
        stmt = sa.select(t).where(t.c.status == "waiting_for_event", kept).limit(limit)
        with self.engine.connect() as conn:
            return [_instance(r._mapping) for r in conn.execute(stmt)]

    # -- outbox ---------------------------------------------------------------------------

    def claim_outbox(self, lock_seconds: float, limit: int) -> list[OutboxRecord]:
        """Take due outbox rows for relaying: pending ones whose retry time has come, and
        in-progress ones whose relayer died (their lock ran out)."""
        o = schema.outbox
        now = schema.utcnow()
        stmt = (
            sa.select(o)
            .where(o.c.status.in_(["pending", "in_progress"]), o.c.available_at <= now)
            .order_by(o.c.id)
            .limit(limit)
        )
        taken: list[OutboxRecord] = []
        with self.transaction() as conn:
            for row in conn.execute(self.lock_for_update(stmt)).all():
                locked = conn.execute(
                    sa.update(o)
                    .where(o.c.id == row.id, o.c.available_at == row.available_at)
                    .values(
                        status="in_progress",
                        available_at=now + timedelta(seconds=lock_seconds),
                        attempts=o.c.attempts + 1,
                    )
                )
                if locked.rowcount == 1:
                    taken.append(_outbox(row._mapping, attempts=row.attempts + 1))
        return taken

    def finish_outbox(
        self, record: OutboxRecord, *, error: str | None = None, retry_in: float = 0.0
    ) -> None:
        o = schema.outbox
        now = schema.utcnow()
        if error is None:
            changes: dict[str, Any] = {"status": "published", "published_at": now}
        else:
            changes = {
                "status": "pending",
                "last_error": error,
                "available_at": now + timedelta(seconds=retry_in),
            }
        with self.transaction() as conn:
            conn.execute(sa.update(o).where(o.c.id == record.id).values(**changes))

    def get_outbox(self, instance_id: str | None = None) -> list[OutboxRecord]:
        o = schema.outbox
        stmt = sa.select(o).order_by(o.c.id)
        if instance_id is not None:
            stmt = stmt.where(o.c.instance_id == instance_id)
        with self.engine.connect() as conn:
            return [_outbox(r._mapping) for r in conn.execute(stmt)]

    def take_over(
        self, instance_id: str, worker_id: str, lease_seconds: float, status_in: Sequence[str]
    ) -> Claim | None:
        """Lease an instance whatever its pending message, if nobody holds it now.

        For operators (cancel, retry a compensation): the queued message, if any, goes
        stale because the commit that follows replaces the dispatch token.
        """
        t = schema.instances
        now = schema.utcnow()
        stmt = (
            sa.update(t)
            .where(
                t.c.instance_id == instance_id,
                t.c.status.in_(list(status_in)),
                sa.or_(t.c.lease_owner.is_(None), t.c.lease_expires_at < now),
            )
            .values(
                lease_owner=worker_id,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                epoch=t.c.epoch + 1,
                updated_at=now,
            )
            .returning(*t.columns)
        )
        with self.transaction() as conn:
            row = conn.execute(stmt).first()
            if row is None:
                return None
            instance = _instance(row._mapping)
            history = self._get_history(conn, instance_id)
        return Claim(instance=instance, history=history, worker_id=worker_id, epoch=instance.epoch)

    def take_overdue(self, stale_before: datetime, limit: int) -> list[WorkflowInstance]:
        """Instances whose pending step's message is presumed lost, marked as re-sent.

        Overdue: dispatched before ``stale_before`` and either never picked up or picked up
        by a worker whose lease has since expired (it died mid-step). ``dispatch_at`` is
        moved to now for each one returned, so the next sweep leaves it alone for another
        period; on PostgreSQL, SKIP LOCKED keeps concurrent sweepers off the same rows.
        """
        t = schema.instances
        now = schema.utcnow()
        stmt = (
            sa.select(t)
            .where(
                t.c.status.in_(["pending", "running", "compensating"]),
                t.c.dispatch_token.is_not(None),
                t.c.dispatch_at < stale_before,
                sa.or_(t.c.lease_owner.is_(None), t.c.lease_expires_at < now),
            )
            .order_by(t.c.dispatch_at)
            .limit(limit)
        )
        taken: list[WorkflowInstance] = []
        with self.transaction() as conn:
            for row in conn.execute(self.lock_for_update(stmt)).all():
                instance = _instance(row._mapping)
                marked = conn.execute(
                    sa.update(t)
                    .where(
                        t.c.instance_id == instance.instance_id,
                        t.c.dispatch_token == instance.dispatch_token,
                    )
                    .values(dispatch_at=now)
                )
                if marked.rowcount == 1:
                    taken.append(instance)
        return taken

    def renew_lease(self, claim: Claim, lease_seconds: float) -> bool:
        """Extend a held lease (heartbeat for long activities); False if it was lost."""
        t = schema.instances
        now = schema.utcnow()
        with self.transaction() as conn:
            result = conn.execute(
                sa.update(t)
                .where(
                    t.c.instance_id == claim.instance.instance_id,
                    t.c.epoch == claim.epoch,
                    t.c.lease_owner == claim.worker_id,
                )
                .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
            )
            return result.rowcount == 1

    def release(self, claim: Claim) -> None:
        """Give a lease back without recording anything (the step will be redelivered)."""
        self.update_instance(
            claim.instance.instance_id,
            {"lease_owner": None, "lease_expires_at": None},
            only_if={"epoch": claim.epoch, "lease_owner": claim.worker_id},
        )


def claim_parameters(
    instance_id: str, token: str, worker_id: str, lease_seconds: float
) -> dict[str, Any]:
    now = schema.utcnow()
    return {
        "claim_instance_id": instance_id,
        "claim_token": token,
        "claim_worker_id": worker_id,
        "claim_now": now,
        "claim_expires": now + timedelta(seconds=lease_seconds),
    }


def _outbox(mapping: Any, **overrides: Any) -> OutboxRecord:
    names = (
        "id",
        "event_id",
        "event_type",
        "instance_id",
        "data",
        "status",
        "attempts",
        "created_at",
        "published_at",
    )
    return OutboxRecord(**{**{name: mapping[name] for name in names}, **overrides})


def _instance(mapping: Any) -> WorkflowInstance:
    return WorkflowInstance(**{name: mapping[name] for name in _INSTANCE_COLUMNS})
