"""Child workflows at run time: what ties a child's life to its parent's.

A child is started by its parent's commit (``transition.replayed``): its row, its first
steps and the parent's child step go in together, so a child is started exactly once,
however often the parent's step is delivered. After that, three things cross between
the two instances, each after the commit that causes it:

- a child's end wakes the parent's child step, which records how the child ended (its
  output, or ``ChildWorkflowError``) and registers a completed child for undo;
- a parent's rollback reaching a completed child begins the child's own rollback and
  waits (an ``undo_child`` step) until the child ends ``compensated``;
- a parent that ends, fails or is cancelled cancels the children it holds
  (``parent_close="cancel"``); a failing or cancelled parent waits for them first.

Each is idempotent, and each leaves a trace the recovery sweep (``reconcile``) finds if
the process died between the commit and the action: a child step older than the
dispatch timeout whose child has ended, an undo whose child is still ``completed``, a
running child whose parent has closed.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime
from typing import TYPE_CHECKING

from . import signals
from .errors import ChildWorkflowError, InstanceStateError, UnknownInstanceError
from .failures import describe_error
from .planning import Plan, final_status, parked, roll_back_when_idle, start_rollback
from .recorded import registration
from .states import HistoryKind, RunOutcome, Status, StepKind
from .storage import CommitResult, HistoryEvent, Snapshot, StepRecord, StepWrite
from .storage.records import KEEP, CompensationRecord, WorkflowInstance
from .storage.schema import utcnow
from .transition import PlanFor, Planned, apply, fixed, replayed, rolled_back

if TYPE_CHECKING:
    from .app import Romancy

logger = logging.getLogger(__name__)


def after_commit(
    romancy: Romancy,
    instance: WorkflowInstance,
    cancel: list[str],
    undo: list[str | None],
    ended: bool,
) -> None:
    """Carry out what a commit of ``instance`` means for its children and its parent.

    Never raises: the commit stands, and the recovery sweep repeats what failed here.
    """
    try:
        for child_id in cancel:
            cancel_child(romancy, child_id, f"parent {instance.instance_id} closed")
        for undone in undo:
            if undone is not None:
                begin_undo(romancy, undone)
        if ended and instance.parent_instance_id is not None:
            notify_parent(romancy, instance.instance_id, instance.parent_instance_id)
    except Exception:
        logger.exception(
            "celery_romancy: could not pass %s's news to its parent or children; "
            "the recovery sweep will",
            instance.instance_id,
        )


def notify_parent(romancy: Romancy, child_id: str, parent_id: str) -> None:
    """Wake the parent's step that waits for this child, if there is one."""
    child = romancy.storage.get_instance(child_id)
    if child is None:
        return
    for step in romancy.storage.get_steps(parent_id):
        if step.kind in (StepKind.CHILD, StepKind.UNDO_CHILD) and (
            step.wait_correlation_id == child_id
        ):
            wake_parent(romancy, step, child)


def wake_parent(romancy: Romancy, step: StepRecord, child: WorkflowInstance) -> RunOutcome:
    """Record in the parent how ``child`` ended (or was undone), and move the parent on."""
    storage = romancy.storage
    claim = storage.claim(
        step.instance_id, step.token, romancy.worker_id, romancy.settings.lease_timeout
    )
    if claim is None:
        return RunOutcome.DUPLICATE  # woken already, or being woken right now
    command = claim.command
    plan_for: PlanFor
    # A child run that continued as new has not ended (the step follows its chain).
    if command.kind is StepKind.CHILD and child.is_terminal and child.status != Status.CONTINUED:
        rows = StepWrite(events=[_outcome_event(command.seq, command.step_id, child)])
        if child.status == Status.COMPLETED:
            # Undone if the parent rolls back: in its order where this end is recorded.
            undo = registration(
                command.seq,
                command.step_id,
                child.workflow_name,
                {"instance_id": child.instance_id},
                kind="child",
            )
            rows.registrations.append(undo)
        plan_for = _parent_moves_on(romancy, rows)
    elif command.kind is StepKind.UNDO_CHILD and child.status == Status.COMPENSATED:
        rows = StepWrite(compensation_update=(command.step_id, _undone(status="done")))
        plan_for = rolled_back(romancy, command.step_id)
    elif command.kind is StepKind.UNDO_CHILD and child.status == Status.COMPENSATION_FAILED:
        failure = describe_error(_child_error(child), command.step_id)
        rows = StepWrite(
            compensation_update=(command.step_id, _undone(status="failed", error=failure))
        )
        # Parked like a failed compensation: retry_compensation on the parent retries
        # the child's rollback, and the parent's goes on once the child's ends.
        plan = parked(claim.instance, command, Status.COMPENSATION_FAILED, failure)
        plan_for = fixed(plan)
    else:
        storage.release(claim)
        return RunOutcome.EARLY
    result = apply(romancy, claim.snapshot, plan_for, rows, claim)
    if result is not CommitResult.COMMITTED:
        storage.release(claim)
        return RunOutcome.FENCED
    ended = "completed" if child.status in (Status.COMPLETED, Status.COMPENSATED) else "failed"
    signals.send(
        signals.step_recorded,
        romancy,
        instance_id=claim.instance.instance_id,
        workflow=claim.instance.workflow_name,
        step_id=command.step_id,
        kind=str(command.kind),
        name=command.name,
        attempt=command.attempt,
        started_at=step.created_at,
        finished_at=utcnow(),
        outcome=ended,
    )
    return RunOutcome.RECORDED


def _parent_moves_on(romancy: Romancy, rows: StepWrite) -> PlanFor:
    """After a child's end: replay the parent; or, if it is failing and was only
    waiting for its children to end, begin its rollback once the last one has."""
    replay = replayed(romancy, rows)

    def plan_for(snapshot: Snapshot) -> Planned:
        instance = snapshot.instance
        if instance.status != Status.COMPENSATING:
            return replay(snapshot)
        instance_id = instance.instance_id

        def compensations() -> list[CompensationRecord]:
            stored = romancy.storage.get_compensations(instance_id)
            return [*reversed(rows.registrations), *stored]

        plan = roll_back_when_idle(
            instance,
            KEEP,
            snapshot.steps,
            compensations,
            romancy.registry.compensation_queue,
            final_status(instance),
        )
        return Planned(plan)

    return plan_for


def _outcome_event(seq: int, step_id: str, child: WorkflowInstance) -> HistoryEvent:
    if child.status == Status.COMPLETED:
        result = {"instance_id": child.instance_id, "output": child.output_data}
        return HistoryEvent(seq, step_id, HistoryKind.CHILD, child.workflow_name, result=result)
    error = describe_error(_child_error(child), step_id)
    return HistoryEvent(seq, step_id, HistoryKind.CHILD, child.workflow_name, error=error)


def _child_error(child: WorkflowInstance) -> ChildWorkflowError:
    return ChildWorkflowError(
        child.instance_id, child.workflow_name, child.status, child.error, child.cancel_reason
    )


def _undone(**changes: object) -> dict[str, object]:
    return {"attempts": 1, "finished_at": utcnow(), "error": None, **changes}


def begin_undo(romancy: Romancy, child_id: str) -> None:
    """Roll back a completed child for its parent: its registered compensations run,
    newest first, then it ends ``compensated`` (which wakes the parent)."""
    snapshot = romancy.storage.snapshot(child_id)
    if snapshot is None or snapshot.instance.status != Status.COMPLETED:
        return  # begun already (or gone)

    def plan_for(current: Snapshot) -> Planned:
        child = current.instance
        if child.status != Status.COMPLETED:
            return Planned(Plan())
        plan = start_rollback(
            child,
            None,
            romancy.storage.get_compensations(child_id),
            romancy.registry.compensation_queue,
            Status.COMPENSATED,
            current.steps,
        )
        return Planned(plan)

    apply(romancy, snapshot, plan_for)


def cancel_child(romancy: Romancy, child_id: str, reason: str) -> None:
    from .operations import cancel

    # A child that ended meanwhile needs nothing: its end wakes the parent.
    with contextlib.suppress(InstanceStateError, UnknownInstanceError):
        cancel(romancy, child_id, reason)


def reconcile(romancy: Romancy, stale_before: datetime, limit: int) -> int:
    """The recovery sweep's part for children: redo what a process that died right
    after a commit did not get to (see the module docstring). Returns the actions taken."""
    storage = romancy.storage
    done = 0
    for step, child in storage.child_steps_behind(stale_before, limit):
        if step.kind is StepKind.UNDO_CHILD and child.status == Status.COMPLETED:
            begin_undo(romancy, child.instance_id)
        else:
            wake_parent(romancy, step, child)
        done += 1
    for child_id in storage.children_to_cancel(limit):
        cancel_child(romancy, child_id, "its parent closed")
        done += 1
    return done
