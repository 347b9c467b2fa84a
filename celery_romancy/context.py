"""What user code sees: ``WorkflowContext`` in workflows, ``current_activity()`` in activities."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, NoReturn, ParamSpec, TypeVar

from .activity_info import ActivityInfo, current_activity
from .commands import ActivityCommand, child_command, derived_child_id
from .definitions import ChildSignature, CompensationDefinition, StepSignature, WorkflowDefinition
from .errors import (
    ConfigurationError,
    ContinueAsNew,
    InstanceStateError,
    NonDeterminismError,
    Suspend,
    WorkflowAlreadyStartedError,
)
from .failures import rebuild_error
from .patching import checked_patch_id, is_marker_of, marker, unreached
from .recorded import checked_search, search_event
from .serialization import decode, encode
from .states import HistoryKind, StepKind
from .storage.records import HistoryEvent
from .storage.schema import utcnow
from .validation import MAX_NAME_LENGTH, check_identifier, check_payload_size

if TYPE_CHECKING:
    from .definitions import ActivityDefinition
    from .registry import Registry
    from .signatures import CallShape

__all__ = ["ActivityInfo", "ChildHandle", "WorkflowContext", "current_activity"]

R = TypeVar("R")
Signature = StepSignature[Any] | ChildSignature[Any]
_START_FAILED = (
    f"{WorkflowAlreadyStartedError.__module__}.{WorkflowAlreadyStartedError.__qualname__}"
)

P = ParamSpec("P")
# What a run waits for: one of these recorded before ``continue_as_new``.
_STEPS = frozenset({HistoryKind.ACTIVITY, HistoryKind.TIMER, HistoryKind.EVENT, HistoryKind.CHILD})


class WorkflowContext:
    """Handed to a workflow function as its first argument.

    Each ``execute`` either returns the result recorded for its position in history
    (re-raising a recorded error with its original type) or, at the first position with
    nothing recorded, stops the replay so that the engine can dispatch that step.
    """

    def __init__(
        self,
        instance_id: str,
        workflow_name: str,
        history: list[HistoryEvent],
        in_flight: Collection[str] = (),
        registry: Registry | None = None,
        max_payload_bytes: int | None = None,
        waits: Collection[str] = (),
    ) -> None:
        self.instance_id = instance_id
        self.workflow_name = workflow_name
        # By position: the branches of a gather are recorded in the order they finish,
        # so history can have gaps while some still run.
        self._history = {event.seq: event for event in history}
        self._last_seq = max(self._history, default=-1)
        self._in_flight = frozenset(in_flight)
        # Recorded by this replay without a step of their own (compensation registrations);
        # they commit with whatever the replay decides next.
        self.new_events: list[HistoryEvent] = []
        self._position = 0
        self._name_counts: dict[str, int] = {}
        # Kept here too, so a workflow that swallows the exception cannot hide it.
        self.nondeterminism: NonDeterminismError | None = None
        # The last recorded error re-raised, with its record: if the body lets it escape,
        # the workflow fails with the original record (type, message, step, traceback).
        self.reraised: tuple[BaseException, dict[str, Any]] | None = None
        # The step that stopped the replay; kept in case the body catches BaseException
        # or returns from ``finally``, which would otherwise skip the step silently.
        self.suspended: Suspend | None = None
        # Kept for the same reason: ``ctx.continue_as_new`` was called.
        self.continued: ContinueAsNew | None = None
        # Child workflows started by this replay without waiting (``start_child``);
        # they start with whatever the replay decides next.
        self.started: list[ActivityCommand] = []
        self._registry = registry
        self._max_payload_bytes = max_payload_bytes
        # Timers and event waits begun and not over: with ``in_flight``, what tells
        # ``patched`` that older code already went further than the body has got.
        self._waits = frozenset(waits)
        self._patches: dict[str, bool] = {}  # what ``patched`` answered, by patch id

    @property
    def is_replaying(self) -> bool:
        """True while the workflow is re-running steps that history already records."""
        return self._position <= self._last_seq

    @property
    def position(self) -> int:
        return self._position

    def _bind_unless_recorded(
        self, key: str, shape: CallShape, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The call's JSON arguments, checked before the call takes a position: a bad call
        raises and leaves no trace, on the first run and on every replay alike. A call that
        history records at this position was checked when it was made: not bound again."""
        if self._recorded_next(key):
            return None
        return shape.bind(args, kwargs)

    def _recorded_next(self, key: str) -> bool:
        """History records the next call of ``key`` at the next position."""
        recorded = self._history.get(self._position)
        return recorded is not None and recorded.step_id == self._upcoming_step_id(key)

    def _upcoming_step_id(self, key: str) -> str:
        """The step id the next call of ``key`` will take."""
        return f"{key}:{self._name_counts.get(key, 0) + 1}"

    def _next_position(self, key: str) -> tuple[int, str, HistoryEvent | None]:
        """Claim the next position for a call; return it, its step id and its record."""
        step_id = self._upcoming_step_id(key)
        self._name_counts[key] = self._name_counts.get(key, 0) + 1
        position = self._position
        self._position += 1
        event = self._history.get(position)
        if event is None:
            return position, step_id, None
        if event.step_id != step_id:
            self.nondeterminism = NonDeterminismError(
                self.instance_id, position, event.step_id, step_id
            )
            raise self.nondeterminism
        return position, step_id, event

    def register_compensation(
        self, compensation: CompensationDefinition[P], *args: P.args, **kwargs: P.kwargs
    ) -> None:
        """Undo something the workflow did outside one activity, if the workflow fails.

        Runs with the activity compensations, newest first, in the order of the calls.
        """
        if not isinstance(compensation, CompensationDefinition):
            raise ConfigurationError(
                "register_compensation takes a function decorated with @romancy.compensation"
            )
        key = f"register:{compensation.name}"
        arguments = self._bind_unless_recorded(key, compensation.shape, args, kwargs)
        position, step_id, event = self._next_position(key)
        if event is not None:
            return
        assert arguments is not None  # nothing recorded here, so the call was bound
        self._record(
            HistoryEvent(
                seq=position,
                step_id=step_id,
                kind=HistoryKind.COMPENSATION_REGISTERED,
                name=compensation.name,
                result=arguments,
            )
        )

    def set_search_attributes(
        self, mapping: Mapping[str, str] | None = None, /, **values: str
    ) -> None:
        """Give this instance business keys, ``ctx.set_search_attributes(order_id="ORD-4")``
        (or a mapping), to find it by: ``romancy.find_instances(search={...})``.

        Recorded once, and stored with the workflow's next step; replays do not store
        them again. A value replaces the one a key had (from the start or an earlier
        call). Keys and values are strings of 1 to 100 and 200 characters; anything else
        raises ``InvalidArgumentsError`` here and records nothing.
        """
        given = checked_search({} if mapping is None else mapping, "search attributes")
        given.update(checked_search(values, "search attributes"))
        position, step_id, event = self._next_position("set_search_attributes")
        if event is None:
            self._record(search_event(position, step_id, given))

    def patched(self, patch_id: str) -> bool:
        """True where this instance takes the code path added under ``patch_id``; False
        where it got here under older code, which did not have it.

        ``if ctx.patched("fraud-check"): <new code> else: <old code>``. The first run to
        get here records a marker (committed with the next step; ``romancy show`` lists
        it) and goes the new way on every replay; an instance whose history already goes
        past this point without the marker goes the old way, on every replay. Once no
        instance without the marker is left, ``ctx.deprecate_patch`` replaces the call.
        """
        patch_id = checked_patch_id(patch_id)
        if patch_id not in self._patches:
            self._patches[patch_id] = self._take_patch(patch_id)
        return self._patches[patch_id]

    def _take_patch(self, patch_id: str) -> bool:
        """The rule of ``patching.py``: the marker recorded here, or the first run here."""
        if is_marker_of(self._history.get(self._position), patch_id):
            self._position += 1
            return True
        if not self._first_here():
            return False  # old code went past here without the marker
        self._record(marker(self._position, patch_id))
        self._position += 1
        return True

    def _first_here(self) -> bool:
        """No run got past this position before: nothing recorded at or after it, and
        no step in flight (or wait begun) that the body has not reached."""
        if self._last_seq >= self._position:
            return False
        sent = (*self._in_flight, *self._waits)
        return not any(unreached(step_id, self._name_counts) for step_id in sent)

    def deprecate_patch(self, patch_id: str) -> None:
        """Where ``ctx.patched(patch_id)`` was, once every instance that went the old way
        has ended: instances that recorded the marker replay past it, new ones record
        none. The old path is gone from the code, so only new-path instances may run it.
        """
        patch_id = checked_patch_id(patch_id)
        if is_marker_of(self._history.get(self._position), patch_id):
            self._position += 1

    def publish_event(self, event_type: str, data: Any = None) -> None:
        """Publish an event through the transactional outbox, once per workflow run.

        The outbox row commits with the workflow's next step; replays do not add another.
        Its CloudEvents id, ``<instance id>:<step id>``, lets consumers drop duplicates.
        """
        check_identifier(event_type, "event_type", MAX_NAME_LENGTH)
        position, step_id, event = self._next_position(f"publish:{event_type}")
        if event is not None:
            return
        self._record(
            HistoryEvent(
                seq=position,
                step_id=step_id,
                kind=HistoryKind.EVENT_PUBLISHED,
                name=event_type,
                result={"event_id": f"{self.instance_id}:{step_id}", "data": encode(data)},
            )
        )

    def sleep(self, duration: float | timedelta) -> None:
        """Suspend the workflow for ``duration`` (seconds or a timedelta); no worker waits."""
        seconds = duration.total_seconds() if isinstance(duration, timedelta) else duration
        if not isinstance(seconds, int | float) or seconds < 0:
            raise ValueError(f"sleep takes a non-negative duration, not {duration!r}")
        position, step_id, event = self._next_position("sleep")
        if event is None:
            self._suspend_timer(position, step_id, utcnow() + timedelta(seconds=seconds))

    def sleep_until(self, moment: datetime) -> None:
        """Suspend the workflow until ``moment`` (an aware datetime)."""
        if not isinstance(moment, datetime) or moment.tzinfo is None:
            raise ValueError("sleep_until takes a timezone-aware datetime")
        position, step_id, event = self._next_position("sleep")
        if event is None:
            self._suspend_timer(position, step_id, moment)

    def wait_event(
        self,
        event_type: str,
        timeout: float | timedelta | None = None,
        correlation_id: str | None = None,
        data_type: Any = Any,
    ) -> Any:
        """Suspend until an event of ``event_type`` arrives for this instance (or with
        ``correlation_id``); return its data, decoded as ``data_type``.

        An event sent before the workflow got here is kept and delivered. With a
        ``timeout`` (seconds or timedelta), ``EventTimeoutError`` is raised instead.
        """
        check_identifier(event_type, "event_type", MAX_NAME_LENGTH)
        if correlation_id is not None:
            check_identifier(correlation_id, "correlation_id", MAX_NAME_LENGTH)
        position, step_id, event = self._next_position(f"wait_event:{event_type}")
        if event is not None:
            if event.error is not None:
                raise self._recorded_error(event)
            return decode(event.result, data_type, path=event_type)
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        timeout_at = None if seconds is None else (utcnow() + timedelta(seconds=seconds))
        self._suspend(
            ActivityCommand(
                kind=StepKind.WAIT_EVENT,
                name=event_type,
                step_id=step_id,
                seq=position,
                arguments={
                    "correlation_id": correlation_id,
                    "timeout": seconds,
                    "timeout_at": timeout_at.isoformat() if timeout_at else None,
                },
            )
        )

    def continue_as_new(self, *args: Any, **kwargs: Any) -> NoReturn:
        """End this run (status ``continued``) and start the next run of this workflow
        with these arguments and an empty history, in the same commit: a loop that
        polls, waits and repeats keeps a bounded history per run.

        The arguments are checked against the workflow's signature here
        (``InvalidArgumentsError``, nothing written). The run must have taken a step
        (an activity, a timer, an event, a child workflow), and every step must have
        ended: otherwise ``InstanceStateError``. The
        compensations this run registered stay with it: a later run's failure does not
        undo them.
        """
        if not any(event.kind in _STEPS for event in self._history.values()):
            # The next run would start (and continue) within this commit, and so on.
            raise InstanceStateError(
                "continue_as_new before this run took any step (an activity, a timer, an "
                "event or a child workflow): each run must wait for something first"
            )
        running = sorted({*self._in_flight, *(c.step_id for c in self.started)})
        if running:
            raise InstanceStateError(
                f"continue_as_new with steps still running ({', '.join(running)}): "
                "wait for their results first"
            )
        if self._registry is None:
            raise ConfigurationError("continue_as_new needs a registry to find the workflow")
        workflow = self._registry.workflow(self.workflow_name)
        input_data = workflow.shape.bind(args, kwargs)
        if self._max_payload_bytes is not None:
            what = f"the input of the next run of {self.workflow_name!r}"
            check_payload_size(input_data, self._max_payload_bytes, what)
        self.continued = ContinueAsNew(input_data)
        raise self.continued

    def _suspend_timer(self, position: int, step_id: str, fire_at: datetime) -> None:
        self._suspend(
            ActivityCommand(
                kind=StepKind.TIMER,
                name="sleep",
                step_id=step_id,
                seq=position,
                arguments={"fire_at": fire_at.isoformat()},
            )
        )

    def _suspend(self, *commands: ActivityCommand) -> NoReturn:
        self.suspended = Suspend(commands)
        raise self.suspended

    def _record(self, event: HistoryEvent) -> None:
        self._history[event.seq] = event
        self._last_seq = max(self._last_seq, event.seq)
        self.new_events.append(event)

    def recorded_beyond_reach(self) -> HistoryEvent | None:
        """A recorded step at or after the position the body has reached, if any."""
        return next(
            (self._history[seq] for seq in sorted(self._history) if seq >= self._position), None
        )

    def _recorded_error(self, event: HistoryEvent) -> BaseException:
        assert event.error is not None
        error = rebuild_error(event.error)
        self.reraised = (error, event.error)
        return error

    def execute(self, activity: ActivityDefinition[Any, R], *args: Any, **kwargs: Any) -> R:
        """Run ``activity`` as the next step; see ``ActivityDefinition.execute``."""
        arguments = self._bind_unless_recorded(activity.name, activity.shape, args, kwargs)
        signature = StepSignature(activity, args, kwargs, arguments)
        (result,) = self._gather([signature], marked=False)
        value: R = result
        return value

    def gather(
        self,
        *signatures: Signature,
        return_exceptions: bool = False,
        max_concurrency: int | None = None,
    ) -> list[Any]:
        """Run steps in parallel, each its own Celery task; their results in argument order.

        ``ctx.gather(charge.s(order_id, amount), reserve.s(order_id))``; a child
        workflow's signature (``refund.s(item)``) is a branch too, its result the
        child's output. All branches are sent at once, or at most ``max_concurrency``
        at a time (the next sent as one is recorded). When a branch fails for good, no
        further branch is sent, the ones in flight finish and are recorded, then the
        first failure in argument order is raised here with its original type;
        ``return_exceptions=True`` returns each failure in its place instead.
        """
        for signature in signatures:
            if not isinstance(signature, StepSignature | ChildSignature):
                raise ConfigurationError(
                    f"ctx.gather takes step signatures such as charge.s(order_id), "
                    f"not {signature!r}"
                )
            if isinstance(signature, ChildSignature):
                self._check_child(signature)
        if max_concurrency is not None and (
            not isinstance(max_concurrency, int) or max_concurrency < 1
        ):
            raise ValueError(f"max_concurrency must be a positive int, not {max_concurrency!r}")
        if not signatures:
            return []
        return self._gather(list(signatures), return_exceptions, max_concurrency, marked=True)

    def map(
        self,
        activity: ActivityDefinition[Any, R],
        items: Iterable[Any],
        max_concurrency: int | None = None,
    ) -> list[R]:
        """``gather`` one step of ``activity`` per item, the item as its single argument."""
        # Bound by ``_gather`` only where nothing is recorded yet: a replay of a large
        # map does not check and encode every item again.
        signatures = [StepSignature(activity, (item,), {}) for item in items]
        return self.gather(*signatures, max_concurrency=max_concurrency)

    def _gather(
        self,
        signatures: list[Signature],
        return_exceptions: bool = False,
        max_concurrency: int | None = None,
        *,
        marked: bool,
    ) -> list[Any]:
        group_id = self._gather_marker(signatures) if marked else None
        branches = [(s, *self._next_position(s.step_key)) for s in signatures]
        waiting = [b for b in branches if b[3] is None]
        for signature, _, step_id, _ in waiting:
            if step_id not in self._in_flight:
                self._checked_arguments(signature)  # a bad one raises here, before any is sent
        failures = [b for b in branches if b[3] is not None and b[3].error is not None]
        if waiting and not (failures and not return_exceptions):
            # Branch i takes the i-th free slot: which ones run depends only on which
            # are recorded, never on the order they finished in.
            sending = waiting[: max_concurrency or len(waiting)]
            self._suspend(
                *(
                    self._command(s, position, step_id, group_id, max_concurrency)
                    for s, position, step_id, _ in sending
                )
            )
        if waiting and any(step_id in self._in_flight for _, _, step_id, _ in waiting):
            self._suspend()  # a branch failed: send nothing more, let those in flight finish
        results: list[Any] = []
        for signature, _, _, event in branches:
            if event is None:
                continue  # never sent: an earlier failure stopped the gather
            if event.error is None:
                results.append(signature.decode_result(event.result))
            elif return_exceptions:
                results.append(rebuild_error(event.error))
            else:
                raise self._recorded_error(event)  # the first failure in argument order
        return results

    def _gather_marker(self, signatures: list[Signature]) -> str:
        """Record (or check, on replay) the branch list of a gather; its Celery group id."""
        names = [s.step_key for s in signatures]
        position, step_id, event = self._next_position("gather")
        group_id = f"{self.instance_id}:{step_id}"
        if event is None:
            self._record(
                HistoryEvent(position, step_id, HistoryKind.GATHER, "gather", result=names)
            )
        elif event.result != names:
            self.nondeterminism = NonDeterminismError(
                self.instance_id,
                position,
                f"gather of {event.result}",
                f"gather of {names}",
            )
            raise self.nondeterminism
        return group_id

    def _command(
        self,
        signature: Signature,
        position: int,
        step_id: str,
        group_id: str | None,
        limit: int | None,
    ) -> ActivityCommand:
        if isinstance(signature, ChildSignature):
            return child_command(self.instance_id, signature, position, step_id, group_id, limit)
        activity = signature.activity
        return ActivityCommand(
            kind=StepKind.ACTIVITY,
            name=activity.name,
            step_id=step_id,
            seq=position,
            arguments=signature.arguments,
            queue=activity.queue,
            group_id=group_id,
            group_limit=limit,
        )

    def _checked_arguments(self, signature: Signature) -> dict[str, Any]:
        arguments = signature.arguments
        if isinstance(signature, ChildSignature) and self._max_payload_bytes is not None:
            what = f"the input of child workflow {signature.workflow.name!r}"
            check_payload_size(arguments, self._max_payload_bytes, what)
        return arguments

    # -- child workflows -------------------------------------------------------------------

    def start_child(
        self,
        workflow: WorkflowDefinition[Any, R] | str,
        *args: Any,
        instance_id: str | None = None,
        parent_close: str = "cancel",
        **kwargs: Any,
    ) -> ChildHandle[R]:
        """Start ``workflow`` as a child of this instance and go on; ``.result()`` on the
        handle waits for it (no worker waits meanwhile).

        The child is a separate instance, started once with this instance's next step
        (its id defaults to ``<this id>/<step id>``, so a replay or a redelivery never
        starts it twice). If this workflow ends, fails or is cancelled while the child
        runs, ``parent_close="cancel"`` cancels the child (which compensates itself);
        ``"abandon"`` lets it run on. If this workflow rolls back after the child
        completed, the child's compensations run as part of that rollback, at the
        child's place in its order, and the child ends ``compensated``.
        """
        definition = self._child_workflow(workflow)
        signature = ChildSignature(
            definition, args, kwargs, instance_id=instance_id, parent_close=parent_close
        )
        key = signature.step_key
        upcoming = self._upcoming_step_id(key)
        fresh = not self._recorded_next(key) and upcoming not in self._in_flight
        if fresh:
            self._checked_arguments(signature)  # bad input raises before the position
        position, step_id, event = self._next_position(key)
        if fresh:
            self.started.append(self._command(signature, position, step_id, None, None))
        if event is not None and (event.error or {}).get("type") == _START_FAILED:
            raise self._recorded_error(event)  # its id belongs to another instance
        if event is not None and event.error is None:
            child_id = event.result["instance_id"]
        else:
            child_id = signature.instance_id or derived_child_id(self.instance_id, step_id)
        return ChildHandle(self, signature, position, child_id)

    def execute_child(
        self,
        workflow: WorkflowDefinition[Any, R] | str,
        *args: Any,
        instance_id: str | None = None,
        parent_close: str = "cancel",
        **kwargs: Any,
    ) -> R:
        """Start ``workflow`` as a child and wait for its output (``start_child`` then
        ``result()``); ``ChildWorkflowError`` if it fails or is cancelled."""
        handle = self.start_child(
            workflow, *args, instance_id=instance_id, parent_close=parent_close, **kwargs
        )
        return handle.result()

    def _child_workflow(
        self, workflow: WorkflowDefinition[Any, R] | str
    ) -> WorkflowDefinition[Any, R]:
        """The child's definition, as registered here: an unknown one fails the call."""
        if self._registry is None:
            if isinstance(workflow, WorkflowDefinition):
                return workflow
            raise ConfigurationError("child workflows need a registry to look names up")
        definition: WorkflowDefinition[Any, R] = self._registry.resolve_workflow(workflow)
        return definition

    def _check_child(self, signature: ChildSignature[Any]) -> None:
        self._child_workflow(signature.workflow)

    def _child_outcome(self, handle: ChildHandle[R]) -> R:
        event = self._history.get(handle.position)
        if event is None:
            self._suspend()  # the child runs: its end wakes this instance
        if event.error is not None:
            raise self._recorded_error(event)
        return handle.signature.decode_result(event.result)


class ChildHandle(Generic[R]):
    """A started child workflow: ``instance_id``, and ``result()`` to wait for it."""

    def __init__(
        self, ctx: WorkflowContext, signature: ChildSignature[R], position: int, instance_id: str
    ) -> None:
        self._ctx = ctx
        self.signature = signature
        self.position = position
        self.instance_id = instance_id

    def result(self) -> R:
        """The child's output, typed as its workflow declares; suspends this workflow
        until the child ends. ``ChildWorkflowError`` if it ended failed or cancelled."""
        return self._ctx._child_outcome(self)

    def __repr__(self) -> str:
        return f"<child {self.signature.workflow.name} {self.instance_id}>"
