"""Chains of runs (``ctx.continue_as_new``): each run names the one it continues.

A run that continued has status ``continued``; its next run has ``continued_from`` set
to its id. Addressing any run of a chain (``wait``, ``result``, ``send_event``,
``cancel``) reaches the run that holds the chain now, found by following those links
forward through their index, in one recursive query.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..states import Status, StepKind
from . import schema
from .base import StoreBase
from .records import WorkflowInstance


def last_run_id(conn: Connection, instance_id: str) -> str:
    """The newest run of ``instance_id``'s chain (``instance_id`` itself if it never
    continued, or is unknown)."""
    t = schema.instances
    chain = (
        sa.select(t.c.instance_id, sa.literal(0).label("depth"))
        .where(t.c.instance_id == instance_id)
        .cte("romancy_chain", recursive=True)
    )
    later = t.alias("later")
    chain = chain.union_all(
        sa.select(later.c.instance_id, chain.c.depth + 1).where(
            later.c.continued_from == chain.c.instance_id
        )
    )
    stmt = sa.select(chain.c.instance_id).order_by(chain.c.depth.desc()).limit(1)
    found = conn.execute(stmt).scalar()
    return instance_id if found is None else str(found)


def keep_events_with_current_run(conn: Connection, run_id: str) -> None:
    """Move the unconsumed events kept for ``run_id`` to its chain's current run, if it
    continued; called in the transaction that stored an event for ``run_id``.

    A run that continues moves its unconsumed events in the commit that ends it. An
    event stored meanwhile for it is moved here: the share lock waits for such a commit
    (PostgreSQL; on SQLite the event's insert already holds the write lock), so either
    that commit sees this event, or this sees the run continued.
    """
    t, e = schema.instances, schema.events
    while True:
        status = conn.execute(
            sa.select(t.c.status).where(t.c.instance_id == run_id).with_for_update(read=True)
        ).scalar()
        if status != Status.CONTINUED:
            return
        current = last_run_id(conn, run_id)
        conn.execute(
            sa.update(e)
            .where(e.c.instance_id == run_id, e.c.consumed_by.is_(None))
            .values(instance_id=current)
        )
        run_id = current  # which may have continued too, since it was read


def hand_over(conn: Connection, run: WorkflowInstance, next_run_id: str) -> None:
    """What else the commit that ends ``run`` as continued changes: its unconsumed
    events move to the next run, and its parent's step that waits for it (a child
    workflow's) waits for the next run instead: the parent is woken by, cancels and
    undoes the run that holds the chain, with no chain to follow."""
    e, s = schema.events, schema.steps
    conn.execute(
        sa.update(e)
        .where(e.c.instance_id == run.instance_id, e.c.consumed_by.is_(None))
        .values(instance_id=next_run_id)
    )
    if run.parent_instance_id is not None:
        conn.execute(
            sa.update(s)
            .where(
                s.c.instance_id == run.parent_instance_id,
                s.c.kind == str(StepKind.CHILD),
                s.c.wait_correlation_id == run.instance_id,
            )
            .values(wait_correlation_id=next_run_id)
        )


class ChainQueries(StoreBase):
    def last_run(self, instance_id: str) -> str:
        """The run that holds ``instance_id``'s chain now (itself if it never continued)."""
        with self.engine.connect() as conn:
            return last_run_id(conn, instance_id)
