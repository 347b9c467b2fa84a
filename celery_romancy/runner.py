"""The worker side of a step: claim, run, record with what follows, publish.

One Celery message per step. The history row, the compensation it registers and the
steps that follow commit in one fenced transaction (``transition.apply``); the replay
that finds those steps runs in this process, in memory, before that commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .activity_info import ActivityInfo, _current_activity
from .commands import ActivityCommand
from .errors import ConfigurationError, LeaseHeldError, PoisonStepError, SerializationError
from .failures import describe_error
from .planning import Plan, dispatch_step, parked, wind_down
from .recorded import registration
from .retry import RetryPolicy
from .settings import masked_url
from .states import ACTIVE, HistoryKind, RunOutcome, Status, StepKind
from .storage import Claim, CommitResult, HistoryEvent, Snapshot, StepWrite
from .storage.schema import utcnow
from .transition import PlanFor, Planned, apply, fixed, replayed, rolled_back

if TYPE_CHECKING:
    from .app import Romancy

logger = logging.getLogger(__name__)


class StepRunner:
    def __init__(self, romancy: Romancy) -> None:
        self.romancy = romancy

    def run(self, instance_id: str, token: str, task_name: str) -> RunOutcome:
        """Handle one delivered message; returns what happened, for logs and tests."""
        romancy = self.romancy
        claim = romancy.storage.claim(
            instance_id, token, romancy.worker_id, romancy.settings.lease_timeout
        )
        if claim is None:
            held_for = romancy.storage.lease_held_for(instance_id, token)
            if held_for is not None:
                # In flight elsewhere, or its worker died holding the lease: come back
                # after the lease runs out rather than drop the only message for it.
                raise LeaseHeldError(instance_id, held_for + 0.5)
            if not romancy.storage.instance_exists(instance_id):
                # Not a duplicate: whoever started it wrote to another database.
                logger.error(
                    "celery_romancy: %s for instance %s, which the history database %s "
                    "does not have: is romancy_database_url the same here as where it started?",
                    task_name,
                    instance_id,
                    masked_url(romancy.settings.database_url),
                )
                return RunOutcome.UNKNOWN_INSTANCE
            logger.info("celery_romancy: dropped duplicate %s for %s", task_name, instance_id)
            return RunOutcome.DUPLICATE
        command = claim.command
        if command.name != task_name or not command.runs_as_task:
            romancy.storage.release(claim)
            logger.error(
                "celery_romancy: %s is not the step %s of %s", task_name, token, instance_id
            )
            return RunOutcome.MISMATCH
        if claim.step.takeovers >= romancy.settings.max_step_crashes:
            return self._park_poisoned(claim)
        if command.kind is StepKind.COMPENSATION:
            return self._compensate(claim)
        if claim.instance.cancel_reason is not None or claim.instance.status not in ACTIVE:
            # Cancelled while this step was queued: this is the next step boundary.
            return self._drop(claim)
        return self._activity(claim)

    # -- activities ---------------------------------------------------------------------

    def _activity(self, claim: Claim) -> RunOutcome:
        romancy = self.romancy
        command = claim.command
        # An unknown workflow fails here, before the activity body runs.
        romancy.registry.workflow(claim.instance.workflow_name)
        activity = romancy.registry.activity(command.name)
        with self._running(claim) as info:
            result, error = _call(
                info, lambda: activity.shape.encode_result(activity.invoke(command.arguments))
            )
            if error is not None and _retryable(activity.retry, error, command.attempt):
                return self._retry(claim, activity.retry, error)
            event = HistoryEvent(
                command.seq,
                command.step_id,
                HistoryKind.ACTIVITY,
                command.name,
                result=result if error is None else None,
                error=describe_error(error, command.step_id) if error is not None else None,
                attempt=command.attempt,
            )
            rows = StepWrite(events=[event], outbox=info.outbox)
            compensation = activity.compensation
            if error is None and compensation is not None:
                arguments = compensation.arguments_from(command.arguments, result)
                rows.registrations.append(
                    registration(command.seq, command.step_id, compensation.name, arguments)
                )
            branch_of = command if command.group_id is not None else None
            plan_for = replayed(romancy, rows, parent_id=claim.step.token, branch_of=branch_of)
            return self._record(claim, info, plan_for, rows)

    # -- waits: timers and events ---------------------------------------------------------

    def wake(
        self,
        instance_id: str,
        token: str,
        event_for: Callable[[ActivityCommand], HistoryEvent | None],
        consume_event: int | None = None,
    ) -> RunOutcome:
        """Resume a waiting instance with the history event ``event_for`` makes from its
        wait (a fired timer, an event's data, a timeout); "early" if it returns None."""
        romancy = self.romancy
        claim = romancy.storage.claim(
            instance_id, token, romancy.worker_id, romancy.settings.lease_timeout
        )
        if claim is None:
            return RunOutcome.DUPLICATE  # fired already, or being fired by someone else now
        command = claim.command
        if command.runs_as_task:
            romancy.storage.release(claim)
            return RunOutcome.MISMATCH
        if claim.instance.cancel_reason is not None or claim.instance.status not in ACTIVE:
            return self._drop(claim)
        event = event_for(command)
        if event is None:
            romancy.storage.release(claim)
            return RunOutcome.EARLY
        rows = StepWrite(events=[event], consume_event=consume_event)
        result = apply(romancy, claim.snapshot, replayed(romancy, rows), rows, claim)
        if result is CommitResult.FENCED:
            romancy.storage.release(claim)  # another wait took the event: free the step
        return _outcome(claim, result, RunOutcome.RECORDED)

    # -- compensations --------------------------------------------------------------------

    def _compensate(self, claim: Claim) -> RunOutcome:
        romancy = self.romancy
        command = claim.command
        compensation = romancy.registry.compensation(command.name)
        with self._running(claim) as info:
            _, error = _call(info, lambda: compensation.invoke(command.arguments))
            if error is not None and _retryable(compensation.retry, error, command.attempt):
                return self._retry(claim, compensation.retry, error)
            update: dict[str, Any] = {"attempts": command.attempt, "finished_at": utcnow()}
            if error is None:
                update.update(status="done", error=None)
                plan_for = rolled_back(romancy, command.step_id)
            else:
                failure = describe_error(error, command.step_id)
                update.update(status="failed", error=failure)
                # Parked for an operator: the step is kept to retry.
                plan_for = fixed(
                    parked(claim.instance, command, Status.COMPENSATION_FAILED, failure)
                )
            rows = StepWrite(compensation_update=(command.step_id, update))
            return self._record(claim, info, plan_for, rows)

    # -- shared -------------------------------------------------------------------------

    @contextmanager
    def _running(self, claim: Claim) -> Iterator[ActivityInfo]:
        """The body's surroundings: ``current_activity()``, and the lease kept renewed."""
        keeper = self.romancy.lease_keeper
        info = ActivityInfo(
            instance_id=claim.instance.instance_id,
            workflow_name=claim.instance.workflow_name,
            step_id=attempt_step_id(claim.command),
            attempt=claim.command.attempt,
            _open_connection=self.romancy.storage.connect,
        )
        reset = _current_activity.set(info)
        keeper.hold(claim)
        try:
            yield info
        finally:
            keeper.release(claim)
            _current_activity.reset(reset)
            info.close()

    def _record(
        self, claim: Claim, info: ActivityInfo, plan_for: PlanFor, rows: StepWrite
    ) -> RunOutcome:
        """Commit the step on the activity's own transaction, if it opened one."""
        # Renewals stop before the commit releases the lease (one just ran, so at least
        # two thirds of it remain): a renewal after the commit would look lost.
        self.romancy.lease_keeper.release(claim)
        result = apply(
            self.romancy, claim.snapshot, plan_for, rows, claim, info.recording_connection()
        )
        return _outcome(claim, result, RunOutcome.RECORDED)

    def _retry(self, claim: Claim, policy: RetryPolicy, error: Exception) -> RunOutcome:
        self.romancy.lease_keeper.release(claim)  # see _record
        command = claim.command
        delay = policy.delay_after(command.attempt)
        step, dispatch = dispatch_step(claim.instance, command.next_attempt(), delay=delay)
        assert dispatch is not None
        rows = StepWrite(
            attempt={
                "step_id": attempt_step_id(command),
                "attempt": command.attempt,
                "error": describe_error(error, command.step_id),
                "retry_in": delay,
            },
        )
        plan = Plan(add=[step], dispatches=[dispatch])
        result = apply(self.romancy, claim.snapshot, fixed(plan), rows, claim)
        return _outcome(claim, result, RunOutcome.RETRYING)

    def _drop(self, claim: Claim) -> RunOutcome:
        """End a step without running it: its instance is being cancelled (roll back
        once no sibling runs) or has moved past it."""
        romancy = self.romancy

        def plan_for(snapshot: Snapshot) -> Planned:
            instance = snapshot.instance
            if instance.cancel_reason is None or instance.status not in ACTIVE:
                return Planned(Plan())
            plan = wind_down(
                instance,
                snapshot.steps,
                lambda: romancy.storage.get_compensations(instance.instance_id),
                romancy.registry.compensation_queue,
            )
            return Planned(plan)

        result = apply(romancy, claim.snapshot, plan_for, None, claim)
        return _outcome(claim, result, RunOutcome.CANCELLED)

    def _park_poisoned(self, claim: Claim) -> RunOutcome:
        """Stop redelivering a step that keeps killing its worker; keep it for ``resume``."""
        command = claim.command
        error = PoisonStepError(claim.instance.instance_id, command.step_id, claim.step.takeovers)
        status = (
            Status.COMPENSATION_FAILED if command.kind is StepKind.COMPENSATION else Status.FAILED
        )
        plan = parked(claim.instance, command, status, describe_error(error))
        result = apply(self.romancy, claim.snapshot, fixed(plan), None, claim)
        logger.error("celery_romancy: %s", error)
        return _outcome(claim, result, RunOutcome.PARKED)


def _call(info: ActivityInfo, body: Callable[[], Any]) -> tuple[Any, Exception | None]:
    """Run a step's body: its value, or the exception it raised (whose own writes die
    with the attempt)."""
    try:
        return body(), None
    except Exception as exc:  # noqa: BLE001 - every failure is recorded or retried
        info.close()
        return None, exc


def _outcome(claim: Claim, result: CommitResult, done: RunOutcome) -> RunOutcome:
    if result is CommitResult.COMMITTED:
        return done
    # A newer owner took the step over while it ran (fencing).
    logger.warning(
        "celery_romancy: lease on step %s of %s was lost; its result is discarded",
        claim.command.step_id,
        claim.instance.instance_id,
    )
    return RunOutcome.FENCED


def _retryable(policy: RetryPolicy, error: Exception, attempt: int) -> bool:
    if isinstance(error, SerializationError | ConfigurationError):
        return False  # the same input fails the same way every time
    return policy.should_retry(error, attempt)


def attempt_step_id(command: ActivityCommand) -> str:
    """The step id an attempt is recorded under; compensations get their own."""
    if command.kind is StepKind.COMPENSATION:
        return f"{command.name}:undo:{command.step_id}"
    return command.step_id
