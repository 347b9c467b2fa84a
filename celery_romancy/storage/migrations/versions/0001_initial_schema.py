"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-21 10:56:08.124824
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "romancy_instances",
        sa.Column("instance_id", sa.String(length=100), nullable=False),
        sa.Column("workflow_name", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("input_data", sa.JSON(none_as_null=True), nullable=False),
        sa.Column("output_data", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("error", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("pending", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("dispatch_token", sa.String(length=64), nullable=True),
        sa.Column("dispatch_at", sa.DateTime(), nullable=True),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=True),
        sa.Column("epoch", sa.Integer(), server_default="0", nullable=False),
        sa.Column("cancel_reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("instance_id"),
    )
    with op.batch_alter_table("romancy_instances", schema=None) as batch_op:
        batch_op.create_index("ix_romancy_instances_created", ["created_at"], unique=False)
        batch_op.create_index(
            "ix_romancy_instances_status_dispatch",
            ["status", "dispatch_at"],
            unique=False,
        )
        batch_op.create_index(
            "ix_romancy_instances_status_lease",
            ["status", "lease_expires_at"],
            unique=False,
        )
        batch_op.create_index(
            "ix_romancy_instances_workflow_status",
            ["workflow_name", "status"],
            unique=False,
        )

    op.create_table(
        "romancy_attempts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("instance_id", sa.String(length=100), nullable=False),
        sa.Column("step_id", sa.String(length=250), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("error", sa.JSON(none_as_null=True), nullable=False),
        sa.Column("retry_in", sa.Float(), nullable=True),
        sa.Column("worker_id", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["instance_id"], ["romancy_instances.instance_id"], ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("romancy_attempts", schema=None) as batch_op:
        batch_op.create_index(
            "ix_romancy_attempts_step",
            ["instance_id", "step_id", "attempt"],
            unique=False,
        )

    op.create_table(
        "romancy_compensations",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("instance_id", sa.String(length=100), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("step_id", sa.String(length=250), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("arguments", sa.JSON(none_as_null=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["instance_id"], ["romancy_instances.instance_id"], ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("instance_id", "step_id", name="uq_romancy_compensations_step"),
    )
    op.create_table(
        "romancy_history",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("instance_id", sa.String(length=100), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("step_id", sa.String(length=250), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("result", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("error", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["instance_id"], ["romancy_instances.instance_id"], ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("instance_id", "seq", name="uq_romancy_history_seq"),
        sa.UniqueConstraint("instance_id", "step_id", name="uq_romancy_history_step"),
    )


def downgrade() -> None:

    op.drop_table("romancy_history")
    op.drop_table("romancy_compensations")
    with op.batch_alter_table("romancy_attempts", schema=None) as batch_op:
        batch_op.drop_index("ix_romancy_attempts_step")

    op.drop_table("romancy_attempts")
    with op.batch_alter_table("romancy_instances", schema=None) as batch_op:
        batch_op.drop_index("ix_romancy_instances_workflow_status")
        batch_op.drop_index("ix_romancy_instances_status_lease")
        batch_op.drop_index("ix_romancy_instances_status_dispatch")
        batch_op.drop_index("ix_romancy_instances_created")

    op.drop_table("romancy_instances")
