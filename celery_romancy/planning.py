"""From a replay's outcome to the instance's next state and the messages to publish.

Pure: an instance, what replay decided and the steps still in flight go in; a ``Plan``
(the instance change, the steps to add and to end, the messages to send after the
commit) comes out. No I/O, so every rule here is tested without a database.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .commands import ActivityCommand
from .dispatch import Dispatch
from .failures import describe_error
from .replay import Completed, Diverged, Failed, Outcome, Waiting
from .states import Status, StepKind
from .storage.records import KEEP, InstanceChange, NewStep, StepRef
from .storage.schema import utcnow

if TYPE_CHECKING:
    from .dispatch import InstanceRef
    from .storage import CompensationRecord

# Timers due within this many seconds also get a Celery countdown message, for
# precision; later ones (and any message lost) are fired by the beat job.
COUNTDOWN_HORIZON = 900.0


def new_token() -> str:
    return uuid.uuid4().hex


@dataclass
class Plan:
    change: InstanceChange = field(default_factory=InstanceChange)
    add: list[NewStep] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)  # tokens of steps that end here
    dispatches: list[Dispatch] = field(default_factory=list)


def dispatch_step(
    instance: InstanceRef,
    command: ActivityCommand,
    *,
    delay: float = 0.0,
    parent_id: str | None = None,
    parked: bool = False,
) -> tuple[NewStep, Dispatch | None]:
    """A step row for ``command`` and the message that runs it (none for a parked step,
    an event wait, or a timer beyond the countdown horizon: beat fires those)."""
    token = new_token()
    now = utcnow()
    if parked:
        return NewStep(token, command, None), None
    countdown: float | None = delay or None
    if command.kind is StepKind.TIMER:
        fire_at = datetime.fromisoformat(command.arguments["fire_at"])
        step = NewStep(token, command, fire_at)
        countdown = max((fire_at - now).total_seconds(), 0.0)
        if countdown > COUNTDOWN_HORIZON:
            return step, None
    elif command.kind is StepKind.WAIT_EVENT:
        timeout_at = command.arguments.get("timeout_at")
        step = NewStep(
            token,
            command,
            datetime.fromisoformat(timeout_at) if timeout_at else None,
            wait_event_type=command.name,
            wait_correlation_id=command.arguments.get("correlation_id"),
        )
        return step, None
    else:
        step = NewStep(token, command, now + timedelta(seconds=delay))
    dispatch = Dispatch(
        instance.instance_id,
        instance.workflow_name,
        token,
        command,
        countdown=countdown,
        parent_id=parent_id,
    )
    return step, dispatch


def status_of(kinds: Sequence[StepKind]) -> Status:
    """An instance's status from the kinds of its steps in flight."""
    if StepKind.COMPENSATION in kinds:
        return Status.COMPENSATING
    if StepKind.ACTIVITY in kinds:
        return Status.RUNNING
    if StepKind.TIMER in kinds:
        return Status.WAITING_FOR_TIMER
    if StepKind.WAIT_EVENT in kinds:
        return Status.WAITING_FOR_EVENT
    return Status.RUNNING


def plan_outcome(
    instance: InstanceRef,
    cancel_reason: str | None,
    outcome: Outcome,
    in_flight: Sequence[StepRef],
    registered_compensations: Callable[[], list[CompensationRecord]],
    compensation_queue: Callable[[str], str | None],
    parent_id: str | None = None,
) -> Plan:
    """What follows ``outcome``, with ``in_flight`` the steps still running besides."""
    if isinstance(outcome, Waiting):
        if cancel_reason is not None:
            return wind_down(instance, in_flight, registered_compensations, compensation_queue)
        on_its_way = {s.step_id for s in in_flight}
        plan = Plan()
        for command in outcome.commands:
            if command.step_id in on_its_way:
                continue  # a branch already sent (or a wait already begun)
            step, dispatch = dispatch_step(instance, command, parent_id=parent_id)
            plan.add.append(step)
            if dispatch is not None:
                plan.dispatches.append(dispatch)
        kinds = [s.kind for s in in_flight] + [s.command.kind for s in plan.add]
        # Moving forward clears a parked instance's error.
        plan.change = InstanceChange(status=status_of(kinds), error=None)
        return plan
    if isinstance(outcome, Completed):
        return finish(Status.COMPLETED, in_flight, output_data=outcome.output, error=None)
    if isinstance(outcome, Diverged):
        # No rollback: history and code disagree, so an operator must look first.
        error = describe_error(outcome.error, outcome.error.recorded)
        return finish(Status.FAILED, in_flight, error=error)
    assert isinstance(outcome, Failed)
    return start_rollback(
        instance,
        outcome.error,
        registered_compensations(),
        compensation_queue,
        Status.FAILED,
        in_flight,
    )


def wind_down(
    instance: InstanceRef,
    in_flight: Sequence[StepRef],
    registered_compensations: Callable[[], list[CompensationRecord]],
    compensation_queue: Callable[[str], str | None],
) -> Plan:
    """A cancel requested: send nothing new; once no branch runs, roll back."""
    if any(s.kind is StepKind.ACTIVITY and s.leased for s in in_flight):
        # Queued siblings are dropped by their own workers (they see the cancel).
        return Plan(remove=[s.token for s in in_flight if not s.leased])
    return start_rollback(
        instance, KEEP, registered_compensations(), compensation_queue, Status.CANCELLED, in_flight
    )


def finish(status: Status, in_flight: Sequence[StepRef] = (), **columns: Any) -> Plan:
    """End the instance; steps no worker holds end with it (a held one is fenced out
    when it tries to record)."""
    return Plan(
        change=InstanceChange(status=status, **columns),
        remove=[s.token for s in in_flight if not s.leased],
    )


def start_rollback(
    instance: InstanceRef,
    error: dict[str, Any] | None,
    compensations: list[CompensationRecord],
    compensation_queue: Callable[[str], str | None],
    final_status: Status,
    in_flight: Sequence[StepRef] = (),
) -> Plan:
    """Begin (or continue) undoing succeeded steps, newest first; or end with ``final_status``."""
    command = next_compensation(compensations, compensation_queue)
    if command is None:
        return finish(final_status, in_flight, error=error)
    step, dispatch = dispatch_step(instance, command)
    assert dispatch is not None
    return Plan(
        change=InstanceChange(status=Status.COMPENSATING, error=error),
        add=[step],
        remove=[s.token for s in in_flight if not s.leased],
        dispatches=[dispatch],
    )


def next_compensation(
    compensations: list[CompensationRecord], compensation_queue: Callable[[str], str | None]
) -> ActivityCommand | None:
    """The newest registered compensation (``compensations`` come newest first)."""
    newest = next((c for c in compensations if c.status == "registered"), None)
    if newest is None:
        return None
    return ActivityCommand(
        kind=StepKind.COMPENSATION,
        name=newest.name,
        step_id=newest.step_id,
        seq=newest.seq,
        arguments=newest.arguments,
        queue=compensation_queue(newest.name),
    )
