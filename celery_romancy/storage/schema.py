"""The history schema, in one place. Migrations (``migrations/versions``) must match it.

Every per-step query goes through a primary key or a unique index, so a step costs
O(log n) in the size of the history however large it grows.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

metadata = sa.MetaData()

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every dialect.

    SQLite stores no offset; storing naive UTC keeps its text comparisons ordered.
    """

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def owned_by_instance(**options: Any) -> sa.Column[str]:
    """The ``instance_id`` of a row that belongs to an instance: deleted with it."""
    return sa.Column(
        "instance_id",
        sa.String(100),
        sa.ForeignKey("romancy_instances.instance_id", ondelete="CASCADE"),
        **options,
    )


instances = sa.Table(
    "romancy_instances",
    metadata,
    sa.Column("instance_id", sa.String(100), primary_key=True),
    sa.Column("workflow_name", sa.String(200), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("input_data", sa.JSON(none_as_null=True), nullable=False),
    sa.Column("output_data", sa.JSON(none_as_null=True)),
    sa.Column("error", sa.JSON(none_as_null=True)),
    # Raised by every transition (a step recorded, a rollback begun, a cancel): a
    # commit planned from an older history finds it moved and plans again, so two
    # branches recorded at the same moment advance the workflow exactly once.
    sa.Column("version", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cancel_reason", sa.Text),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    # A child workflow's parent, and the root of its tree (NULL for a root itself).
    sa.Column("parent_instance_id", sa.String(100)),
    sa.Column("root_instance_id", sa.String(100)),
    # A child's fate when its parent ends first: "cancel" or "abandon".
    sa.Column("parent_close", sa.String(16)),
    # The code version the instance was started under (``@romancy.workflow(name,
    # version=...)``): which old instances must drain before old code can go.
    sa.Column("workflow_version", sa.String(64)),
    # ``ctx.continue_as_new``: the run this one continues (NULL for a first run).
    sa.Column("continued_from", sa.String(100)),
    sa.Index("ix_romancy_instances_workflow_status", "workflow_name", "status"),
    # Newest first, page by page (keyset on created_at, instance_id): the dashboard and
    # ``find_instances``, with or without a status filter.
    sa.Index("ix_romancy_instances_created", "created_at", "instance_id"),
    sa.Index("ix_romancy_instances_status_created", "status", "created_at", "instance_id"),
    # Retention: finished instances by when they ended.
    sa.Index("ix_romancy_instances_status_updated", "status", "updated_at"),
    sa.Index("ix_romancy_instances_workflow_version", "workflow_name", "workflow_version"),
    sa.Index("ix_romancy_instances_continued_from", "continued_from"),
    sa.Index("ix_romancy_instances_parent", "parent_instance_id"),
    sa.Index("ix_romancy_instances_root", "root_instance_id"),
)

# The steps in flight: one row per dispatched command (an activity, a compensation, a
# timer, an event wait), deleted by the commit that records it. The branches of a
# ctx.gather are several rows of one instance at once, each with its own message
# token, lease and fencing epoch.
steps = sa.Table(
    "romancy_steps",
    metadata,
    # Names the message published for this step; a delivery with another token is stale.
    owned_by_instance(primary_key=True),
    sa.Column("token", sa.String(64), primary_key=True),
    sa.Column("step_id", sa.String(250), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("command", sa.JSON(none_as_null=True), nullable=False),
    # When the message was sent (a timer: when it fires; a wait: its timeout). NULL for
    # a step parked for an operator, and for a wait without timeout: no sweep takes it.
    sa.Column("dispatch_at", UTCDateTime()),
    sa.Column("lease_owner", sa.String(200)),
    sa.Column("lease_expires_at", UTCDateTime()),
    # Fencing: raised by every claim; a commit must still see the epoch it claimed with.
    sa.Column("epoch", sa.Integer, nullable=False, server_default="0"),
    # Claims that found the previous lease expired (its worker died or stalled): the
    # poison-step guard.
    sa.Column("takeovers", sa.Integer, nullable=False, server_default="0"),
    # Set for an event wait, so an arriving event finds its step by index. A child step
    # (the parent waiting for a child workflow, or for its undo) keeps the child's
    # instance id in wait_correlation_id and its parent_close policy in wait_event_type.
    sa.Column("wait_event_type", sa.String(200)),
    sa.Column("wait_correlation_id", sa.String(200)),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    # No index on the lease columns: a claim then changes no indexed column and is an
    # in-place (HOT) update on PostgreSQL. Waits (timers, events) are found by when they
    # are due, through this partial index; a step that runs as a task costs no index but
    # the key (the recovery sweep reads the few in flight at once, once a minute).
    sa.Index(
        "ix_romancy_steps_waits_due",
        "dispatch_at",
        postgresql_where=sa.text("kind IN ('timer', 'wait_event')"),
        sqlite_where=sa.text("kind IN ('timer', 'wait_event')"),
    ),
    # Event waits only: the other steps, most of them, cost this index nothing.
    sa.Index(
        "ix_romancy_steps_waiting",
        "wait_event_type",
        "wait_correlation_id",
        postgresql_where=sa.text("kind = 'wait_event'"),
        sqlite_where=sa.text("kind = 'wait_event'"),
    ),
)

history = sa.Table(
    "romancy_history",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    owned_by_instance(nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("step_id", sa.String(250), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("result", sa.JSON(none_as_null=True)),
    sa.Column("error", sa.JSON(none_as_null=True)),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("worker_id", sa.String(200)),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    # When the step's body began (NULL if unknown: rows recorded before 0008, records
    # that are no step), and the Celery task id that ran it (the step's token).
    sa.Column("started_at", UTCDateTime()),
    sa.Column("task_id", sa.String(64)),
    sa.UniqueConstraint("instance_id", "step_id", name="uq_romancy_history_step"),
    sa.UniqueConstraint("instance_id", "seq", name="uq_romancy_history_seq"),
)

compensations = sa.Table(
    "romancy_compensations",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    owned_by_instance(nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("step_id", sa.String(250), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("arguments", sa.JSON(none_as_null=True), nullable=False),
    # The instance version that recorded it: a rollback undoes newest record first,
    # and branches of a gather are recorded in the order they finish, not by seq.
    sa.Column("recorded_version", sa.Integer, nullable=False, server_default="0"),
    # "activity": a compensation task to run; "child": a completed child workflow to
    # undo (its own compensations run, newest first).
    sa.Column("kind", sa.String(16), nullable=False, server_default="activity"),
    # registered -> done | failed
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error", sa.JSON(none_as_null=True)),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("finished_at", UTCDateTime()),
    sa.UniqueConstraint("instance_id", "step_id", name="uq_romancy_compensations_step"),
)

attempts = sa.Table(
    "romancy_attempts",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    owned_by_instance(nullable=False),
    sa.Column("step_id", sa.String(250), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("error", sa.JSON(none_as_null=True), nullable=False),
    sa.Column("retry_in", sa.Float),
    sa.Column("worker_id", sa.String(200)),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Index("ix_romancy_attempts_step", "instance_id", "step_id", "attempt"),
)

# What operators did to an instance (cancel, resume, retry a compensation, send an
# event), who did it and from where: shown with its history, deleted with it.
operator_actions = sa.Table(
    "romancy_operator_actions",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    owned_by_instance(nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(200)),
    sa.Column("detail", sa.JSON(none_as_null=True)),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Index("ix_romancy_operator_actions_instance", "instance_id", "id"),
)

# Business keys ("order_id" = "ORD-4"): set at the start (``start_workflow(search=...)``)
# or by the workflow (``ctx.set_search_attributes``), one value per key; found through
# the (key, value) index.
search = sa.Table(
    "romancy_search",
    metadata,
    owned_by_instance(primary_key=True),
    sa.Column("key", sa.String(100), primary_key=True),
    sa.Column("value", sa.String(200), nullable=False),
    sa.Index("ix_romancy_search_key_value", "key", "value"),
)

# Events sent to workflows; kept until a matching wait consumes them.
events = sa.Table(
    "romancy_events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("event_type", sa.String(200), nullable=False),
    sa.Column("instance_id", sa.String(100)),
    sa.Column("correlation_id", sa.String(200)),
    sa.Column("data", sa.JSON(none_as_null=True)),
    # The sender's id for the event (a CloudEvent's source + id) scoped by event type and
    # target, hashed (``events.event_key``): the same event delivered twice to the same
    # target is stored once, while the same id aimed elsewhere is another event.
    sa.Column("dedupe_key", sa.String(700), unique=True),
    # sha256 of the data (set with dedupe_key): a repeat must carry the same data, or
    # it is an id reused for other content and is refused.
    sa.Column("data_hash", sa.String(64)),
    sa.Column("received_at", UTCDateTime(), nullable=False),
    sa.Column("consumed_by", sa.String(100)),
    sa.Column("consumed_at", UTCDateTime()),
    sa.Index("ix_romancy_events_instance", "instance_id", "event_type", "consumed_by"),
    sa.Index("ix_romancy_events_correlation", "correlation_id", "event_type", "consumed_by"),
    # The retention purge finds old events by this index.
    sa.Index("ix_romancy_events_received", "received_at"),
)

# The transactional outbox: rows commit with a step, a beat job relays them.
outbox = sa.Table(
    "romancy_outbox",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(300), nullable=False, unique=True),
    sa.Column("event_type", sa.String(200), nullable=False),
    sa.Column("instance_id", sa.String(100), nullable=False),
    sa.Column("data", sa.JSON(none_as_null=True)),
    # pending -> in_progress (locked until available_at) -> published
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("available_at", UTCDateTime(), nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("published_at", UTCDateTime()),
    sa.Index("ix_romancy_outbox_status_available", "status", "available_at"),
    # An instance's events (the dashboard's instance page, retention).
    sa.Index("ix_romancy_outbox_instance", "instance_id"),
)
