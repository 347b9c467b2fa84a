"""From a replay's outcome to the instance's next state and the message to publish."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
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


def dispatch_command(
    instance: InstanceRef, command: ActivityCommand, *, status: str, delay: float = 0.0
) -> Plan:
    """Make ``command`` the instance's pending step and the message that runs it."""
    token = new_token()
    changes = {
        "status": status,
        "pending": command.to_json(),
        "dispatch_token": token,
        "dispatch_at": utcnow(),
    }
    if delay:
        changes["dispatch_at"] = utcnow() + timedelta(seconds=delay)
    dispatch = Dispatch(
        instance.instance_id, instance.workflow_name, token, command, countdown=delay or None
    )
    return changes, dispatch


def finish(status: str, **columns: Any) -> Plan:
    return {
        "status": status,
        "pending": None,
        "dispatch_token": None,
        "dispatch_at": None,
        **columns,
    }, None


def plan_outcome(
    instance: InstanceRef,
    outcome: Outcome,
    registered_compensations: Callable[[], list[CompensationRecord]],
    compensation_queue: Callable[[str], str | None],
) -> Plan:
    if isinstance(outcome, Next):
        return dispatch_command(instance, outcome.command, status="running")
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
