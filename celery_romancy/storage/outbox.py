"""The transactional outbox: rows committed with a step, relayed right after that commit
by the process that made it, and by a beat job for the rows a crash left behind."""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from . import schema
from .base import StoreBase
from .records import OutboxRecord
from .rows import outbox_of


class OutboxQueries(StoreBase):
    def claim_outbox(
        self, lock_seconds: float, limit: int, event_ids: Collection[str] | None = None
    ) -> list[OutboxRecord]:
        """Take due outbox rows for relaying: pending ones whose retry time has come, and
        in-progress ones whose relayer died (their lock ran out); only those of
        ``event_ids`` if given (the rows a commit just wrote)."""
        o = schema.outbox
        now = schema.utcnow()
        stmt = sa.select(o).where(
            o.c.status.in_(["pending", "in_progress"]), o.c.available_at <= now
        )
        if event_ids is not None:
            if not event_ids:
                return []
            stmt = stmt.where(o.c.event_id.in_(list(event_ids)))
        stmt = stmt.order_by(o.c.id).limit(limit)
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
                    taken.append(outbox_of(row._mapping, attempts=row.attempts + 1))
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
            return [outbox_of(r._mapping) for r in conn.execute(stmt)]
