"""What operators did to an instance (cancel, resume, retry a compensation, send an
event) and who did it: kept beside its history, deleted with it."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from . import schema
from .base import StoreBase
from .records import OperatorAction


class OperatorQueries(StoreBase):
    def record_operator_action(
        self, instance_id: str, action: str, actor: str | None, detail: Any = None
    ) -> None:
        """Note that ``actor`` did ``action`` to the instance (``detail``: JSON, e.g. the
        reason of a cancel)."""
        row = {
            "instance_id": instance_id,
            "action": action,
            "actor": actor,
            "detail": detail,
            "created_at": schema.utcnow(),
        }
        with self.transaction() as conn:
            conn.execute(sa.insert(schema.operator_actions).values(**row))

    def get_operator_actions(self, instance_id: str) -> list[OperatorAction]:
        """Oldest first."""
        a = schema.operator_actions
        stmt = (
            sa.select(a.c.action, a.c.actor, a.c.detail, a.c.created_at)
            .where(a.c.instance_id == instance_id)
            .order_by(a.c.id)
        )
        with self.engine.connect() as conn:
            return [OperatorAction(**r._mapping) for r in conn.execute(stmt)]
