"""Events kept for waits: stored once per sender's id, taken by one wait each."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from . import schema
from .base import StoreBase
from .records import EventRecord


class EventQueries(StoreBase):
    def insert_event(self, values: dict[str, Any]) -> bool:
        """Keep an event for a wait; False if its dedupe key was stored already."""
        row = {"received_at": schema.utcnow(), **values}
        with self.transaction() as conn:
            if row.get("dedupe_key") is None:
                conn.execute(sa.insert(schema.events).values(**row))
                return True
            result = conn.execute(self.insert_ignoring_conflict(schema.events).values(**row))
            return bool(result.rowcount == 1)

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
