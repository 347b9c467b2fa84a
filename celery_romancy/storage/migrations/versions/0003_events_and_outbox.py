"""events kept for waiting workflows, and the transactional outbox

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("romancy_instances") as batch_op:
        batch_op.add_column(sa.Column("wait_event_type", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("wait_correlation_id", sa.String(length=200), nullable=True))
        batch_op.create_index(
            "ix_romancy_instances_waiting", ["wait_event_type", "wait_correlation_id"]
        )
    op.create_table(
        "romancy_events",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("event_type", sa.String(length=200), nullable=False),
        sa.Column("instance_id", sa.String(length=100), nullable=True),
        sa.Column("correlation_id", sa.String(length=200), nullable=True),
        sa.Column("data", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("dedupe_key", sa.String(length=700), nullable=True),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("consumed_by", sa.String(length=100), nullable=True),
        sa.Column("consumed_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dedupe_key"),
    )
    op.create_index(
        "ix_romancy_events_instance", "romancy_events", ["instance_id", "event_type", "consumed_by"]
    )
    op.create_index(
        "ix_romancy_events_correlation",
        "romancy_events",
        ["correlation_id", "event_type", "consumed_by"],
    )
    op.create_table(
        "romancy_outbox",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=300), nullable=False),
        sa.Column("event_type", sa.String(length=200), nullable=False),
        sa.Column("instance_id", sa.String(length=100), nullable=False),
        sa.Column("data", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("available_at", sa.DateTime(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("published_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index(
        "ix_romancy_outbox_status_available", "romancy_outbox", ["status", "available_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_romancy_outbox_status_available", table_name="romancy_outbox")
    op.drop_table("romancy_outbox")
    op.drop_index("ix_romancy_events_correlation", table_name="romancy_events")
    op.drop_index("ix_romancy_events_instance", table_name="romancy_events")
    op.drop_table("romancy_events")
    with op.batch_alter_table("romancy_instances") as batch_op:
        batch_op.drop_index("ix_romancy_instances_waiting")
        batch_op.drop_column("wait_correlation_id")
        batch_op.drop_column("wait_event_type")
