"""Signals a saga sends as it moves, beside Celery's own task signals.

Celery's ``Signal`` objects (``celery.utils.dispatch.Signal``), connected the same way::

    from celery_romancy import signals

    @signals.workflow_failed.connect
    def page_someone(sender, instance_id, workflow, error, status, **kwargs):
        ...

``sender`` is the ``Romancy``. Each is sent once per transition, after its commit, in
the process that committed it (a worker for most, the caller of ``start_workflow`` or
``cancel`` for a start or a cancel with no step in flight). A receiver that raises is
logged and changes nothing: the transition stands, the step goes on.

Workflow signals (``instance_id``, ``workflow`` and):

- ``workflow_started``: the instance was created (not sent for an id that existed);
- ``workflow_completed``: ``output``, the workflow's return value as stored (JSON);
- ``workflow_failed``: ``error`` (the recorded error, a dict like ``describe_error``'s)
  and ``status``: ``"failed"`` once its rollback is done (or when it is parked by a
  nondeterminism or poison-step error), ``"compensation_failed"`` when its rollback is
  parked for an operator (then ``compensation_failed`` is sent too);
- ``workflow_cancelled``: ``reason``, once its rollback is done;
- a run that continues (``ctx.continue_as_new``, status ``continued``) has not ended
  the workflow: it sends none of these, and its next run sends ``workflow_started``;
- ``compensation_failed``: ``step_id`` (the step whose undo failed) and ``error`` (the
  compensation's error record).

Step signals, sent by the worker that ran the step:

- ``step_failed``: ``step_id``, ``attempt``, ``error`` (the attempt's error record) and
  ``will_retry``: an activity's or a compensation's attempt failed (a compensation's
  ``step_id`` is ``"<compensation>:undo:<step id>"``);
- ``step_recorded``: every step that ends (an activity, compensation, timer, event
  wait, or a parent's wait for a child workflow or for its undo), for metrics and
  traces: ``step_id``, ``kind``, ``name``, ``attempt``, ``started_at``, ``finished_at``
  (aware UTC datetimes) and ``outcome``: ``"completed"``, ``"failed"`` or
  ``"retrying"``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from celery.utils.dispatch import Signal

from .states import TERMINAL, Status, StepKind
from .storage.records import KEEP

if TYPE_CHECKING:
    from .app import Romancy
    from .storage.records import InstanceChange, NewStep, WorkflowInstance

__all__ = [
    "compensation_failed",
    "step_failed",
    "step_recorded",
    "workflow_cancelled",
    "workflow_completed",
    "workflow_failed",
    "workflow_started",
]

logger = logging.getLogger(__name__)

_WORKFLOW = {"instance_id", "workflow"}

workflow_started = Signal(name="workflow_started", providing_args=_WORKFLOW)
workflow_completed = Signal(name="workflow_completed", providing_args={*_WORKFLOW, "output"})
workflow_failed = Signal(name="workflow_failed", providing_args={*_WORKFLOW, "error", "status"})
workflow_cancelled = Signal(name="workflow_cancelled", providing_args={*_WORKFLOW, "reason"})
compensation_failed = Signal(
    name="compensation_failed", providing_args={*_WORKFLOW, "step_id", "error"}
)
step_failed = Signal(
    name="step_failed",
    providing_args={*_WORKFLOW, "step_id", "attempt", "error", "will_retry"},
)
step_recorded = Signal(
    name="step_recorded",
    providing_args={
        *_WORKFLOW,
        "step_id",
        "kind",
        "name",
        "attempt",
        "started_at",
        "finished_at",
        "outcome",
    },
)


def send(signal: Any, romancy: Romancy, **arguments: Any) -> None:
    """Send ``signal`` from ``romancy``; never raises.

    Celery's ``Signal.send`` already logs and swallows what a receiver raises; this
    guards the rest (a receiver list that cannot be read, an older Celery), since the
    commit the signal reports has happened and must not look failed.
    """
    try:
        signal.send(sender=romancy, **arguments)
    except Exception:
        logger.exception("celery_romancy: a receiver of %s failed", signal.name)


# Errors that park an instance as failed until an operator resumes it.
_PARKING_ERRORS = ("NonDeterminismError", "PoisonStepError")
_UNDOING = (StepKind.COMPENSATION, StepKind.UNDO_CHILD)


def announce_transition(
    romancy: Romancy,
    instance: WorkflowInstance,
    change: InstanceChange,
    added: Sequence[NewStep],
    started: bool,
) -> None:
    """The workflow signals and log lines of one committed transition of ``instance``
    (as the transition found it) that made ``change`` and added the steps ``added``;
    ``started``: the commit created the instance. A transition commits once, so each
    is sent once."""
    instance_id, workflow = instance.instance_id, instance.workflow_name
    if started:
        send(workflow_started, romancy, instance_id=instance_id, workflow=workflow)
    status = change.status
    if status not in TERMINAL or (status == instance.status and not started):
        return
    error = instance.error if change.error is KEEP else change.error
    failed = {
        "instance_id": instance_id,
        "workflow": workflow,
        "error": error,
        "status": str(status),
    }
    if status == Status.COMPLETED:
        output = instance.output_data if change.output_data is KEEP else change.output_data
        send(workflow_completed, romancy, instance_id=instance_id, workflow=workflow, output=output)
    elif status == Status.CANCELLED:
        reason = instance.cancel_reason if change.cancel_reason is KEEP else change.cancel_reason
        logger.warning(
            "celery_romancy: workflow %s %s cancelled: %s", workflow, instance_id, reason
        )
        send(workflow_cancelled, romancy, instance_id=instance_id, workflow=workflow, reason=reason)
    elif status == Status.FAILED:
        error = error or {}
        type_name = str(error.get("type", ""))
        parked = type_name.rpartition(".")[2] in _PARKING_ERRORS
        logger.log(
            logging.ERROR if parked else logging.WARNING,
            "celery_romancy: workflow %s %s failed%s: %s: %s",
            workflow,
            instance_id,
            ", parked until `romancy resume`" if parked else "",
            type_name,
            error.get("message"),
        )
        send(workflow_failed, romancy, **failed)
    elif status == Status.COMPENSATION_FAILED:
        failure = (error or {}).get("compensation_error") or {}
        # The step kept, unsent, for ``retry_compensation`` is the undo that failed.
        step_id = next(
            (step.command.step_id for step in added if step.command.kind in _UNDOING),
            failure.get("step"),
        )
        logger.error(
            "celery_romancy: workflow %s %s is parked in compensation_failed: undoing %s "
            "failed with %s: %s; once fixed, run `romancy retry-compensation %s`",
            workflow,
            instance_id,
            step_id,
            failure.get("type"),
            failure.get("message"),
            instance_id,
        )
        send(workflow_failed, romancy, **failed)
        send(
            compensation_failed,
            romancy,
            instance_id=instance_id,
            workflow=workflow,
            step_id=step_id,
            error=failure,
        )
