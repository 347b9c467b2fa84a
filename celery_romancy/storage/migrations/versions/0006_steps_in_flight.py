"""steps in flight move from the instance row to romancy_steps (parallel branches)

Each instance's one ``pending`` command, with its token, lease, epoch and takeovers,
becomes a row of ``romancy_steps``; a queued message (instance id + token) still finds
its step. The instance keeps a ``version`` raised by every transition.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

from celery_romancy.storage.schema import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

MOVED = (
    "pending",
    "dispatch_token",
    "dispatch_at",
    "lease_owner",
    "lease_expires_at",
    "step_takeovers",
    "wait_event_type",
    "wait_correlation_id",
)
PARKED = ("failed", "compensation_failed", "completed", "cancelled")


def upgrade() -> None:
    steps = op.create_table(
        "romancy_steps",
        sa.Column(
            "instance_id",
            sa.String(100),
            sa.ForeignKey("romancy_instances.instance_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("token", sa.String(64), primary_key=True),
        sa.Column("step_id", sa.String(250), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("command", sa.JSON(none_as_null=True), nullable=False),
        sa.Column("dispatch_at", UTCDateTime()),
        sa.Column("lease_owner", sa.String(200)),
        sa.Column("lease_expires_at", UTCDateTime()),
        sa.Column("epoch", sa.Integer, nullable=False, server_default="0"),
        sa.Column("takeovers", sa.Integer, nullable=False, server_default="0"),
        sa.Column("wait_event_type", sa.String(200)),
        sa.Column("wait_correlation_id", sa.String(200)),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index(
        "ix_romancy_steps_waits_due",
        "romancy_steps",
        ["dispatch_at"],
        postgresql_where=sa.text("kind IN ('timer', 'wait_event')"),
        sqlite_where=sa.text("kind IN ('timer', 'wait_event')"),
    )
    op.create_index(
        "ix_romancy_steps_waiting",
        "romancy_steps",
        ["wait_event_type", "wait_correlation_id"],
        postgresql_where=sa.text("kind = 'wait_event'"),
        sqlite_where=sa.text("kind = 'wait_event'"),
    )
    instances = sa.table(
        "romancy_instances",
        sa.column("instance_id"),
        sa.column("status"),
        sa.column("pending", sa.JSON(none_as_null=True)),
        sa.column("dispatch_token"),
        sa.column("dispatch_at", UTCDateTime()),
        sa.column("lease_owner"),
        sa.column("lease_expires_at", UTCDateTime()),
        sa.column("epoch"),
        sa.column("step_takeovers"),
        sa.column("wait_event_type"),
        sa.column("wait_correlation_id"),
        sa.column("created_at", UTCDateTime()),
    )
    bind = op.get_bind()
    in_flight = bind.execute(sa.select(instances).where(instances.c.pending.is_not(None)))
    rows = [
        {
            "token": row.dispatch_token or uuid.uuid4().hex,
            "instance_id": row.instance_id,
            "step_id": row.pending["step_id"],
            "kind": row.pending["kind"],
            "command": row.pending,
            # A parked step waits for an operator: no sweep may re-send it.
            "dispatch_at": None if row.status in PARKED else row.dispatch_at,
            "lease_owner": row.lease_owner,
            "lease_expires_at": row.lease_expires_at,
            "epoch": row.epoch,
            "takeovers": row.step_takeovers,
            "wait_event_type": row.wait_event_type,
            "wait_correlation_id": row.wait_correlation_id,
            "created_at": row.created_at,
        }
        for row in in_flight
    ]
    if rows:
        op.bulk_insert(steps, rows)
    with op.batch_alter_table("romancy_compensations") as batch_op:
        batch_op.add_column(
            sa.Column("recorded_version", sa.Integer(), server_default="0", nullable=False)
        )
    with op.batch_alter_table("romancy_instances") as batch_op:
        batch_op.drop_index("ix_romancy_instances_status_dispatch")
        batch_op.drop_index("ix_romancy_instances_waiting")
        for column in MOVED:
            batch_op.drop_column(column)
        batch_op.alter_column("epoch", new_column_name="version")


def downgrade() -> None:
    """Back to one ``pending`` command per instance: the oldest step in flight is kept;
    other branches of a gather in flight cannot be represented and are dropped."""
    with op.batch_alter_table("romancy_instances") as batch_op:
        batch_op.alter_column("version", new_column_name="epoch")
        batch_op.add_column(sa.Column("pending", sa.JSON(none_as_null=True)))
        batch_op.add_column(sa.Column("dispatch_token", sa.String(64)))
        batch_op.add_column(sa.Column("dispatch_at", UTCDateTime()))
        batch_op.add_column(sa.Column("lease_owner", sa.String(200)))
        batch_op.add_column(sa.Column("lease_expires_at", UTCDateTime()))
        batch_op.add_column(
            sa.Column("step_takeovers", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("wait_event_type", sa.String(200)))
        batch_op.add_column(sa.Column("wait_correlation_id", sa.String(200)))
        batch_op.create_index("ix_romancy_instances_status_dispatch", ["status", "dispatch_at"])
        batch_op.create_index(
            "ix_romancy_instances_waiting", ["wait_event_type", "wait_correlation_id"]
        )
    steps = sa.table(
        "romancy_steps",
        *(
            sa.column(name)
            for name in ("instance_id", "token", "lease_owner", "epoch", "takeovers")
        ),
        sa.column("command", sa.JSON(none_as_null=True)),
        sa.column("dispatch_at", UTCDateTime()),
        sa.column("lease_expires_at", UTCDateTime()),
        sa.column("wait_event_type"),
        sa.column("wait_correlation_id"),
        sa.column("created_at", UTCDateTime()),
    )
    instances = sa.table(
        "romancy_instances",
        sa.column("instance_id"),
        sa.column("pending", sa.JSON(none_as_null=True)),
        sa.column("dispatch_token"),
        sa.column("dispatch_at", UTCDateTime()),
        sa.column("lease_owner"),
        sa.column("lease_expires_at", UTCDateTime()),
        sa.column("epoch"),
        sa.column("step_takeovers"),
        sa.column("wait_event_type"),
        sa.column("wait_correlation_id"),
    )
    bind = op.get_bind()
    folded: set[str] = set()
    for step in bind.execute(sa.select(steps).order_by(steps.c.created_at)).all():
        if step.instance_id in folded:
            continue
        folded.add(step.instance_id)
        bind.execute(
            sa.update(instances)
            .where(instances.c.instance_id == step.instance_id)
            .values(
                pending=step.command,
                dispatch_token=step.token,
                dispatch_at=step.dispatch_at,
                lease_owner=step.lease_owner,
                lease_expires_at=step.lease_expires_at,
                step_takeovers=step.takeovers,
                wait_event_type=step.wait_event_type,
                wait_correlation_id=step.wait_correlation_id,
            )
        )
    with op.batch_alter_table("romancy_compensations") as batch_op:
        batch_op.drop_column("recorded_version")
    op.drop_table("romancy_steps")
