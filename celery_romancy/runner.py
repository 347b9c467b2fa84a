"""The worker side of a step: claim, run, record with what follows, publish.

One Celery message per step. The history row, the compensation it registers and the
steps that follow commit in one fenced transaction (``transition.apply``); the replay
that finds those steps runs in this process, in memory, before that commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import signals
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


@dataclass(frozen=True)
class FailedAttempt:
    """A step's attempt that failed, recorded and committed: its Celery task ends as
    ``RETRY`` (``retry_in``: the next attempt, dispatched already, runs in that many
    seconds) or, failed for good (``retry_in`` None), as ``FAILURE`` with ``error``."""

    error: Exception
    retry_in: float | None = None

    def __str__(self) -> str:
        if self.retry_in is None:
            return f"failed: {self.error!r}"
        return f"retrying in {self.retry_in}s: {self.error!r}"


# What the runner did with a message: an outcome, or a failed attempt for Celery to show.
Ran = RunOutcome | FailedAttempt


class StepRunner:
    def __init__(self, romancy: Romancy) -> None:
        self.romancy = romancy

    def run(self, instance_id: str, token: str, task_name: str) -> Ran:
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

    def _activity(self, claim: Claim) -> Ran:
        romancy = self.romancy
        command = claim.command
        # An unknown workflow fails here, before the activity body runs.
        romancy.registry.workflow(claim.instance.workflow_name)
        activity = romancy.registry.activity(command.name)
        with self._running(claim) as info:
            started_at = utcnow()
            result, error = _call(
                info, lambda: activity.shape.encode_result(activity.invoke(command.arguments))
            )
            if error is not None and _retryable(activity.retry, error, command.attempt):
                return self._retry(claim, activity.retry, error, started_at)
            event = HistoryEvent(
                command.seq,
                command.step_id,
                HistoryKind.ACTIVITY,
                command.name,
                result=result if error is None else None,
                error=describe_error(error, command.step_id) if error is not None else None,
                attempt=command.attempt,
                started_at=started_at,
                task_id=claim.step.token,
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
            outcome = self._record(claim, info, plan_for, rows)
        return self._ended(claim, outcome, started_at, error)

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
        found = event_for(command)
        if found is None:
            romancy.storage.release(claim)
            return RunOutcome.EARLY
        # A wait begins when its step is added.
        event = replace(found, started_at=found.started_at or claim.step.created_at)
        rows = StepWrite(events=[event], consume_event=consume_event)
        result = apply(romancy, claim.snapshot, replayed(romancy, rows), rows, claim)
        if result is CommitResult.FENCED:
            romancy.storage.release(claim)  # another wait took the event: free the step
        outcome = _outcome(claim, result, RunOutcome.RECORDED)
        if outcome is RunOutcome.RECORDED:
            self._step_recorded(
                claim, event.started_at, "failed" if event.error is not None else "completed"
            )
        return outcome

    # -- compensations --------------------------------------------------------------------

    def _compensate(self, claim: Claim) -> Ran:
        romancy = self.romancy
        command = claim.command
        compensation = romancy.registry.compensation(command.name)
        with self._running(claim) as info:
            started_at = utcnow()
            _, error = _call(info, lambda: compensation.invoke(command.arguments))
            if error is not None and _retryable(compensation.retry, error, command.attempt):
                return self._retry(claim, compensation.retry, error, started_at)
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
            outcome = self._record(claim, info, plan_for, rows)
        return self._ended(claim, outcome, started_at, error)

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

    def _retry(
        self, claim: Claim, policy: RetryPolicy, error: Exception, started_at: datetime
    ) -> Ran:
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
        outcome = _outcome(claim, result, RunOutcome.RETRYING)
        return self._ended(claim, outcome, started_at, error, retry_in=delay)

    def _ended(
        self,
        claim: Claim,
        outcome: RunOutcome,
        started_at: datetime,
        error: Exception | None,
        retry_in: float | None = None,
    ) -> Ran:
        """After an activity's or a compensation's commit: its log line, its signals and
        what its Celery task says (a failed attempt ends as RETRY or FAILURE)."""
        if outcome not in (RunOutcome.RECORDED, RunOutcome.RETRYING):
            return outcome  # fenced: the step's new owner reports it
        if error is None:
            self._step_recorded(claim, started_at, "completed")
            return outcome
        command = claim.command
        step_id = attempt_step_id(command)
        will_retry = retry_in is not None
        logger.warning(
            "celery_romancy: %s %s of %s %s failed (attempt %d)%s: %s",
            command.kind,
            step_id,
            claim.instance.workflow_name,
            claim.instance.instance_id,
            command.attempt,
            f", retrying in {retry_in:g}s" if will_retry else "",
            _text_of(error),
            exc_info=error,
        )
        self._step_failed(claim, describe_error(error, command.step_id), will_retry)
        self._step_recorded(claim, started_at, "retrying" if will_retry else "failed")
        return FailedAttempt(error, retry_in)

    def _step_failed(self, claim: Claim, error: dict[str, Any], will_retry: bool) -> None:
        self._announce(signals.step_failed, claim, error=error, will_retry=will_retry)

    def _step_recorded(self, claim: Claim, started_at: datetime | None, outcome: str) -> None:
        command = claim.command
        self._announce(
            signals.step_recorded,
            claim,
            kind=str(command.kind),
            name=command.name,
            started_at=started_at,
            finished_at=utcnow(),
            outcome=outcome,
        )

    def _announce(self, signal: Any, claim: Claim, **arguments: Any) -> None:
        """Send a step signal about ``claim``'s attempt."""
        signals.send(
            signal,
            self.romancy,
            instance_id=claim.instance.instance_id,
            workflow=claim.instance.workflow_name,
            step_id=attempt_step_id(claim.command),
            attempt=claim.command.attempt,
            **arguments,
        )

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

    def _park_poisoned(self, claim: Claim) -> Ran:
        """Stop redelivering a step that keeps killing its worker; keep it for ``resume``.

        Its task ends as ``FAILURE`` with ``PoisonStepError``; the instance's parking is
        logged at ERROR with the commit (``signals.announce_transition``).
        """
        command = claim.command
        error = PoisonStepError(claim.instance.instance_id, command.step_id, claim.step.takeovers)
        status = (
            Status.COMPENSATION_FAILED if command.kind is StepKind.COMPENSATION else Status.FAILED
        )
        record = describe_error(error)
        plan = parked(claim.instance, command, status, record)
        result = apply(self.romancy, claim.snapshot, fixed(plan), None, claim)
        outcome = _outcome(claim, result, RunOutcome.PARKED)
        if outcome is not RunOutcome.PARKED:
            return outcome
        self._step_failed(claim, record, will_retry=False)
        return FailedAttempt(error)


def _call(info: ActivityInfo, body: Callable[[], Any]) -> tuple[Any, Exception | None]:
    """Run a step's body: its value, or the exception it raised (whose own writes die
    with the attempt)."""
    try:
        return body(), None
    except Exception as exc:  # noqa: BLE001 - every failure is recorded or retried
        info.close()
        return None, exc


def _text_of(error: Exception) -> str:
    try:
        return f"{type(error).__qualname__}: {error}"
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the failure
        return type(error).__qualname__


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
