"""The queries behind the beat jobs: lost or stalled steps, due timers, missed events.

Waits are found by index (when they are due, what they wait for); the steps that run as
tasks, few at any time, by a scan of those in flight.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

import sqlalchemy as sa

from ..states import ACTIVE, TERMINAL, StepKind
from . import schema
from .base import StoreBase
from .records import StepRecord, WorkflowInstance
from .rows import instance_of, step_of

_TASK_KINDS = [str(StepKind.ACTIVITY), str(StepKind.COMPENSATION)]
# Literals, not bound values: the planners can then use the partial indexes on waits.
_IS_WAIT = schema.steps.c.kind.in_(
    [sa.literal_column(f"'{StepKind.TIMER}'"), sa.literal_column(f"'{StepKind.WAIT_EVENT}'")]
)
_IS_EVENT_WAIT = schema.steps.c.kind == sa.literal_column(f"'{StepKind.WAIT_EVENT}'")
_CHILD_KINDS = [str(StepKind.CHILD), str(StepKind.UNDO_CHILD)]


class SweptStep(NamedTuple):
    workflow_name: str
    step: StepRecord


def _with_workflow() -> sa.Select[tuple[sa.Row[tuple[str]], ...]]:
    s, t = schema.steps, schema.instances
    return sa.select(s, t.c.workflow_name.label("workflow_name")).join(
        t, t.c.instance_id == s.c.instance_id
    )


class SweepQueries(StoreBase):
    def take_overdue(self, stale_before: datetime, limit: int) -> list[SweptStep]:
        """Steps whose message is presumed lost, marked as re-sent.

        Overdue: dispatched before ``stale_before`` and either never picked up or picked up
        by a worker whose lease has since expired (it died mid-step). ``dispatch_at`` is
        moved to now for each one returned, so the next sweep leaves it alone for another
        period; on PostgreSQL, SKIP LOCKED keeps concurrent sweepers off the same rows.
        Parked steps (``dispatch_at`` NULL) are never taken.
        """
        s = schema.steps
        now = schema.utcnow()
        stmt = (
            sa.select(s)
            .where(
                s.c.kind.in_(_TASK_KINDS),
                s.c.dispatch_at < stale_before,
                sa.or_(s.c.lease_owner.is_(None), s.c.lease_expires_at < now),
            )
            .order_by(s.c.dispatch_at)
            .limit(limit)
        )
        taken: list[StepRecord] = []
        with self.transaction() as conn:
            for row in conn.execute(self.lock_for_update(stmt)).all():
                marked = conn.execute(
                    sa.update(s)
                    .where(
                        s.c.instance_id == row.instance_id,
                        s.c.token == row.token,
                        s.c.dispatch_at == row.dispatch_at,
                    )
                    .values(dispatch_at=now)
                )
                if marked.rowcount == 1:
                    taken.append(step_of(row._mapping))
            return self._named(conn, taken)

    def due_waits(self, now: datetime, limit: int) -> list[SweptStep]:
        """Timers and event waits whose time (the timer, the timeout) has come."""
        s = schema.steps
        stmt = (
            _with_workflow()
            .where(_IS_WAIT, s.c.dispatch_at <= now)
            .order_by(s.c.dispatch_at)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [SweptStep(r.workflow_name, step_of(r._mapping)) for r in conn.execute(stmt)]

    def waiting_for(
        self, event_type: str, instance_id: str | None, correlation_id: str | None
    ) -> list[SweptStep]:
        """Event waits that an event of ``event_type`` so addressed would reach."""
        s = schema.steps
        stmt = _with_workflow().where(_IS_EVENT_WAIT, s.c.wait_event_type == event_type)
        if instance_id is not None:
            stmt = stmt.where(s.c.instance_id == instance_id)
        else:
            stmt = stmt.where(s.c.wait_correlation_id == correlation_id)
        with self.engine.connect() as conn:
            return [
                SweptStep(r.workflow_name, step_of(r._mapping))
                for r in conn.execute(stmt.limit(1000))
            ]

    def waiting_with_kept_events(self, limit: int) -> list[SweptStep]:
        """Event waits for which a matching event is already kept."""
        s, e = schema.steps, schema.events
        kept = (
            sa.select(e.c.id)
            .where(
                e.c.event_type == s.c.wait_event_type,
                e.c.consumed_by.is_(None),
                sa.or_(
                    e.c.instance_id == s.c.instance_id,
                    e.c.correlation_id == s.c.wait_correlation_id,
                ),
            )
            .exists()
        )
        stmt = _with_workflow().where(_IS_EVENT_WAIT, kept).limit(limit)
        with self.engine.connect() as conn:
            return [SweptStep(r.workflow_name, step_of(r._mapping)) for r in conn.execute(stmt)]

    def child_steps_behind(
        self, stale_before: datetime, limit: int
    ) -> list[tuple[StepRecord, WorkflowInstance]]:
        """Parents' child steps older than ``stale_before`` whose child has ended (the
        wake after its last commit was lost) or, for an undo, is still ``completed``
        (the undo was never begun), each with the child's row."""
        s, c = schema.steps, schema.instances
        stmt = (
            sa.select(s, *(col.label(f"c_{col.name}") for col in c.columns))
            .join(c, c.c.instance_id == s.c.wait_correlation_id)
            .where(
                s.c.kind.in_(_CHILD_KINDS),
                s.c.dispatch_at < stale_before,
                c.c.status.in_([str(x) for x in TERMINAL]),
            )
            .limit(limit)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        prefix = {f"c_{col.name}": col.name for col in c.columns}
        return [
            (
                step_of(r._mapping),
                instance_of({name: r._mapping[key] for key, name in prefix.items()}),
            )
            for r in rows
        ]

    def children_to_cancel(self, limit: int) -> list[str]:
        """Running children (``parent_close="cancel"``) whose parent has ended, rolls
        back or is being cancelled: the cancel after the parent's commit was lost."""
        child, parent = schema.instances.alias("child"), schema.instances.alias("parent")
        active = [str(x) for x in ACTIVE]
        stmt = (
            sa.select(child.c.instance_id)
            .join(parent, parent.c.instance_id == child.c.parent_instance_id)
            .where(
                child.c.parent_instance_id.is_not(None),
                child.c.status.in_(active),
                child.c.parent_close == "cancel",
                child.c.cancel_reason.is_(None),
                sa.or_(parent.c.status.not_in(active), parent.c.cancel_reason.is_not(None)),
            )
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return list(conn.execute(stmt).scalars())

    def _named(self, conn: sa.Connection, steps: list[StepRecord]) -> list[SweptStep]:
        if not steps:
            return []
        t = schema.instances
        names = dict(
            conn.execute(
                sa.select(t.c.instance_id, t.c.workflow_name).where(
                    t.c.instance_id.in_({step.instance_id for step in steps})
                )
            ).all()
        )
        return [SweptStep(names[step.instance_id], step) for step in steps]
