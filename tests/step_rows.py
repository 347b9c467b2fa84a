"""Rewriting stored steps to look mid-flight (a dead worker's lease, a lost message)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from celery_romancy.storage import Store
from celery_romancy.storage.schema import instances, steps


def set_steps(store: Store, instance_id: str, **values: Any) -> int:
    """Set columns of every step in flight of an instance; how many there were."""
    with store.transaction() as conn:
        result = conn.execute(
            sa.update(steps).where(steps.c.instance_id == instance_id).values(**values)
        )
        return int(result.rowcount)


def set_instance(store: Store, instance_id: str, **values: Any) -> None:
    """Set columns of an instance's row, as if it had moved on."""
    with store.transaction() as conn:
        conn.execute(
            sa.update(instances).where(instances.c.instance_id == instance_id).values(**values)
        )
