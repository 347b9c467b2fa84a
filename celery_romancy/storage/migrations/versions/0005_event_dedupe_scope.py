"""events: deduplicate within the event's type and target, remember a hash of the data
(a reused id with other data is refused, not taken for a repeat), and index received_at
for the retention purge

Keys kept before this revision were "<source> <id>"; they are rewritten to the new
scoped, hashed form so that a redelivery of an event received before the upgrade is
still recognised. The downgrade keeps the new keys (the old ones cannot be rebuilt).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BATCH = 1000

events = sa.table(
    "romancy_events",
    sa.column("id", sa.BigInteger()),
    sa.column("event_type", sa.String()),
    sa.column("instance_id", sa.String()),
    sa.column("correlation_id", sa.String()),
    sa.column("data", sa.JSON(none_as_null=True)),
    sa.column("dedupe_key", sa.String()),
    sa.column("data_hash", sa.String()),
)


def upgrade() -> None:
    with op.batch_alter_table("romancy_events") as batch_op:
        batch_op.add_column(sa.Column("data_hash", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_romancy_events_received", ["received_at"])
    _rekey_kept_events()


def downgrade() -> None:
    with op.batch_alter_table("romancy_events") as batch_op:
        batch_op.drop_index("ix_romancy_events_received")
        batch_op.drop_column("data_hash")


def _rekey_kept_events() -> None:
    bind = op.get_bind()
    last_id = 0
    while True:
        rows = bind.execute(
            sa.select(events)
            .where(events.c.id > last_id, events.c.dedupe_key.is_not(None))
            .order_by(events.c.id)
            .limit(BATCH)
        ).all()
        for row in rows:
            bind.execute(
                sa.update(events)
                .where(events.c.id == row.id)
                .values(dedupe_key=_scoped_key(row), data_hash=_data_hash(row.data))
            )
        if len(rows) < BATCH:
            return
        last_id = rows[-1].id


# Frozen copies of celery_romancy.events.event_key / payload_hash as of this revision
# (a migration must not change when the package's code does).
def _scoped_key(row: Any) -> str:
    sender_id = json.dumps(row.dedupe_key.split(" ", 1))  # was "<source> <id>"
    scope = json.dumps([sender_id, row.event_type, row.instance_id, row.correlation_id])
    return hashlib.sha256(scope.encode()).hexdigest()


def _data_hash(data: Any) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
