"""drop the (status, lease_expires_at) index: no query needs it, and without it a claim
changes no indexed column, so PostgreSQL can update the row in place (HOT)

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("romancy_instances") as batch_op:
        batch_op.drop_index("ix_romancy_instances_status_lease")


def downgrade() -> None:
    with op.batch_alter_table("romancy_instances") as batch_op:
        batch_op.create_index(
            "ix_romancy_instances_status_lease", ["status", "lease_expires_at"], unique=False
        )
