"""code versions and continue-as-new runs on instances; indexes for newest-first pages
and for retention; an index of each instance's outbox rows; the operators' actions on an instance

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from celery_romancy.storage.schema import BigId, UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("romancy_instances") as batch:
        batch.add_column(sa.Column("workflow_version", sa.String(64)))
        batch.add_column(sa.Column("continued_from", sa.String(100)))
        batch.drop_index("ix_romancy_instances_created")
        batch.create_index("ix_romancy_instances_created", ["created_at", "instance_id"])
        batch.create_index(
            "ix_romancy_instances_status_created", ["status", "created_at", "instance_id"]
        )
        batch.create_index("ix_romancy_instances_status_updated", ["status", "updated_at"])
        batch.create_index(
            "ix_romancy_instances_workflow_version", ["workflow_name", "workflow_version"]
        )
        batch.create_index("ix_romancy_instances_continued_from", ["continued_from"])
    op.create_index("ix_romancy_outbox_instance", "romancy_outbox", ["instance_id"])
    op.create_table(
        "romancy_operator_actions",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column(
            "instance_id",
            sa.String(100),
            sa.ForeignKey("romancy_instances.instance_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(200)),
        sa.Column("detail", sa.JSON(none_as_null=True)),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index(
        "ix_romancy_operator_actions_instance", "romancy_operator_actions", ["instance_id", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_romancy_operator_actions_instance", table_name="romancy_operator_actions")
    op.drop_table("romancy_operator_actions")
    op.drop_index("ix_romancy_outbox_instance", table_name="romancy_outbox")
    with op.batch_alter_table("romancy_instances") as batch:
        batch.drop_index("ix_romancy_instances_continued_from")
        batch.drop_index("ix_romancy_instances_workflow_version")
        batch.drop_index("ix_romancy_instances_status_updated")
        batch.drop_index("ix_romancy_instances_status_created")
        batch.drop_index("ix_romancy_instances_created")
        batch.create_index("ix_romancy_instances_created", ["created_at"])
        batch.drop_column("continued_from")
        batch.drop_column("workflow_version")
