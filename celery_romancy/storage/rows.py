"""Rows to and from the tables: what a write inserts, what a read returns."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from ..commands import ActivityCommand
from ..states import HistoryKind, StepKind
from . import schema
from .records import OutboxRecord, StepRecord, StepRef, StepWrite, WorkflowInstance

_INSTANCE_COLUMNS = [c.name for c in schema.instances.columns]
_STEP_COLUMNS = [c.name for c in schema.steps.columns]
# What a snapshot reads of each step in flight, in ``ref_of``'s order (token, step id,
# kind, lease expiry, wait columns).
REF_COLUMNS = (
    "token",
    "step_id",
    "kind",
    "lease_expires_at",
    "wait_event_type",
    "wait_correlation_id",
)


def instance_of(mapping: Any) -> WorkflowInstance:
    return WorkflowInstance(**{name: mapping[name] for name in _INSTANCE_COLUMNS})


def step_of(mapping: Any, prefix: str = "") -> StepRecord:
    values = {name: mapping[prefix + name] for name in _STEP_COLUMNS}
    values["kind"] = StepKind(values["kind"])
    values["command"] = ActivityCommand.from_json(values["command"])
    return StepRecord(**values)


def ref_of(
    token: str,
    step_id: str,
    kind: str,
    lease_expires_at: datetime | None,
    wait_event_type: str | None,
    wait_correlation_id: str | None,
    *,
    now: datetime,
) -> StepRef:
    """A step in flight as a transition sees it, from its ``REF_COLUMNS``."""
    step_kind = StepKind(kind)
    ref = StepRef(token, step_id, step_kind, leased(lease_expires_at, now))
    if step_kind in (StepKind.CHILD, StepKind.UNDO_CHILD):
        # See the steps table: a child step keeps its child and policy in the wait columns.
        abandon = wait_event_type == "abandon"
        return StepRef(ref.token, step_id, step_kind, ref.leased, wait_correlation_id, abandon)
    return ref


def leased(lease_expires_at: datetime | None, now: datetime) -> bool:
    """A worker holds the step: its lease has not run out."""
    return lease_expires_at is not None and lease_expires_at > now


def ref_from_json(item: list[Any], now: datetime) -> StepRef:
    """A step from PostgreSQL's ``json_build_array`` of its ``REF_COLUMNS``."""
    token, step_id, kind, expires, wait_type, wait_id = item
    expires_at = datetime.fromisoformat(expires).replace(tzinfo=UTC) if expires else None
    return ref_of(token, step_id, kind, expires_at, wait_type, wait_id, now=now)


def outbox_of(mapping: Any, **overrides: Any) -> OutboxRecord:
    names = (
        "id",
        "event_id",
        "event_type",
        "instance_id",
        "data",
        "status",
        "attempts",
        "created_at",
        "published_at",
    )
    return OutboxRecord(**{**{name: mapping[name] for name in names}, **overrides})


# The search table's rows are upserts on this key, setting these columns.
SEARCH_CONFLICT = ("instance_id", "key")
SEARCH_UPDATED = ("value",)


def search_values(write: StepWrite) -> dict[str, str]:
    """The business keys a transition sets: the start's, then what the workflow set, in
    history order (a later value for a key replaces an earlier one), one value per key."""
    values = dict(write.search)
    for e in sorted(write.events, key=lambda e: e.seq):
        if e.kind == HistoryKind.SEARCH_ATTRIBUTES:
            values.update(e.result)
    return values


def write_rows(
    instance_id: str, worker_id: str | None, write: StepWrite, now: datetime, version: int
) -> list[tuple[sa.Table, list[dict[str, Any]]]]:
    """The rows a transition inserts, per table; ``version`` is the instance's version
    once it commits."""
    rows: list[tuple[sa.Table, list[dict[str, Any]]]] = []
    if write.events:
        rows.append(
            (
                schema.history,
                [
                    {
                        "instance_id": instance_id,
                        "seq": e.seq,
                        "step_id": e.step_id,
                        "kind": str(e.kind),
                        "name": e.name,
                        "result": e.result,
                        "error": e.error,
                        "attempt": e.attempt,
                        "worker_id": worker_id,
                        "created_at": now,
                        "started_at": e.started_at,
                        "task_id": e.task_id,
                    }
                    for e in write.events
                ],
            )
        )
    if write.outbox:
        rows.append(
            (
                schema.outbox,
                [
                    {
                        "instance_id": instance_id,
                        "status": "pending",
                        "attempts": 0,
                        "available_at": now,
                        "created_at": now,
                        **row,
                    }
                    for row in write.outbox
                ],
            )
        )
    if write.registrations:
        rows.append(
            (
                schema.compensations,
                [
                    {
                        "instance_id": instance_id,
                        "seq": r.seq,
                        "step_id": r.step_id,
                        "name": r.name,
                        "arguments": r.arguments,
                        "recorded_version": version,
                        "kind": r.kind,
                        "status": "registered",
                        "attempts": 0,
                        "created_at": now,
                    }
                    for r in write.registrations
                ],
            )
        )
    if write.attempt is not None:
        rows.append(
            (
                schema.attempts,
                [
                    {
                        "instance_id": instance_id,
                        "worker_id": worker_id,
                        "created_at": now,
                        **write.attempt,
                    }
                ],
            )
        )
    search = search_values(write)
    if search:
        # Upserted (see ``SEARCH_CONFLICT``): a value replaces the key's earlier one.
        rows.append(
            (
                schema.search,
                [
                    {"instance_id": instance_id, "key": key, "value": value}
                    for key, value in search.items()
                ],
            )
        )
    if write.add_steps:
        rows.append(
            (
                schema.steps,
                [
                    {
                        "token": s.token,
                        "instance_id": instance_id,
                        "step_id": s.command.step_id,
                        "kind": str(s.command.kind),
                        "command": s.command.to_json(),
                        "dispatch_at": s.dispatch_at,
                        "wait_event_type": s.wait_event_type,
                        "wait_correlation_id": s.wait_correlation_id,
                        "created_at": now,
                    }
                    for s in write.add_steps
                ],
            )
        )
    return rows
