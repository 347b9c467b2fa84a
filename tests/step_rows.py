"""Rewriting stored steps to look mid-flight (a dead worker's lease, a lost message)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from celery_romancy.storage import Store
from celery_romancy.storage.schema import steps


def set_steps(store: Store, instance_id: str, **values: Any) -> int:
    """Set columns of every step in flight of an instance; how many there were."""
    with store.transaction() as conn:
        result = conn.execute(
            sa.update(steps).where(steps.c.instance_id == instance_id).values(**values)
        )
        return int(result.rowcount)
