"""The one transition: replay → record → plan → commit → publish.

Every change to an instance goes through ``apply``: a worker recording a step, a
retry, a rollback step, a fired timer or delivered event, and the operators' cancel,
resume and retry. It plans from a snapshot of the instance and commits only if the
instance is still at that snapshot's version; if a sibling branch or an operator moved
it meanwhile, it reads the instance again and plans anew. So when several branches of
a gather are recorded at once, exactly one of them sees all of them recorded and
advances the workflow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .commands import ActivityCommand
from .dispatch import publish
from .errors import WorkflowAlreadyStartedError
from .failures import describe_error
from .outbox import relay_written
from .patching import explained
from .planning import Plan, final_status, plan_outcome, start_rollback
from .recorded import recorded_rows
from .replay import ContinuedAsNew, Diverged, replay_recording
from .signals import announce_transition
from .states import ACTIVE, TERMINAL, HistoryKind, Status, StepKind
from .storage import (
    ChildIdTakenError,
    ChildStart,
    Claim,
    CommitResult,
    CompensationRecord,
    HistoryEvent,
    Snapshot,
    StepWrite,
    WorkflowInstance,
)
from .storage.schema import utcnow

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from .app import Romancy

# Each MOVED means another transition of the same instance committed: with N branches
# recorded at once, at most N - 1 tries are lost.
MAX_TRIES = 1000


@dataclass
class Planned:
    """A plan, the rows its replay recorded on its own (registrations, outbox, child
    instances), and the children it starts, each with its own first plan."""

    plan: Plan
    rows: StepWrite = field(default_factory=StepWrite)
    children: list[tuple[WorkflowInstance, Planned]] = field(default_factory=list)


PlanFor = Callable[[Snapshot], Planned]


def apply(
    romancy: Romancy,
    snapshot: Snapshot,
    plan_for: PlanFor,
    step_rows: StepWrite | None = None,
    claim: Claim | None = None,
    conn: Connection | None = None,
) -> CommitResult:
    """Plan with ``plan_for`` and commit, with ``step_rows`` (the finished step's own
    history, compensation, outbox and attempt rows), ending ``claim``'s step; publish
    what the plan dispatched once it is committed."""
    base = step_rows or StepWrite()
    store = romancy.storage
    for _ in range(MAX_TRIES):
        result = _try(romancy, snapshot, plan_for, base, claim, conn)
        if result is not CommitResult.MOVED:
            return result
        # Another transition went first (or the plan needs the history the claim left
        # out): read the instance again and plan anew.
        fresh = store.snapshot(snapshot.instance.instance_id, conn)
        if fresh is None:
            return CommitResult.FENCED
        snapshot = fresh
    raise RuntimeError(
        f"instance {snapshot.instance.instance_id} kept moving under {MAX_TRIES} tries"
    )


def _try(
    romancy: Romancy,
    snapshot: Snapshot,
    plan_for: PlanFor,
    base: StepWrite,
    claim: Claim | None,
    conn: Connection | None,
) -> CommitResult:
    """One plan and one commit."""
    try:
        # The claimed step ends with this commit: plan as if it were gone already.
        planned = plan_for(snapshot if claim is None else snapshot.ending(claim.step.token))
    except _HistoryNeededError:
        return CommitResult.MOVED
    plan, rows = planned.plan, planned.rows
    write = replace(
        base,
        instance_changes=plan.change,
        remove_steps=plan.remove,
        add_steps=plan.add,
        events=[*base.events, *rows.events],
        registrations=[*base.registrations, *rows.registrations],
        outbox=[*base.outbox, *rows.outbox],
        children=rows.children,
        continued_as=rows.continued_as,
    )
    result = romancy.storage.commit(snapshot, write, claim, conn)
    if result is CommitResult.COMMITTED:
        _committed(romancy, snapshot.instance, planned)
        relay_written(romancy, write)  # its outbox rows, now; beat is the fallback
    return result


class _HistoryNeededError(Exception):
    """A plan needs the history its snapshot left out."""


def start(
    romancy: Romancy,
    workflow_name: str,
    instance_id: str,
    input_data: dict[str, Any],
    search: dict[str, str] | None = None,
) -> tuple[WorkflowInstance, bool]:
    """A new instance, planned like every transition (a replay of an empty history
    finds its first steps, or its end); its row, its business keys (``search``), those
    steps and whatever the body recorded before them are inserted at once, unless the
    id exists."""
    new = new_instance(instance_id, workflow_name, input_data)
    for _ in range(MAX_TRIES):
        values, write, planned = planned_start(romancy, new, search)
        try:
            instance, created = romancy.storage.create_instance(values, write)
        except ChildIdTakenError:
            continue  # a child's id was taken meanwhile: plan again, its start fails
        if created:
            _committed(romancy, new, planned, started=True)
            relay_written(romancy, write)
        return instance, created
    raise RuntimeError(f"instance {instance_id} could not start its children")


def new_instance(
    instance_id: str,
    workflow_name: str,
    input_data: dict[str, Any],
    parent: WorkflowInstance | None = None,
    parent_close: str | None = None,
) -> WorkflowInstance:
    now = utcnow()
    return WorkflowInstance(
        instance_id=instance_id,
        workflow_name=workflow_name,
        status=Status.PENDING,
        input_data=input_data,
        output_data=None,
        error=None,
        version=0,
        cancel_reason=None,
        created_at=now,
        updated_at=now,
        parent_instance_id=parent.instance_id if parent is not None else None,
        root_instance_id=(parent.root_instance_id or parent.instance_id) if parent else None,
        parent_close=parent_close,
    )


def planned_start(
    romancy: Romancy, new: WorkflowInstance, search: dict[str, str] | None = None
) -> tuple[dict[str, Any], StepWrite, Planned]:
    """A new instance's row, what its start writes (with its business keys, ``search``),
    and its first plan."""
    planned = replayed(romancy, StepWrite())(Snapshot(new, [], []))
    plan = planned.plan
    change = plan.change
    if any(s.command.kind is StepKind.ACTIVITY for s in plan.add):
        change = replace(change, status=Status.PENDING)  # its first step not picked up yet
    values = {
        "instance_id": new.instance_id,
        "workflow_name": new.workflow_name,
        "input_data": new.input_data,
        "parent_instance_id": new.parent_instance_id,
        "root_instance_id": new.root_instance_id,
        "parent_close": new.parent_close,
        # Stamped with the version of the code that starts it (a child: its own).
        "workflow_version": romancy.registry.workflow(new.workflow_name).version,
        **change.columns(),
    }
    return values, replace(planned.rows, add_steps=plan.add, search=dict(search or {})), planned


def _committed(
    romancy: Romancy, instance: WorkflowInstance, planned: Planned, *, started: bool = False
) -> None:
    """What follows a commit: its messages, an event that may have come before a wait
    it began (see events.py), what it means for the instance's children and parent
    (see children.py), and the signals and log lines of how the instance moved.

    ``instance``: the instance as the transition found it; ``started``: the commit
    created it."""
    plan = planned.plan
    for dispatch in plan.dispatches:
        publish(romancy.app, dispatch)
    # Before the news it sends on: a child's end is announced before its parent's.
    announce_transition(romancy, instance, plan.change, plan.add, started)
    for child, child_planned in planned.children:
        _committed(romancy, child, child_planned, started=True)
    instance_id = instance.instance_id
    if any(s.command.kind is StepKind.WAIT_EVENT for s in plan.add):
        from .events import deliver_kept_event

        deliver_kept_event(romancy, instance_id)
    undo = [s.wait_correlation_id for s in plan.add if s.command.kind is StepKind.UNDO_CHILD]
    # A child that continued as new has not ended: its parent waits for the next run.
    ended = plan.change.status in TERMINAL and plan.change.status != Status.CONTINUED
    ended = ended and instance.parent_instance_id is not None
    if plan.cancel_children or undo or ended:
        from . import children

        children.after_commit(romancy, instance, plan.cancel_children, undo, ended)


# -- the plans ------------------------------------------------------------------------


def replayed(
    romancy: Romancy,
    step_rows: StepWrite,
    *,
    parent_id: str | None = None,
    revive: bool = False,
    branch_of: ActivityCommand | None = None,
) -> PlanFor:
    """Replay with the finished step's history added and plan what follows.

    ``revive``: replay an instance parked as failed too (``resume``). ``branch_of``:
    the finished step's command, when it is a branch of a gather.
    """

    def plan_for(snapshot: Snapshot) -> Planned:
        instance = snapshot.instance
        in_flight = snapshot.steps
        if instance.status not in ACTIVE and not revive:
            # A branch recorded after the instance moved past it (a rollback begun, the
            # instance parked or ended): keep its record, decide nothing.
            return Planned(Plan())
        siblings_run = any(s.kind is StepKind.ACTIVITY for s in in_flight)
        whole_gather_sent = branch_of is not None and branch_of.group_limit is None
        if whole_gather_sent and siblings_run and instance.cancel_reason is None:
            # A branch of a gather that sent all its branches at once, with siblings still
            # running: whatever it recorded, the gather waits for them and sends nothing
            # (the body runs one gather at a time). Only the last one replays, so a
            # fan-out of n costs n commits, not n replays of n steps.
            return Planned(Plan())
        if not snapshot.complete:
            raise _HistoryNeededError
        workflow = romancy.registry.workflow(instance.workflow_name)
        history = [*snapshot.history, *step_rows.events]
        running = {s.step_id for s in in_flight if s.kind in (StepKind.ACTIVITY, StepKind.CHILD)}
        waits = {s.step_id for s in in_flight if s.kind in (StepKind.TIMER, StepKind.WAIT_EVENT)}
        refused: list[HistoryEvent] = []
        while True:
            replay = replay_recording(
                workflow,
                instance.instance_id,
                instance.input_data,
                [*history, *refused],
                running,
                romancy.registry,
                romancy.settings.max_payload_bytes,
                waits,
            )
            rows = recorded_rows([*refused, *replay.events])
            outcome = replay.outcome
            if isinstance(outcome, Diverged):
                versions = instance.workflow_version, workflow.version
                outcome = Diverged(explained(outcome.error, history, *versions))
            if isinstance(outcome, ContinuedAsNew):
                from . import continuation

                outcome = continuation.allowed(romancy, instance, outcome, history)

            def compensations() -> list[CompensationRecord]:
                # Newest first: what this transition registers, then what is stored.
                fresh = [*step_rows.registrations, *rows.registrations]  # noqa: B023
                return [*reversed(fresh), *romancy.storage.get_compensations(instance.instance_id)]

            plan = plan_outcome(
                instance,
                instance.cancel_reason,
                outcome,
                in_flight,
                compensations,
                romancy.registry.compensation_queue,
                parent_id,
                replay.started,
            )
            taken = [c for c in plan.start_children if _id_taken(romancy, c)]
            if not taken:
                break
            # Replay again with those starts refused: the body sees the error at the call.
            refused += [start_refused(c) for c in taken]
        planned = Planned(plan, rows)
        for command in plan.start_children:
            child = new_instance(
                command.arguments["instance_id"],
                command.name,
                command.arguments["input"],
                instance,
                command.arguments["parent_close"],
            )
            values, write, child_planned = planned_start(romancy, child)
            rows.children.append(ChildStart(values, write))
            planned.children.append((child, child_planned))
        if plan.continue_with is not None:
            from . import continuation

            events = [*step_rows.events, *rows.events]
            continuation.start_next_run(romancy, instance, plan.continue_with, events, planned)
        return planned

    return plan_for


def rolled_back(romancy: Romancy, undone_step: str | None) -> PlanFor:
    """The next compensation after ``undone_step`` (or the first), or the end."""

    def plan_for(snapshot: Snapshot) -> Planned:
        instance = snapshot.instance
        remaining = [
            c
            for c in romancy.storage.get_compensations(instance.instance_id)
            if c.step_id != undone_step
        ]
        plan = start_rollback(
            instance,
            instance.error,
            remaining,
            romancy.registry.compensation_queue,
            final_status(instance),
            snapshot.steps,
        )
        return Planned(plan)

    return plan_for


def fixed(plan: Plan) -> PlanFor:
    """A plan that does not depend on the instance's state (a retry, a parked step)."""
    return lambda _snapshot: Planned(plan)


def _id_taken(romancy: Romancy, command: ActivityCommand) -> bool:
    return romancy.storage.instance_exists(command.arguments["instance_id"])


def start_refused(command: ActivityCommand) -> HistoryEvent:
    """The record of a child start whose instance id another instance already has."""
    child_id = command.arguments["instance_id"]
    error = WorkflowAlreadyStartedError(
        child_id, "is already used by another instance; give each child an id of its own"
    )
    return HistoryEvent(
        command.seq,
        command.step_id,
        HistoryKind.CHILD,
        command.name,
        error=describe_error(error, command.step_id),
    )
