"""Instances and what they recorded: create, read, find; history, compensations, attempts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import schema
from .base import StoreBase
from .records import (
    STATUSES,
    AttemptRecord,
    ChildIdTakenError,
    CompensationRecord,
    HistoryEvent,
    Snapshot,
    StepRecord,
    StepWrite,
    WorkflowInstance,
)
from .rows import (
    REF_COLUMNS,
    SEARCH_CONFLICT,
    SEARCH_UPDATED,
    instance_of,
    ref_of,
    step_of,
    write_rows,
)

HISTORY_COLUMNS = (
    "seq",
    "step_id",
    "kind",
    "name",
    "result",
    "error",
    "attempt",
    "worker_id",
    "created_at",
    "started_at",
    "task_id",
)


class InstanceQueries(StoreBase):
    def create_instance(
        self, values: dict[str, Any], write: StepWrite | None = None
    ) -> tuple[WorkflowInstance, bool]:
        """Insert an instance unless its id exists; return it and whether it was created.

        ``write`` holds what the start itself recorded and dispatched: its first steps,
        and history rows and compensations the body recorded before them.
        """
        now = schema.utcnow()
        row = {"version": 0, "created_at": now, "updated_at": now, **values}
        with self.transaction() as conn:
            result = conn.execute(self.insert_ignoring_conflict(schema.instances).values(**row))
            created = result.rowcount == 1
            if created and write is not None:
                self.insert_rows(conn, row["instance_id"], None, write, now, 0)
            instance = self._get_instance(conn, row["instance_id"])
        assert instance is not None
        return instance, created

    def insert_rows(
        self,
        conn: Connection,
        instance_id: str,
        worker_id: str | None,
        write: StepWrite,
        now: datetime,
        version: int,
    ) -> None:
        """Insert what a transition writes, and the child instances it starts with theirs.

        ``ChildIdTakenError`` if a child's id is taken: the caller rolls back and plans
        again (the start then fails in the parent, which sees the id taken).
        """
        for table, rows in write_rows(instance_id, worker_id, write, now, version):
            if table is schema.search:
                conn.execute(self.insert_replacing(table, SEARCH_CONFLICT, SEARCH_UPDATED), rows)
            else:
                conn.execute(sa.insert(table), rows)
        for child in write.children:
            row = {"version": 0, "created_at": now, "updated_at": now, **child.values}
            inserted = conn.execute(
                self.insert_ignoring_conflict(schema.instances).values(**row)
            ).rowcount
            if inserted != 1:
                raise ChildIdTakenError(child.instance_id)
            self.insert_rows(conn, child.instance_id, None, child.write, now, 0)

    def get_instance(self, instance_id: str) -> WorkflowInstance | None:
        with self.engine.connect() as conn:
            return self._get_instance(conn, instance_id)

    def _get_instance(self, conn: Connection, instance_id: str) -> WorkflowInstance | None:
        row = conn.execute(
            sa.select(schema.instances).where(schema.instances.c.instance_id == instance_id)
        ).first()
        return instance_of(row._mapping) if row is not None else None

    def find_instances(
        self,
        status: str | Sequence[str] | None = None,
        workflow: str | None = None,
        limit: int = 100,
        *,
        parent: str | None = None,
        root: str | None = None,
        search: Mapping[str, str] | None = None,
        version: str | None = None,
        after: tuple[datetime, str] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> list[WorkflowInstance]:
        """Newest first. ``parent``: that instance's children; ``root``: every instance
        of the tree whose root (a workflow started on its own) has that id, the root
        included; ``search``: instances with every one of these business keys;
        ``version``: those started under that code version; ``created_after`` (included)
        and ``created_before`` (excluded): a time range.

        ``after``: the page after the instance with this ``(created_at, instance_id)``,
        the last of the previous page (keyset paging: as fast on the thousandth page as
        on the first, through the ``created`` indexes)."""
        t = schema.instances
        stmt = sa.select(t).order_by(t.c.created_at.desc(), t.c.instance_id).limit(limit)
        stmt = self._filtered(
            stmt, status, workflow, parent, root, search, version, created_after, created_before
        )
        if after is not None:
            created, instance_id = after
            # "<=" first: the bound the index scan starts from; the tie on created_at is
            # broken by instance_id ascending, as the order is.
            stmt = stmt.where(
                t.c.created_at <= created,
                sa.or_(t.c.created_at < created, t.c.instance_id > instance_id),
            )
        with self.engine.connect() as conn:
            return [instance_of(r._mapping) for r in conn.execute(stmt)]

    def count_by_status(
        self,
        workflow: str | None = None,
        *,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        cap: int | None = None,
    ) -> dict[str, int]:
        """How many instances are in each status (statuses with none left out). With
        ``cap``, each count stops at ``cap``: one index range per status read no further,
        so a million instances cost no more than ``cap`` each; a count equal to ``cap``
        means "at least"."""
        t = schema.instances
        counts: dict[str, int] = {}
        with self.engine.connect() as conn:
            for status in sorted(STATUSES):
                matching = self._filtered(
                    sa.select(t.c.instance_id),
                    status,
                    workflow,
                    created_after=created_after,
                    created_before=created_before,
                )
                if cap is not None:
                    matching = matching.limit(cap)
                    if created_after is not None or created_before is not None:
                        # Through the (status, created_at) index: the range read from
                        # its start, not found by scanning past rows the time leaves out.
                        matching = matching.order_by(t.c.created_at.desc())
                count = conn.execute(sa.select(sa.func.count()).select_from(matching.subquery()))
                found = int(count.scalar_one())
                if found:
                    counts[status] = found
        return counts

    @staticmethod
    def _filtered(
        stmt: sa.Select[Any],
        status: str | Sequence[str] | None = None,
        workflow: str | None = None,
        parent: str | None = None,
        root: str | None = None,
        search: Mapping[str, str] | None = None,
        version: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> sa.Select[Any]:
        """``stmt`` on the instances table, narrowed by ``find_instances``' filters."""
        t = schema.instances
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            stmt = stmt.where(t.c.status.in_(statuses))
        if workflow is not None:
            stmt = stmt.where(t.c.workflow_name == workflow)
        if version is not None:
            stmt = stmt.where(t.c.workflow_version == version)
        if parent is not None:
            stmt = stmt.where(t.c.parent_instance_id == parent)
        if root is not None:
            stmt = stmt.where(sa.or_(t.c.root_instance_id == root, t.c.instance_id == root))
        if created_after is not None:
            stmt = stmt.where(t.c.created_at >= created_after)
        if created_before is not None:
            stmt = stmt.where(t.c.created_at < created_before)
        for key, value in (search or {}).items():
            # Each pair through the (key, value) index, whatever the table's size.
            k = schema.search
            matching = sa.select(k.c.instance_id).where(k.c.key == key, k.c.value == value)
            stmt = stmt.where(t.c.instance_id.in_(matching))
        return stmt

    def get_search_attributes(self, instance_id: str) -> dict[str, str]:
        """The instance's business keys and their values, by key."""
        k = schema.search
        stmt = sa.select(k.c.key, k.c.value).where(k.c.instance_id == instance_id).order_by(k.c.key)
        with self.engine.connect() as conn:
            return {key: value for key, value in conn.execute(stmt)}

    def snapshot(self, instance_id: str, conn: Connection | None = None) -> Snapshot | None:
        """The instance, its history and its steps in flight, read in one transaction."""
        if conn is None:
            with self.transaction() as own:
                return self._snapshot(own, instance_id)
        return self._snapshot(conn, instance_id)

    def _snapshot(self, conn: Connection, instance_id: str) -> Snapshot | None:
        instance = self._get_instance(conn, instance_id)
        if instance is None:
            return None
        s = schema.steps
        now = schema.utcnow()
        rows = conn.execute(
            sa.select(*(s.c[name] for name in REF_COLUMNS)).where(s.c.instance_id == instance_id)
        )
        steps = [ref_of(*row, now=now) for row in rows]
        return Snapshot(instance, self._get_history(conn, instance_id), steps)

    def get_steps(self, instance_id: str) -> list[StepRecord]:
        """The instance's steps in flight (or parked), oldest first."""
        with self.engine.connect() as conn:
            return self._get_steps(conn, instance_id)

    def get_steps_of(self, instance_ids: Sequence[str]) -> dict[str, list[StepRecord]]:
        """The steps in flight of several instances (a page of a list), by instance."""
        s = schema.steps
        found: dict[str, list[StepRecord]] = {i: [] for i in instance_ids}
        if not instance_ids:
            return found
        stmt = (
            sa.select(s)
            .where(s.c.instance_id.in_(list(instance_ids)))
            .order_by(s.c.created_at, s.c.step_id)
        )
        with self.engine.connect() as conn:
            for row in conn.execute(stmt):
                found[row.instance_id].append(step_of(row._mapping))
        return found

    def _get_steps(self, conn: Connection, instance_id: str) -> list[StepRecord]:
        s = schema.steps
        rows = conn.execute(
            sa.select(s).where(s.c.instance_id == instance_id).order_by(s.c.created_at, s.c.step_id)
        )
        return [step_of(r._mapping) for r in rows]

    # -- what an instance recorded ----------------------------------------------------

    def get_history(self, instance_id: str) -> list[HistoryEvent]:
        with self.engine.connect() as conn:
            return self._get_history(conn, instance_id)

    def _get_history(self, conn: Connection, instance_id: str) -> list[HistoryEvent]:
        h = schema.history
        rows = conn.execute(
            sa.select(*(h.c[name] for name in HISTORY_COLUMNS))
            .where(h.c.instance_id == instance_id)
            .order_by(h.c.seq)
        )
        return [HistoryEvent(**r._mapping) for r in rows]

    def get_compensations(self, instance_id: str) -> list[CompensationRecord]:
        """Newest record first: the order a rollback undoes them in (branches of a
        gather in the order their results were recorded; within one commit, the later
        position first)."""
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
                c.c.kind,
            )
            .where(c.c.instance_id == instance_id)
            .order_by(c.c.recorded_version.desc(), c.c.seq.desc())
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
