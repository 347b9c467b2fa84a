"""Plain records read from storage: what ``get_instance`` and friends return."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from ..commands import ActivityCommand
from ..states import TERMINAL, Status, StepKind

TERMINAL_STATUSES = frozenset(str(s) for s in TERMINAL)
STATUSES = frozenset(str(s) for s in Status)


@dataclass(frozen=True)
class WorkflowInstance:
    """One workflow run. ``input_data``/``output_data`` are the stored JSON forms."""

    instance_id: str
    workflow_name: str
    status: str
    input_data: dict[str, Any]
    output_data: Any
    error: dict[str, Any] | None
    version: int
    cancel_reason: str | None
    created_at: datetime
    updated_at: datetime
    # Set for a child workflow: its parent, the root of its tree, and what happens to
    # it if the parent ends first ("cancel" or "abandon").
    parent_instance_id: str | None = None
    root_instance_id: str | None = None
    parent_close: str | None = None
    # The code version it was started under, and the run it continues
    # (``ctx.continue_as_new``); None when not given / for a first run.
    workflow_version: str | None = None
    continued_from: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class StepRecord:
    """One step in flight: a dispatched command, its message token, lease and epoch."""

    token: str
    instance_id: str
    step_id: str
    kind: StepKind
    command: ActivityCommand
    dispatch_at: datetime | None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    epoch: int = 0
    takeovers: int = 0
    wait_event_type: str | None = None
    wait_correlation_id: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class StepRef:
    """What a transition needs to know of a step in flight."""

    token: str
    step_id: str
    kind: StepKind
    leased: bool  # a worker holds it right now (its lease has not run out)
    # A child step: the child's instance id, and whether the parent lets it run on
    # (parent_close="abandon") rather than cancel it and wait for it when it closes.
    child_id: str | None = None
    abandon: bool = False


@dataclass(frozen=True)
class Snapshot:
    """An instance as one transition must see it: row, history and steps in flight, read
    together; ``instance.version`` names this state for the commit's check."""

    instance: WorkflowInstance
    history: list[HistoryEvent]
    steps: list[StepRef]
    # False when the claim of a gather branch left the history out (see postgres.py):
    # a transition that needs it reads the instance again.
    complete: bool = True

    def ending(self, token: str) -> Snapshot:
        """The snapshot as a transition that ends step ``token`` plans from."""
        steps = [s for s in self.steps if s.token != token]
        return Snapshot(self.instance, self.history, steps, self.complete)


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
    # When the step's body began, and the Celery task id (the step's token) that ran it;
    # None where unknown (rows recorded before they were kept, records of no step).
    started_at: datetime | None = None
    task_id: str | None = None


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
    # "activity": run the compensation task ``name``; "child": undo the completed child
    # workflow ``arguments["instance_id"]``.
    kind: str = "activity"


@dataclass(frozen=True)
class AttemptRecord:
    step_id: str
    attempt: int
    error: dict[str, Any]
    retry_in: float | None
    worker_id: str | None
    created_at: datetime


@dataclass(frozen=True)
class OperatorAction:
    """Something an operator did to an instance: ``action`` (cancel, resume,
    retry_compensation, send_event), who (``actor``; None if not told) and its
    ``detail`` (JSON: a cancel's reason, an event's type)."""

    action: str
    actor: str | None
    detail: Any
    created_at: datetime


@dataclass(frozen=True)
class Claim:
    """A worker's exclusive right to run one step, fenced by the step's ``epoch``; with
    the instance as it was when claimed."""

    step: StepRecord
    snapshot: Snapshot
    worker_id: str
    epoch: int

    @property
    def instance(self) -> WorkflowInstance:
        return self.snapshot.instance

    @property
    def history(self) -> list[HistoryEvent]:
        return self.snapshot.history

    @property
    def command(self) -> ActivityCommand:
        return self.step.command


class _Keep:
    """Marks a field of ``InstanceChange`` that the change leaves as it is."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()


@dataclass(frozen=True)
class InstanceChange:
    """What a transition changes on its instance; ``KEEP`` leaves a column alone."""

    status: Status | None = None
    output_data: Any = KEEP
    error: dict[str, Any] | None = KEEP
    cancel_reason: str | None = KEEP

    def columns(self) -> dict[str, Any]:
        changed = {
            "output_data": self.output_data,
            "error": self.error,
            "cancel_reason": self.cancel_reason,
        }
        columns = {name: value for name, value in changed.items() if value is not KEEP}
        if self.status is not None:
            columns["status"] = str(self.status)
        return columns


@dataclass(frozen=True)
class NewStep:
    """A step to dispatch: its row is inserted by the commit, its message sent after."""

    token: str
    command: ActivityCommand
    dispatch_at: datetime | None
    wait_event_type: str | None = None
    wait_correlation_id: str | None = None


@dataclass
class StepWrite:
    """Everything one transition commits, in one transaction, after its fencing checks:
    the instance's version must be the one planned from, and each removed step must
    still be the caller's (its claim) or unleased (an operator's)."""

    instance_changes: InstanceChange = field(default_factory=InstanceChange)
    # Steps that end with this commit (the claimed one, if any, always does).
    remove_steps: list[str] = field(default_factory=list)
    add_steps: list[NewStep] = field(default_factory=list)
    events: list[HistoryEvent] = field(default_factory=list)
    registrations: list[CompensationRecord] = field(default_factory=list)
    # (step_id of the undone activity, column changes)
    compensation_update: tuple[str, dict[str, Any]] | None = None
    attempt: dict[str, Any] | None = None
    # An event this step consumes; the commit fails if another wait consumed it first.
    consume_event: int | None = None
    # Outbox rows: dicts with event_id, event_type, data.
    outbox: list[dict[str, Any]] = field(default_factory=list)
    # Child workflows this transition starts, inserted with it (or not at all).
    children: list[ChildStart] = field(default_factory=list)
    # Business keys given to the start (``start_workflow(search=...)``). Those a workflow
    # sets (``ctx.set_search_attributes``) come as history events in ``events`` and are
    # written with them, replacing these for the same key (see ``rows.search_values``).
    search: dict[str, str] = field(default_factory=dict)
    # ``ctx.continue_as_new``: the next run (its row is one of ``children``). The events
    # kept for this run and not consumed move to it, and a parent's child step that
    # waits for this run waits for it instead (``chains.hand_over``).
    continued_as: str | None = None


@dataclass(frozen=True)
class ChildStart:
    """A child instance's row and what its start records and dispatches."""

    values: dict[str, Any]
    write: StepWrite

    @property
    def instance_id(self) -> str:
        return str(self.values["instance_id"])


class ChildIdTakenError(Exception):
    """A child's instance id is already used: the transition must be planned again."""


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


class CommitResult(StrEnum):
    """How a transition's commit ended."""

    COMMITTED = "committed"
    # The claimed step is no longer the caller's (taken over, or already recorded):
    # nothing was written, and nothing must be.
    FENCED = "fenced"
    # The instance moved on since the snapshot (a sibling branch was recorded, an
    # operator acted): nothing was written; read the instance again and plan anew.
    MOVED = "moved"
