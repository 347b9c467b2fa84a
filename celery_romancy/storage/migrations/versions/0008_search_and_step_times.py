"""business keys (romancy_search); history rows know when their step began and which
Celery task ran it

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from celery_romancy.storage.schema import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "romancy_search",
        sa.Column(
            "instance_id",
            sa.String(100),
            sa.ForeignKey("romancy_instances.instance_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("key", sa.String(100), primary_key=True),
        sa.Column("value", sa.String(200), nullable=False),
    )
    op.create_index("ix_romancy_search_key_value", "romancy_search", ["key", "value"])
    # Nullable columns only: SQLite adds them in place, no table is rebuilt.
    with op.batch_alter_table("romancy_history") as batch:
        batch.add_column(sa.Column("started_at", UTCDateTime()))
        batch.add_column(sa.Column("task_id", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("romancy_history") as batch:
        batch.drop_column("task_id")
        batch.drop_column("started_at")
    op.drop_index("ix_romancy_search_key_value", table_name="romancy_search")
    op.drop_table("romancy_search")
