"""Plain records read from storage: what ``get_instance`` and friends return."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "compensation_failed"})
STATUSES = frozenset(
    {
        "pending",
        "running",
        "waiting_for_timer",
        "waiting_for_event",
        "compensating",
        *TERMINAL_STATUSES,
    }
)


@dataclass(frozen=True)
class WorkflowInstance:
    """One workflow run. ``input_data``/``output_data`` are the stored JSON forms."""

    instance_id: str
    workflow_name: str
    status: str
    input_data: dict[str, Any]
    output_data: Any
    error: dict[str, Any] | None
    pending: dict[str, Any] | None
    dispatch_token: str | None
    dispatch_at: datetime | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    epoch: int
    cancel_reason: str | None
    step_takeovers: int
    wait_event_type: str | None
    wait_correlation_id: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class HistoryEvent:
    """One recorded step: its result or its final error, never both."""

    seq: int
    step_id: str
    kind: str
    name: str
    result: Any = None
    error: dict[str, Any] | None = None
    attempt: int = 1
    worker_id: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class CompensationRecord:
    seq: int
    step_id: str
    name: str
    arguments: dict[str, Any]
    status: str
    error: dict[str, Any] | None
    attempts: int
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class AttemptRecord:
    step_id: str
    attempt: int
    error: dict[str, Any]
    retry_in: float | None
    worker_id: str | None
    created_at: datetime


@dataclass(frozen=True)
class Claim:
    """A worker's exclusive right to run an instance's pending command, fenced by ``epoch``."""

    instance: WorkflowInstance
    history: list[HistoryEvent]
    worker_id: str
    epoch: int


@dataclass
class StepWrite:
    """Everything one step commits, in one transaction, after its fencing check."""

    instance_changes: dict[str, Any] = field(default_factory=dict)
    events: list[HistoryEvent] = field(default_factory=list)
    registrations: list[CompensationRecord] = field(default_factory=list)
    # (step_id of the undone activity, column changes)
    compensation_update: tuple[str, dict[str, Any]] | None = None
    attempt: dict[str, Any] | None = None
    # An event this step consumes; the commit fails if another wait consumed it first.
    consume_event: int | None = None
    # Outbox rows: dicts with event_id, event_type, data.
    outbox: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class EventRecord:
    id: int
    event_type: str
    instance_id: str | None
    correlation_id: str | None
    data: Any
    received_at: datetime


@dataclass(frozen=True)
class OutboxRecord:
    id: int
    event_id: str
    event_type: str
    instance_id: str
    data: Any
    status: str
    attempts: int
    created_at: datetime
    published_at: datetime | None
