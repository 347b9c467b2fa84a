"""From a replay's outcome to the instance's next state and the messages to publish.

Pure: an instance, what replay decided and the steps still in flight go in; a ``Plan``
(the instance change, the steps to add and to end, the messages to send after the
commit) comes out. No I/O, so every rule here is tested without a database.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .commands import ActivityCommand
from .dispatch import Dispatch
from .failures import describe_error
from .replay import Completed, ContinuedAsNew, Diverged, Failed, Outcome, Waiting
from .states import Status, StepKind
from .storage.records import KEEP, InstanceChange, NewStep, StepRef
from .storage.schema import utcnow

if TYPE_CHECKING:
    from .dispatch import InstanceRef
    from .storage import CompensationRecord, WorkflowInstance

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
    # Child workflows to start with this commit (``StepKind.CHILD`` commands).
    start_children: list[ActivityCommand] = field(default_factory=list)
    # Running children to cancel once this commit is in (their parent closes).
    cancel_children: list[str] = field(default_factory=list)
    # ``ctx.continue_as_new``: the next run's input, its row inserted with this commit.
    continue_with: dict[str, Any] | None = None


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
    if command.kind in (StepKind.CHILD, StepKind.UNDO_CHILD):
        # No message: the child's own last transition wakes it. Stamped with now, so the
        # recovery sweep can tell a wake that is late from one still on its way.
        arguments = command.arguments
        # The input goes into the child's own row; the step keeps who and how.
        kept = replace(command, arguments={k: v for k, v in arguments.items() if k != "input"})
        at = None if parked else now
        policy, child = arguments.get("parent_close"), arguments["instance_id"]
        return NewStep(token, kept, at, policy, child), None
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
    """An instance's status from the kinds of its steps in flight (waiting for a child
    workflow is ``running``: the tree runs)."""
    if StepKind.COMPENSATION in kinds or StepKind.UNDO_CHILD in kinds:
        return Status.COMPENSATING
    if StepKind.ACTIVITY in kinds or StepKind.CHILD in kinds:
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
    started: Sequence[ActivityCommand] = (),
) -> Plan:
    """What follows ``outcome``, with ``in_flight`` the steps still running besides and
    ``started`` the child workflows the body started in this replay (without waiting)."""
    # A started child is a child step from now on, like one started earlier: whatever
    # the outcome decides for those decides for it (its step is added only if kept).
    new_children = [dispatch_step(instance, command)[0] for command in started]
    refs = [*in_flight, *(_ref(step) for step in new_children)]
    if isinstance(outcome, Waiting) and cancel_reason is None:
        on_its_way = {s.step_id for s in refs}
        plan = Plan(add=list(new_children))
        for command in outcome.commands:
            if command.step_id in on_its_way:
                continue  # a branch already sent (or a wait already begun)
            step, dispatch = dispatch_step(instance, command, parent_id=parent_id)
            plan.add.append(step)
            if dispatch is not None:
                plan.dispatches.append(dispatch)
            if command.kind is StepKind.CHILD:
                plan.start_children.append(command)  # a child branch of a gather
        kinds = [s.kind for s in in_flight] + [s.command.kind for s in plan.add]
        # Moving forward clears a parked instance's error.
        plan.change = InstanceChange(status=status_of(kinds), error=None)
    elif isinstance(outcome, Waiting):
        plan = wind_down(instance, refs, registered_compensations, compensation_queue)
    elif isinstance(outcome, Completed):
        # A cancel that came while the last step ran is kept, marked as too late.
        late = {} if cancel_reason is None else {"cancel_reason": too_late(cancel_reason)}
        plan = finish(Status.COMPLETED, refs, output_data=outcome.output, error=None, **late)
    elif isinstance(outcome, ContinuedAsNew) and cancel_reason is None:
        # Nothing runs besides (continue_as_new refuses otherwise): this run ends here.
        plan = finish(Status.CONTINUED, refs, output_data=None, error=None)
        plan.continue_with = outcome.input_data
    elif isinstance(outcome, ContinuedAsNew):
        # Cancelled while its last step ran: the cancel wins, this run rolls back and
        # no next run starts (it would not know it was cancelled).
        plan = wind_down(instance, refs, registered_compensations, compensation_queue)
    elif isinstance(outcome, Diverged):
        # No rollback: history and code disagree, so an operator must look first.
        error = describe_error(outcome.error, outcome.error.recorded)
        plan = finish(Status.FAILED, refs, error=error)
    else:
        assert isinstance(outcome, Failed)
        cancelled = cancel_reason is not None
        plan = roll_back_when_idle(
            instance,
            # Cancelled meanwhile: the cancel is the cause (a failure after it, such as
            # the ChildWorkflowError of a child it cancelled, is a consequence; history
            # keeps it).
            KEEP if cancelled else outcome.error,
            refs,
            registered_compensations,
            compensation_queue,
            Status.CANCELLED if cancelled else Status.FAILED,
            waiting_status=Status.COMPENSATING,
        )
    plan.start_children = [*started, *plan.start_children]
    return _unsent_children_dropped(plan, new_children)


TOO_LATE = " (too late: the workflow completed first)"


def too_late(cancel_reason: str) -> str:
    """A cancel reason marked as having come after the workflow's last step began."""
    return cancel_reason if cancel_reason.endswith(TOO_LATE) else f"{cancel_reason}{TOO_LATE}"


def _ref(step: NewStep) -> StepRef:
    return StepRef(
        step.token,
        step.command.step_id,
        step.command.kind,
        leased=False,
        child_id=step.wait_correlation_id,
        abandon=step.wait_event_type == "abandon",
    )


def _unsent_children_dropped(plan: Plan, new_children: list[NewStep]) -> Plan:
    """Child steps started in this replay are not in the database yet: one the plan
    ends is simply not added (its child is still started, then closed as planned)."""
    fresh = {step.token for step in new_children}
    ended = {token for token in plan.remove if token in fresh}
    plan.remove = [token for token in plan.remove if token not in fresh]
    plan.add = [step for step in plan.add if step.token not in ended]
    return plan


def wind_down(
    instance: InstanceRef,
    in_flight: Sequence[StepRef],
    registered_compensations: Callable[[], list[CompensationRecord]],
    compensation_queue: Callable[[str], str | None],
) -> Plan:
    """A cancel requested: send nothing new; once no branch and no child runs, roll back."""
    return roll_back_when_idle(
        instance, KEEP, in_flight, registered_compensations, compensation_queue, Status.CANCELLED
    )


def roll_back_when_idle(
    instance: InstanceRef,
    error: dict[str, Any] | None,
    in_flight: Sequence[StepRef],
    registered_compensations: Callable[[], list[CompensationRecord]],
    compensation_queue: Callable[[str], str | None],
    final_status: Status,
    waiting_status: Status | None = None,
) -> Plan:
    """Roll back once nothing runs any more: no activity held by a worker, no child
    that the parent cancels (``parent_close="cancel"``) still running. Until then the
    instance waits (as ``waiting_status``, if given) and those children are cancelled;
    abandoned children are let go. A child that completes meanwhile is undone with the
    rest; one that ends cancelled or failed has compensated itself."""
    held = [s for s in in_flight if s.kind is StepKind.CHILD and not s.abandon]
    busy = any(s.kind is StepKind.ACTIVITY and s.leased for s in in_flight)
    if not held and not busy:
        return start_rollback(
            instance, error, registered_compensations(), compensation_queue, final_status, in_flight
        )
    # Queued siblings are dropped by their own workers (they see the cancel).
    change = InstanceChange(status=waiting_status, error=error)
    return Plan(
        change=change,
        remove=[s.token for s in in_flight if not s.leased and s not in held],
        cancel_children=[s.child_id for s in held if s.child_id is not None],
    )


def finish(status: Status, in_flight: Sequence[StepRef] = (), **columns: Any) -> Plan:
    """End the instance; steps no worker holds end with it (a held one is fenced out
    when it tries to record), and children it holds are cancelled (parent close)."""
    return Plan(
        change=InstanceChange(status=status, **columns),
        remove=[s.token for s in in_flight if not s.leased],
        cancel_children=_held_children(in_flight),
    )


def _held_children(in_flight: Sequence[StepRef]) -> list[str]:
    return [
        s.child_id
        for s in in_flight
        if s.kind is StepKind.CHILD and not s.abandon and s.child_id is not None
    ]


def final_status(instance: WorkflowInstance) -> Status:
    """How a rollback ends: ``cancelled`` if it was asked for, ``failed`` after a
    failure, ``compensated`` when a parent undoes a child that had completed."""
    if instance.cancel_reason is not None:
        return Status.CANCELLED
    return Status.FAILED if instance.error is not None else Status.COMPENSATED


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
    return Plan(
        change=InstanceChange(status=Status.COMPENSATING, error=error),
        add=[step],
        remove=[s.token for s in in_flight if not s.leased],
        dispatches=[dispatch] if dispatch is not None else [],
        cancel_children=_held_children(in_flight),
    )


def next_compensation(
    compensations: list[CompensationRecord], compensation_queue: Callable[[str], str | None]
) -> ActivityCommand | None:
    """The newest registered compensation (``compensations`` come newest first)."""
    newest = next((c for c in compensations if c.status == "registered"), None)
    if newest is None:
        return None
    # A completed child workflow is undone by its own rollback, its parent waiting.
    child = newest.kind == "child"
    return ActivityCommand(
        kind=StepKind.UNDO_CHILD if child else StepKind.COMPENSATION,
        name=newest.name,
        step_id=newest.step_id,
        seq=newest.seq,
        arguments=newest.arguments,
        queue=None if child else compensation_queue(newest.name),
    )


def parked(
    instance: WorkflowInstance, command: ActivityCommand, status: Status, failure: dict[str, Any]
) -> Plan:
    """End the instance as ``status`` with ``command``'s step kept, unsent, to retry."""
    step, _ = dispatch_step(instance, command, parked=True)
    if command.kind in (StepKind.COMPENSATION, StepKind.UNDO_CHILD):
        # The saga's own error stays; the compensation's is added beside it.
        error = {**(instance.error or {}), "compensation_error": failure}
    else:
        error = failure
    return Plan(change=InstanceChange(status=status, error=error), add=[step])
