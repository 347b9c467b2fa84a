"""Operator actions on one instance: cancel, retry a failed compensation.

Each takes the instance's lease like a worker would (``Store.take_over``), so it cannot
race a step in flight: when a worker holds the instance, the action is left for the
worker to carry out at its next step boundary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .commands import ActivityCommand
from .dispatch import publish
from .errors import InstanceStateError
from .planning import dispatch_command
from .storage import StepWrite

if TYPE_CHECKING:
    from .app import Romancy

ACTIVE = ("pending", "running", "waiting_for_timer", "waiting_for_event")
FINISHED = ("completed", "failed", "compensation_failed")


def cancel(romancy: Romancy, instance_id: str, reason: str) -> bool:
    """Request cancellation; True if this call requested it, False if it was already.

    The instance stops at its next step boundary (at once if no step is in flight),
    its succeeded steps are compensated newest first, and it ends ``cancelled``.
    """
    instance = romancy.get_instance(instance_id)
    if instance.status in FINISHED:
        raise InstanceStateError(
            f"cannot cancel workflow instance {instance_id}: it already ended {instance.status}"
        )
    if instance.status not in ACTIVE or instance.cancel_reason is not None:
        return False  # cancelled, being cancelled, or already rolling back after a failure
    requested = romancy.storage.update_instance(
        instance_id, {"cancel_reason": reason}, only_if={"cancel_reason": None}, status_in=ACTIVE
    )
    if not requested:
        return cancel(romancy, instance_id, reason)  # it moved on meanwhile: judge again
    claim = romancy.storage.take_over(
        instance_id, romancy.worker_id, romancy.settings.lease_timeout, ACTIVE
    )
    if claim is not None:
        # No step in flight: roll back now; the queued message, if any, goes stale.
        romancy.runner.roll_back(claim, claim.instance.error, "cancelled")
    return True


PARKED_ERRORS = (
    "celery_romancy.errors.NonDeterminismError",
    "celery_romancy.errors.PoisonStepError",
)
MOVING = ("pending", "running", "compensating")


def resume(romancy: Romancy, instance_id: str) -> None:
    """Re-send a stuck instance's pending step, or replay an instance parked as ``failed``
    by a nondeterminism or poison-step error (once the code or cause was fixed)."""
    instance = romancy.get_instance(instance_id)
    error_type = (instance.error or {}).get("type")
    parked = instance.status == "failed" and error_type in PARKED_ERRORS
    if instance.status not in MOVING and not parked:
        raise InstanceStateError(
            f"workflow instance {instance_id} is {instance.status}; only pending, running, "
            "compensating or parked instances can be resumed"
        )
    claim = romancy.storage.take_over(
        instance_id, romancy.worker_id, romancy.settings.lease_timeout, [instance.status]
    )
    if claim is None:
        raise InstanceStateError(f"workflow instance {instance_id} is held by a worker right now")
    if claim.instance.pending is not None:
        command = ActivityCommand.from_json(claim.instance.pending)
        status = "compensating" if command.kind == "compensation" else "running"
        changes, dispatch = dispatch_command(claim.instance, command, status=status)
        if parked:
            changes["error"] = None
        if not romancy.storage.commit(claim, StepWrite(instance_changes=changes)):
            raise InstanceStateError(f"workflow instance {instance_id} was taken over meanwhile")
        if dispatch is not None:
            publish(romancy.app, dispatch)
    elif romancy.runner.advance(claim, StepWrite()) == "fenced":
        # Parked without a pending step (nondeterminism): replay to find it.
        raise InstanceStateError(f"workflow instance {instance_id} was taken over meanwhile")


def retry_compensation(romancy: Romancy, instance_id: str) -> None:
    """Resume a rollback parked in ``compensation_failed``, from the compensation that failed."""
    instance = romancy.get_instance(instance_id)
    if instance.status != "compensation_failed" or instance.pending is None:
        raise InstanceStateError(
            f"workflow instance {instance_id} is {instance.status}, not compensation_failed"
        )
    claim = romancy.storage.take_over(
        instance_id, romancy.worker_id, romancy.settings.lease_timeout, ["compensation_failed"]
    )
    if claim is None:
        raise InstanceStateError(f"workflow instance {instance_id} is being changed right now")
    failed = ActivityCommand.from_json(instance.pending)
    command = ActivityCommand(**{**failed.to_json(), "attempt": 1})
    error = {k: v for k, v in (instance.error or {}).items() if k != "compensation_error"}
    changes, dispatch = dispatch_command(claim.instance, command, status="compensating")
    changes["error"] = error or None
    write = StepWrite(
        instance_changes=changes,
        compensation_update=(command.step_id, {"status": "registered", "error": None}),
    )
    if not romancy.storage.commit(claim, write):
        raise InstanceStateError(f"workflow instance {instance_id} was taken over meanwhile")
    assert dispatch is not None
    publish(romancy.app, dispatch)
