"""A JSON-ready summary of one instance, for status views and ``--json`` output.

    instance_status(romancy.get_instance(instance_id))       # the instance's row only
    status_of(romancy, instance_id)                          # with its steps: one call

``instance_status(instance)`` summarises the row; given ``details``
(``read_details(romancy, instance_id)``) it adds the steps in flight, the recorded steps
with their timings, and the compensations. ``status_of`` does both and is what the
ready-made views (``contrib.flask.status_blueprint``, ``contrib.django.views``) answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..states import HistoryKind, StepKind
from ..storage import CompensationRecord, HistoryEvent, StepRecord, WorkflowInstance

if TYPE_CHECKING:
    from ..app import Romancy

__all__ = ["InstanceDetails", "instance_status", "read_details", "status_of"]

# History rows that are bookkeeping, not steps: the registration of a compensation
# declared by ``ctx.register_compensation``, the branch list of a gather, and the
# business keys set by ``ctx.set_search_attributes``.
NOT_STEPS = frozenset(
    {HistoryKind.COMPENSATION_REGISTERED, HistoryKind.GATHER, HistoryKind.SEARCH_ATTRIBUTES}
)


@dataclass(frozen=True)
class InstanceDetails:
    """What ``instance_status`` adds to an instance's row: its recorded history, its
    steps in flight and its compensations (as ``Store.get_*`` return them)."""

    history: Sequence[HistoryEvent] = ()
    steps: Sequence[StepRecord] = ()
    compensations: Sequence[CompensationRecord] = ()


def read_details(romancy: Romancy, instance_id: str) -> InstanceDetails:
    storage = romancy.storage
    return InstanceDetails(
        history=storage.get_history(instance_id),
        steps=storage.get_steps(instance_id),
        compensations=storage.get_compensations(instance_id),
    )


def status_of(romancy: Romancy, instance_id: str) -> dict[str, Any]:
    """``instance_status`` of the instance with its details; ``UnknownInstanceError``
    for an id no instance has (an impossible one included)."""
    instance = romancy.get_instance(instance_id)
    return instance_status(instance, read_details(romancy, instance_id))


def instance_status(
    instance: WorkflowInstance, details: InstanceDetails | None = None
) -> dict[str, Any]:
    """What a status endpoint may show: no input, arguments, step results, worker or
    traceback (they can hold personal data or internals); errors only as type, message
    and step. Times are ISO 8601 in UTC, durations in seconds.

    With ``details``, also:

    - ``current_steps``: the steps in flight (or parked): ``step_id``, ``kind``, ``name``,
      ``attempt``, ``since`` (when it was sent or began waiting) and ``until`` (when a
      timer fires, an event wait times out, or a retry is due; else None);
    - ``steps``: the recorded steps, oldest first, with ``started_at``, ``finished_at``,
      ``duration``, ``outcome`` ("completed" or "failed") and ``error``;
    - ``compensations``: newest first (the order a rollback runs them in), each with its
      ``status`` ("registered": not run, or running now; "done"; "failed"), ``attempts``
      and ``error``.
    """
    summary: dict[str, Any] = {
        "instance_id": instance.instance_id,
        "workflow": instance.workflow_name,
        "status": instance.status,
        "finished": instance.is_terminal,
        "output": instance.output_data,
        "error": _error(instance.error),
        "created_at": instance.created_at.isoformat(),
        "updated_at": instance.updated_at.isoformat(),
        # A child workflow's place in its tree (None for a workflow started on its own).
        "parent_instance_id": instance.parent_instance_id,
        "root_instance_id": instance.root_instance_id,
        "cancel_reason": instance.cancel_reason,
    }
    if details is not None:
        now = datetime.now(UTC)
        summary["current_steps"] = [_current(step, now) for step in details.steps]
        summary["steps"] = [_step(e) for e in details.history if e.kind not in NOT_STEPS]
        summary["compensations"] = [_compensation(c) for c in details.compensations]
    return summary


def _error(error: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if error is None else {key: error.get(key) for key in ("type", "message", "step")}


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def duration(started: datetime | None, finished: datetime | None) -> float | None:
    """Seconds from ``started`` to ``finished``, to the millisecond; None if either is
    unknown (a wait, or a row recorded before step start times were kept)."""
    if started is None or finished is None:
        return None
    return round((finished - started).total_seconds(), 3)


def _current(step: StepRecord, now: datetime) -> dict[str, Any]:
    command = step.command
    until = step.dispatch_at
    if step.kind in (StepKind.CHILD, StepKind.UNDO_CHILD):
        until = None  # stamped when sent; the child's own end wakes it
    elif step.kind.runs_as_task and (until is None or until <= now):
        until = None  # sent (or re-sent): only a retry waiting out its delay is due later
    return {
        "step_id": step.step_id,
        "kind": str(step.kind),
        "name": command.name,
        "attempt": command.attempt,
        "since": _time(step.created_at),
        "until": _time(until),
    }


def _step(event: HistoryEvent) -> dict[str, Any]:
    return {
        "step_id": event.step_id,
        "kind": event.kind,
        "name": event.name,
        "attempt": event.attempt,
        "started_at": _time(event.started_at),
        "finished_at": _time(event.created_at),
        "duration": duration(event.started_at, event.created_at),
        "outcome": "failed" if event.error is not None else "completed",
        "error": _error(event.error),
    }


def _compensation(record: CompensationRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "undoes": record.step_id,
        "kind": record.kind,
        "status": record.status,
        "attempts": record.attempts,
        "finished_at": _time(record.finished_at),
        "error": _error(record.error),
    }
