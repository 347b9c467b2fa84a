"""From a replay's outcome to the instance's next state and the message to publish."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .commands import ActivityCommand
from .dispatch import Dispatch
from .failures import describe_error
from .replay import Completed, Diverged, Failed, Next, Outcome
from .storage.schema import utcnow

if TYPE_CHECKING:
    from .dispatch import InstanceRef
    from .storage import CompensationRecord

Plan = tuple[dict[str, Any], Dispatch | None]


def new_token() -> str:
    return uuid.uuid4().hex


# Timers due within this many seconds also get a Celery countdown message, for
# precision; later ones (and any message lost) are fired by the beat job.
COUNTDOWN_HORIZON = 900.0


def dispatch_command(
    instance: InstanceRef, command: ActivityCommand, *, status: str, delay: float = 0.0
) -> Plan:
    """Make ``command`` the instance's pending step, and the message that runs it.

    Timers and event waits are not run by a task: the instance waits (no worker slot is
    held) with ``dispatch_at`` as the time its timer or timeout is due.
    """
    token = new_token()
    now = utcnow()
    changes: dict[str, Any] = {
        "status": status,
        "pending": command.to_json(),
        "dispatch_token": token,
        "dispatch_at": now + timedelta(seconds=delay),
        "wait_event_type": None,
        "wait_correlation_id": None,
    }
    countdown: float | None = delay or None
    if command.kind == "timer":
        fire_at = datetime.fromisoformat(command.arguments["fire_at"])
        changes.update(status="waiting_for_timer", dispatch_at=fire_at)
        countdown = max((fire_at - now).total_seconds(), 0.0)
        if countdown > COUNTDOWN_HORIZON:
            return changes, None
    elif command.kind == "wait_event":
        timeout_at = command.arguments.get("timeout_at")
        changes.update(
            status="waiting_for_event",
            dispatch_at=datetime.fromisoformat(timeout_at) if timeout_at else None,
            wait_event_type=command.name,
            wait_correlation_id=command.arguments.get("correlation_id"),
        )
        return changes, None
    dispatch = Dispatch(
        instance.instance_id, instance.workflow_name, token, command, countdown=countdown
    )
    return changes, dispatch


def finish(status: str, **columns: Any) -> Plan:
    return {
        "status": status,
        "pending": None,
        "dispatch_token": None,
        "dispatch_at": None,
        "wait_event_type": None,
        "wait_correlation_id": None,
        **columns,
    }, None


def plan_outcome(
    instance: InstanceRef,
    outcome: Outcome,
    registered_compensations: Callable[[], list[CompensationRecord]],
    compensation_queue: Callable[[str], str | None],
) -> Plan:
    if isinstance(outcome, Next):
        changes, dispatch = dispatch_command(instance, outcome.command, status="running")
        changes["error"] = None  # moving forward: clears a parked instance's error
        return changes, dispatch
    if isinstance(outcome, Completed):
        return finish("completed", output_data=outcome.output, error=None)
    if isinstance(outcome, Diverged):
        # No rollback: history and code disagree, so an operator must look first.
        return finish("failed", error=describe_error(outcome.error, outcome.error.recorded))
    assert isinstance(outcome, Failed)
    return start_rollback(
        instance, outcome.error, registered_compensations(), compensation_queue, "failed"
    )


def start_rollback(
    instance: InstanceRef,
    error: dict[str, Any] | None,
    compensations: list[CompensationRecord],
    compensation_queue: Callable[[str], str | None],
    final_status: str,
) -> Plan:
    """Begin (or continue) undoing succeeded steps, newest first; or end with ``final_status``."""
    command = next_compensation(compensations, compensation_queue)
    if command is None:
        return finish(final_status, error=error)
    changes, dispatch = dispatch_command(instance, command, status="compensating")
    changes["error"] = error
    return changes, dispatch


def next_compensation(
    compensations: list[CompensationRecord], compensation_queue: Callable[[str], str | None]
) -> ActivityCommand | None:
    waiting = [c for c in compensations if c.status == "registered"]
    if not waiting:
        return None
    newest = max(waiting, key=lambda c: c.seq)
    return ActivityCommand(
        kind="compensation",
        name=newest.name,
        step_id=newest.step_id,
        seq=newest.seq,
        arguments=newest.arguments,
        queue=compensation_queue(newest.name),
    )
