"""An instance as its page draws it: its steps in order as a timeline (``timeline``)
and its compensations as the undo path (``undo_path``), both pure, from what
``inspection.read_instance`` read.

The timeline follows the history: each recorded step, a gather's branches side by
side under it (recorded, in flight, or not sent yet), then the steps in flight; the
operators' actions fall in by their time. Compensations are the undo path, drawn apart
in the order a rollback runs them (newest first).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ...commands import derived_child_id
from ...inspection import InstanceRecord
from ...states import HistoryKind, StepKind
from ...storage import (
    AttemptRecord,
    CompensationRecord,
    HistoryEvent,
    OperatorAction,
    StepRecord,
)
from ..status import NOT_STEPS, duration


@dataclass
class Entry:
    """One point of the timeline.

    ``state``: completed, failed (a recorded step); running, sent, retrying, waiting,
    parked (in flight); not_sent (a gather branch never sent); done (an operator's
    action). ``kind``: the history or step kind (activity, timer, event, child,
    gather, event_published, marker, compensation, wait_event, undo_child) or
    ``operator``."""

    kind: str
    state: str
    name: str
    step_id: str | None = None
    seq: int | None = None
    attempt: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker: str | None = None
    task_id: str | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    # Failed attempts before the recorded one (the last, when it failed for good, is
    # the step's error).
    attempts: list[AttemptRecord] = field(default_factory=list)
    until: datetime | None = None  # a timer fires, a wait times out, a retry is due
    child_id: str | None = None
    actor: str | None = None  # who did an operator action
    detail: Any = None  # an operator action's detail; an event wait's correlation id
    branches: list[Entry] = field(default_factory=list)

    @property
    def duration(self) -> float | None:
        return duration(self.started_at, self.finished_at)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "state": self.state,
            "name": self.name,
            "step_id": self.step_id,
            "seq": self.seq,
            "attempt": self.attempt,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "duration": self.duration,
            "worker": self.worker,
            "task_id": self.task_id,
            "result": self.result,
            "error": self.error,
            "attempts": [
                {
                    "attempt": a.attempt,
                    "error": a.error,
                    "retry_in": a.retry_in,
                    "worker": a.worker_id,
                    "failed_at": _iso(a.created_at),
                }
                for a in self.attempts
            ],
            "until": _iso(self.until),
            "child_id": self.child_id,
            "actor": self.actor,
            "detail": self.detail,
            "branches": [b.to_json() for b in self.branches],
        }


def timeline(record: InstanceRecord, now: datetime | None = None) -> list[Entry]:
    now = now or datetime.now(UTC)
    instance_id = record.instance.instance_id
    attempts: dict[str, list[AttemptRecord]] = {}
    for attempt in record.attempts:
        attempts.setdefault(attempt.step_id, []).append(attempt)
    child_ids = {c.instance_id for c in record.children}
    by_seq = {e.seq: e for e in record.history}
    in_flight = {s.command.seq: s for s in record.steps if s.kind is not StepKind.COMPENSATION}
    shown: set[int] = set()
    entries: list[Entry] = []

    def child_of(step_id: str, arguments: dict[str, Any] | None = None) -> str | None:
        named = (arguments or {}).get("instance_id")
        derived = derived_child_id(instance_id, step_id)
        for candidate in (named, derived):
            if isinstance(candidate, str) and candidate in child_ids:
                return candidate
        return named if isinstance(named, str) else None

    def recorded(event: HistoryEvent) -> Entry:
        entry = Entry(
            kind=event.kind,
            state="failed" if event.error is not None else "completed",
            name=event.name,
            step_id=event.step_id,
            seq=event.seq,
            attempt=event.attempt,
            started_at=event.started_at,
            finished_at=event.created_at,
            worker=event.worker_id,
            task_id=event.task_id,
            result=event.result,
            error=event.error,
            attempts=[a for a in attempts.get(event.step_id, []) if a.attempt < event.attempt],
        )
        if event.kind == HistoryKind.CHILD:
            entry.child_id = child_of(event.step_id)
        return entry

    def pending(step: StepRecord) -> Entry:
        command = step.command
        entry = Entry(
            kind=str(step.kind),
            state=_state(step, now),
            name=command.name,
            step_id=step.step_id,
            seq=command.seq,
            attempt=command.attempt,
            started_at=step.created_at,
            worker=step.lease_owner if step.kind.runs_as_task else None,
            task_id=step.token if step.kind.runs_as_task else None,
            attempts=attempts.get(step.step_id, []),
        )
        if step.kind in (StepKind.TIMER, StepKind.WAIT_EVENT) or entry.state == "retrying":
            entry.until = step.dispatch_at
        if step.kind is StepKind.WAIT_EVENT:
            entry.detail = command.arguments.get("correlation_id")
        if step.kind in (StepKind.CHILD, StepKind.UNDO_CHILD):
            entry.child_id = child_of(step.step_id, command.arguments)
        return entry

    for event in sorted(record.history, key=lambda e: e.seq):
        if event.seq in shown or event.kind in NOT_STEPS - {HistoryKind.GATHER}:
            continue
        shown.add(event.seq)
        entry = recorded(event)
        entries.append(entry)
        if event.kind != HistoryKind.GATHER or not isinstance(event.result, list):
            continue
        entry.state = "completed"
        for offset, name in enumerate(event.result, start=1):
            position = event.seq + offset
            shown.add(position)
            if position in by_seq:
                entry.branches.append(recorded(by_seq[position]))
            elif position in in_flight:
                entry.branches.append(pending(in_flight.pop(position)))
            else:  # after a failure, or beyond max_concurrency: not sent yet
                entry.branches.append(Entry(kind="activity", state="not_sent", name=str(name)))
        # The gather spans its branches: from when they were sent to the last one's end.
        entry.started_at, entry.finished_at = event.created_at, None
        if any(b.state != "completed" for b in entry.branches):
            entry.state = "failed" if any(b.state == "failed" for b in entry.branches) else "open"
        else:
            ends = [b.finished_at for b in entry.branches if b.finished_at is not None]
            entry.finished_at = max(ends, default=None)
    entries.extend(pending(in_flight[seq]) for seq in sorted(in_flight))
    return _with_actions(entries, record.operator_actions)


def _with_actions(entries: list[Entry], actions: Sequence[OperatorAction]) -> list[Entry]:
    """Each operator action placed before the first step that ended after it."""
    merged: list[Entry] = []
    waiting = list(actions)
    for entry in entries:
        moment = entry.finished_at or entry.started_at
        while waiting and moment is not None and waiting[0].created_at < moment:
            merged.append(_action(waiting.pop(0)))
        merged.append(entry)
    merged.extend(_action(a) for a in waiting)
    return merged


def _action(action: OperatorAction) -> Entry:
    return Entry(
        kind="operator",
        state="done",
        name=action.action,
        started_at=action.created_at,
        actor=action.actor,
        detail=action.detail,
    )


@dataclass(frozen=True)
class Undo:
    """A compensation on the undo path. ``state``: its record's status (registered, done,
    failed), or while it is registered and its step in flight, that step's state
    (running, sent, retrying, waiting)."""

    compensation: CompensationRecord
    state: str
    task_id: str | None = None
    worker: str | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)
    child_id: str | None = None  # a completed child workflow being undone

    def to_json(self) -> dict[str, Any]:
        c = self.compensation
        return {
            "name": c.name,
            "undoes": c.step_id,
            "kind": c.kind,
            "status": c.status,
            "state": self.state,
            "arguments": c.arguments,
            "attempts": c.attempts,
            "error": c.error,
            "created_at": _iso(c.created_at),
            "finished_at": _iso(c.finished_at),
            "task_id": self.task_id,
            "worker": self.worker,
            "failed_attempts": [
                {"attempt": a.attempt, "error": a.error, "failed_at": _iso(a.created_at)}
                for a in self.attempts
            ],
            "child_id": self.child_id,
        }


def undo_path(record: InstanceRecord, now: datetime | None = None) -> list[Undo]:
    """The compensations, newest first (the order a rollback runs them in), each with
    its task in flight and its failed attempts."""
    now = now or datetime.now(UTC)
    undoing = (StepKind.COMPENSATION, StepKind.UNDO_CHILD)
    in_flight = {s.command.step_id: s for s in record.steps if s.kind in undoing}
    path = []
    for c in record.compensations:
        step = in_flight.get(c.step_id)
        runs = step is not None and step.kind.runs_as_task
        child = c.arguments.get("instance_id") if c.kind == "child" else None
        path.append(
            Undo(
                compensation=c,
                state=c.status if step is None or c.status != "registered" else _state(step, now),
                task_id=step.token if runs and step is not None else None,
                worker=step.lease_owner if runs and step is not None else None,
                attempts=[a for a in record.attempts if a.step_id == f"{c.name}:undo:{c.step_id}"],
                child_id=child if isinstance(child, str) else None,
            )
        )
    return path


def _state(step: StepRecord, now: datetime) -> str:
    if step.kind in (StepKind.TIMER, StepKind.WAIT_EVENT, StepKind.CHILD, StepKind.UNDO_CHILD):
        return "waiting"
    if step.dispatch_at is None:
        return "parked"  # waits for an operator: resume, or retry-compensation
    if step.dispatch_at > now:
        return "retrying"  # waits out its retry delay
    if step.lease_expires_at is not None and step.lease_expires_at > now:
        return "running"
    return "sent"


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
