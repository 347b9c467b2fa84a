"""The engine's vocabularies, one enum each: instance statuses, step kinds, runner outcomes.

They are ``StrEnum``s: stored as their plain string values, and equal to those strings,
so ``instance.status == "completed"`` keeps working in user code.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """Where a workflow instance is in its life."""

    PENDING = "pending"  # started; its first step not picked up yet
    RUNNING = "running"
    WAITING_FOR_TIMER = "waiting_for_timer"
    WAITING_FOR_EVENT = "waiting_for_event"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    COMPENSATION_FAILED = "compensation_failed"
    COMPENSATED = "compensated"  # a completed child workflow undone by its parent's rollback
    CONTINUED = "continued"  # handed over to its next run (ctx.continue_as_new)


TERMINAL = frozenset(
    {
        Status.COMPLETED,
        Status.FAILED,
        Status.CANCELLED,
        Status.COMPENSATION_FAILED,
        Status.COMPENSATED,
        Status.CONTINUED,
    }
)
# An operator may cancel these; a worker may still move them on.
ACTIVE = frozenset(
    {Status.PENDING, Status.RUNNING, Status.WAITING_FOR_TIMER, Status.WAITING_FOR_EVENT}
)
# The errors (their ``error["type"]``) that park an instance as ``failed`` without a
# rollback, for an operator to ``resume`` once the code or the cause is fixed.
PARKED_ERRORS = (
    "celery_romancy.errors.NonDeterminismError",
    "celery_romancy.errors.PoisonStepError",
)


class StepKind(StrEnum):
    """What a dispatched step is. Activities and compensations run as Celery tasks of
    their own name; timers and event waits hold no worker and are fired by the engine;
    a child step waits for a child workflow to end (or, in a rollback, to be undone)
    and is woken by the child's own last transition."""

    ACTIVITY = "activity"
    COMPENSATION = "compensation"
    TIMER = "timer"
    WAIT_EVENT = "wait_event"
    CHILD = "child"
    UNDO_CHILD = "undo_child"

    @property
    def runs_as_task(self) -> bool:
        return self in (StepKind.ACTIVITY, StepKind.COMPENSATION)


class HistoryKind(StrEnum):
    """What a history row records."""

    ACTIVITY = "activity"
    TIMER = "timer"
    EVENT = "event"
    COMPENSATION_REGISTERED = "compensation_registered"
    EVENT_PUBLISHED = "event_published"
    GATHER = "gather"  # the branch list of a ctx.gather / ctx.map, checked on replay
    CHILD = "child"  # how a child workflow ended: its output, or ChildWorkflowError
    SEARCH_ATTRIBUTES = "search_attributes"  # ctx.set_search_attributes: the values set
    MARKER = "marker"  # ctx.patched: this run took the patched path


class RunOutcome(StrEnum):
    """What the runner did with one delivered message (logs, tests, task results)."""

    RECORDED = "recorded"
    RETRYING = "retrying"
    DUPLICATE = "duplicate"
    UNKNOWN_INSTANCE = "unknown_instance"  # another history database started it
    FENCED = "fenced"
    MISMATCH = "mismatch"
    EARLY = "early"
    PARKED = "parked"
    CANCELLED = "cancelled"
