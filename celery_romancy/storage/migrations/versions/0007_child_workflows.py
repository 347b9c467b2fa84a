"""child workflows: an instance knows its parent and its tree's root; compensations
know whether they undo an activity or a child workflow

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("romancy_instances") as batch:
        batch.add_column(sa.Column("parent_instance_id", sa.String(100)))
        batch.add_column(sa.Column("root_instance_id", sa.String(100)))
        batch.add_column(sa.Column("parent_close", sa.String(16)))
        batch.create_index("ix_romancy_instances_parent", ["parent_instance_id"])
        batch.create_index("ix_romancy_instances_root", ["root_instance_id"])
    with op.batch_alter_table("romancy_compensations") as batch:
        batch.add_column(
            sa.Column("kind", sa.String(16), nullable=False, server_default="activity")
        )


def downgrade() -> None:
    with op.batch_alter_table("romancy_compensations") as batch:
        batch.drop_column("kind")
    with op.batch_alter_table("romancy_instances") as batch:
        batch.drop_index("ix_romancy_instances_root")
        batch.drop_index("ix_romancy_instances_parent")
        batch.drop_column("parent_close")
        batch.drop_column("root_instance_id")
        batch.drop_column("parent_instance_id")
