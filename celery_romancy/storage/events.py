"""Events kept for waits: stored once per sender's id, taken by one wait each."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from . import schema
from .base import StoreBase
from .chains import keep_events_with_current_run
from .records import EventRecord


class EventQueries(StoreBase):
    def insert_event(self, values: dict[str, Any]) -> bool:
        """Keep an event for a wait; False if its dedupe key was stored already. One
        for a run that has continued (``ctx.continue_as_new``) is kept for its chain's
        current run."""
        row = {"received_at": schema.utcnow(), **values}
        with self.transaction() as conn:
            if row.get("dedupe_key") is None:
                conn.execute(sa.insert(schema.events).values(**row))
            else:
                insert = self.insert_ignoring_conflict(schema.events).values(**row)
                if conn.execute(insert).rowcount != 1:
                    return False
            if row.get("instance_id") is not None:
                keep_events_with_current_run(conn, row["instance_id"])
            return True

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
