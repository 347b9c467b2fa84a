"""Operator actions on one instance: cancel, resume, retry a failed compensation.

Each is a transition like a worker's (``transition.apply``): planned from a snapshot,
committed only if the instance did not move meanwhile, and it only ends steps that no
worker holds. A step in flight is left to its worker, which carries the action out at
its next step boundary.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from .errors import InstanceStateError, UnknownInstanceError
from .events import current_run
from .planning import Plan, dispatch_step, status_of, wind_down
from .states import ACTIVE, PARKED_ERRORS, Status, StepKind
from .storage import CommitResult, Snapshot, StepWrite
from .storage.records import InstanceChange
from .storage.rows import leased
from .storage.schema import utcnow
from .transition import Planned, apply, replayed

if TYPE_CHECKING:
    from .app import Romancy

FINISHED = (Status.COMPLETED, Status.FAILED, Status.COMPENSATION_FAILED, Status.COMPENSATED)


def _snapshot(romancy: Romancy, instance_id: str) -> Snapshot:
    romancy.get_instance(instance_id)  # UnknownInstanceError, also for an impossible id
    snapshot = romancy.storage.snapshot(instance_id)
    if snapshot is None:
        raise UnknownInstanceError(f"no workflow instance {instance_id!r}")
    return snapshot


def cancel(romancy: Romancy, instance_id: str, reason: str) -> bool:
    """Request cancellation; True if this call requested it, False if it was already.

    The instance stops at its next step boundary (at once if no step is in flight),
    steps in flight finish, its succeeded steps are compensated newest first, and it
    ends ``cancelled``. A run that continued (``ctx.continue_as_new``): the run that
    holds its chain now is cancelled.
    """
    while True:
        requested = _cancel_run(romancy, current_run(romancy, instance_id).instance_id, reason)
        if requested is not None:
            return requested


def _cancel_run(romancy: Romancy, instance_id: str, reason: str) -> bool | None:
    """``cancel`` of one run; None if it continued first (then its next run is the one)."""
    snapshot = _snapshot(romancy, instance_id)
    instance = snapshot.instance
    if instance.status == Status.CONTINUED:
        return None
    if instance.status in FINISHED:
        raise InstanceStateError(
            f"cannot cancel workflow instance {instance_id}: it already ended {instance.status}"
        )
    if instance.status not in ACTIVE or instance.cancel_reason is not None:
        return False  # cancelled, being cancelled, or already rolling back after a failure
    continued = False

    def plan_for(current: Snapshot) -> Planned:
        nonlocal continued
        now = current.instance
        continued = now.status == Status.CONTINUED
        if now.status not in ACTIVE or now.cancel_reason is not None:
            return Planned(Plan())  # it moved on meanwhile (ended, or cancelled by another)
        plan = wind_down(
            now,
            current.steps,
            lambda: romancy.storage.get_compensations(instance_id),
            romancy.registry.compensation_queue,
        )
        plan.change = replace(plan.change, cancel_reason=reason)
        return Planned(plan)

    apply(romancy, snapshot, plan_for)
    return None if continued else True


MOVING = (Status.PENDING, Status.RUNNING, Status.COMPENSATING)


def resume(romancy: Romancy, instance_id: str) -> None:
    """Re-send a stuck instance's steps, or replay an instance parked as ``failed`` by a
    nondeterminism or poison-step error (once the code or cause was fixed)."""
    snapshot = _snapshot(romancy, instance_id)
    instance = snapshot.instance
    error_type = (instance.error or {}).get("type")
    parked = instance.status == Status.FAILED and error_type in PARKED_ERRORS
    if instance.status not in MOVING and not parked:
        raise InstanceStateError(
            f"workflow instance {instance_id} is {instance.status}; only pending, running, "
            "compensating or parked instances can be resumed"
        )
    if not any(s.kind.runs_as_task for s in snapshot.steps):
        # Parked without a step (nondeterminism): replay to find it.
        result = apply(romancy, snapshot, replayed(romancy, StepWrite(), revive=True))
    else:

        def plan_for(current: Snapshot) -> Planned:
            steps = romancy.storage.get_steps(instance_id)
            now = utcnow()
            idle = [s for s in steps if s.kind.runs_as_task and not leased(s.lease_expires_at, now)]
            if not idle:
                raise InstanceStateError(
                    f"workflow instance {instance_id} is held by a worker right now"
                )
            plan = Plan(remove=[s.token for s in idle])
            for old in idle:
                step, dispatch = dispatch_step(current.instance, old.command)
                plan.add.append(step)
                if dispatch is not None:
                    plan.dispatches.append(dispatch)
            kinds = [s.kind for s in steps]
            error = None if parked else current.instance.error
            plan.change = InstanceChange(status=status_of(kinds), error=error)
            return Planned(plan)

        result = apply(romancy, snapshot, plan_for)
    if result is not CommitResult.COMMITTED:
        raise InstanceStateError(f"workflow instance {instance_id} was taken over meanwhile")


def retry_compensation(romancy: Romancy, instance_id: str) -> None:
    """Resume a rollback parked in ``compensation_failed``, from the compensation that
    failed (for a child workflow being undone: the child's own rollback, retried)."""
    snapshot = _snapshot(romancy, instance_id)
    undoing = (StepKind.COMPENSATION, StepKind.UNDO_CHILD)
    failed = [s for s in romancy.storage.get_steps(instance_id) if s.kind in undoing]
    if snapshot.instance.status != Status.COMPENSATION_FAILED or not failed:
        raise InstanceStateError(
            f"workflow instance {instance_id} is {snapshot.instance.status}, "
            "not compensation_failed"
        )
    parked = failed[0]

    def plan_for(current: Snapshot) -> Planned:
        if current.instance.status != Status.COMPENSATION_FAILED:
            raise InstanceStateError(f"workflow instance {instance_id} is being changed right now")
        saga_error = {
            k: v for k, v in (current.instance.error or {}).items() if k != "compensation_error"
        }
        step, dispatch = dispatch_step(current.instance, parked.command.first_attempt())
        return Planned(
            Plan(
                change=InstanceChange(status=Status.COMPENSATING, error=saga_error or None),
                remove=[parked.token],
                add=[step],
                dispatches=[dispatch] if dispatch is not None else [],
            )
        )

    rows = StepWrite(
        compensation_update=(parked.command.step_id, {"status": "registered", "error": None})
    )
    if apply(romancy, snapshot, plan_for, rows) is not CommitResult.COMMITTED:
        raise InstanceStateError(f"workflow instance {instance_id} was taken over meanwhile")
    if parked.kind is StepKind.UNDO_CHILD:
        child_id = parked.command.arguments["instance_id"]
        child = romancy.storage.get_instance(child_id)
        if child is not None and child.status == Status.COMPENSATION_FAILED:
            retry_compensation(romancy, child_id)  # its end wakes this instance
