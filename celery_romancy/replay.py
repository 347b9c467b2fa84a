"""Replay: run a workflow function against its history and decide what happens next."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery.exceptions import WorkerShutdown, WorkerTerminate

from .commands import ActivityCommand
from .context import WorkflowContext
from .errors import ContinueAsNew, NonDeterminismError, SerializationError, Suspend
from .failures import describe_error

if TYPE_CHECKING:
    from .definitions import WorkflowDefinition
    from .registry import Registry
    from .storage import HistoryEvent


# Raised into a running task by Celery's own signal handlers to stop the worker process
# (a hard shutdown of the solo pool), never by workflow code: the step must stay
# unrecorded, to be run again, not end the workflow as failed.
_PROCESS_STOPS = (WorkerShutdown, WorkerTerminate)


@dataclass(frozen=True)
class Waiting:
    """The workflow waits for these steps (one, or the branches of a gather that should
    be in flight now; none while it waits for branches already sent); history records
    everything before them."""

    commands: tuple[ActivityCommand, ...]


@dataclass(frozen=True)
class Completed:
    output: Any  # JSON form of the return value


@dataclass(frozen=True)
class Failed:
    error: dict[str, Any]  # describe_error() of what the workflow body raised


@dataclass(frozen=True)
class Diverged:
    """The code no longer matches the history: park, never guess."""

    error: NonDeterminismError


@dataclass(frozen=True)
class ContinuedAsNew:
    """The workflow called ``ctx.continue_as_new``: this run ends, the next one starts
    with ``input_data`` (its arguments as stored JSON) and an empty history."""

    input_data: dict[str, Any]


Outcome = Waiting | Completed | Failed | Diverged | ContinuedAsNew


@dataclass(frozen=True)
class Replayed:
    """A replay's outcome, with what it recorded on its own (compensation registrations,
    published events) and the child workflows it started without waiting: all of them
    commit with the outcome."""

    outcome: Outcome
    events: list[HistoryEvent] = field(default_factory=list)
    started: list[ActivityCommand] = field(default_factory=list)


def replay(
    workflow: WorkflowDefinition[Any, Any],
    instance_id: str,
    input_data: dict[str, Any],
    history: list[HistoryEvent],
    in_flight: Collection[str] = (),
) -> Outcome:
    return replay_recording(workflow, instance_id, input_data, history, in_flight).outcome


def replay_recording(
    workflow: WorkflowDefinition[Any, Any],
    instance_id: str,
    input_data: dict[str, Any],
    history: list[HistoryEvent],
    in_flight: Collection[str] = (),
    registry: Registry | None = None,
    max_payload_bytes: int | None = None,
    waits: Collection[str] = (),
) -> Replayed:
    """Replay, and also return what this replay recorded and started on its own.

    ``in_flight``: the step ids of activities and child workflows sent and not recorded
    yet (branches of a gather that are still running, children that run).
    ``registry``: where child workflows are looked up. ``waits``: the step ids of the
    timers and event waits begun and not over.
    """
    ctx = WorkflowContext(
        instance_id, workflow.name, history, in_flight, registry, max_payload_bytes, waits
    )
    try:
        value = workflow.run(ctx, input_data)
    except Suspend as suspend:
        outcome: Outcome = Waiting(suspend.commands)
    except ContinueAsNew as continued:
        outcome = ContinuedAsNew(continued.input_data)
    except _PROCESS_STOPS:
        raise
    except BaseException as exc:  # noqa: BLE001 - whatever the body raises fails the workflow
        # SystemExit, GeneratorExit, KeyboardInterrupt... included: raised by the body, they
        # would be raised again on every replay and kill each worker (or CLI) that tries it.
        if ctx.reraised is not None and ctx.reraised[0] is exc:
            outcome = Failed(ctx.reraised[1])
        else:
            outcome = Failed(describe_error(exc, _last_step(history)))
    else:
        try:
            outcome = Completed(workflow.shape.encode_result(value))
        except SerializationError as exc:
            outcome = Failed(describe_error(exc, _last_step(history)))
    if ctx.nondeterminism is not None:
        return Replayed(Diverged(ctx.nondeterminism))
    if ctx.suspended is not None:
        return Replayed(Waiting(ctx.suspended.commands), ctx.new_events, ctx.started)
    if ctx.continued is not None:  # even if the body caught it and went on
        outcome = ContinuedAsNew(ctx.continued.input_data)
    skipped = ctx.recorded_beyond_reach()
    if not isinstance(outcome, Waiting) and skipped is not None:
        # The body ended before reaching steps that history says it took.
        error = NonDeterminismError(instance_id, skipped.seq, skipped.step_id, "<end of workflow>")
        return Replayed(Diverged(error))
    return Replayed(outcome, ctx.new_events, ctx.started)


def _last_step(history: list[HistoryEvent]) -> str | None:
    return max(history, key=lambda e: e.seq).step_id if history else None
