"""The worker side of a step: claim, run, record with the next dispatch, publish.

One Celery message per step. The history row, the compensation it registers and the
next pending command commit in one fenced transaction; the replay that finds the next
command runs in this process, in memory, before that commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .commands import ActivityCommand
from .context import ActivityInfo, _current_activity
from .dispatch import Dispatch, publish
from .errors import ConfigurationError, LeaseHeldError, PoisonStepError, SerializationError
from .events import deliver_kept_event
from .failures import describe_error
from .planning import dispatch_command, finish, plan_outcome, start_rollback
from .replay import replay_recording
from .retry import RetryPolicy
from .settings import masked_url
from .storage import Claim, CompensationRecord, HistoryEvent, StepWrite
from .storage.schema import utcnow

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from .app import Romancy

logger = logging.getLogger(__name__)


class StepRunner:
    def __init__(self, romancy: Romancy) -> None:
        self.romancy = romancy

    def run(self, instance_id: str, token: str, task_name: str) -> str:
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
            if romancy.storage.get_instance(instance_id) is None:
                # Not a duplicate: whoever started it wrote to another database.
                logger.error(
                    "celery_romancy: %s for instance %s, which the history database %s "
                    "does not have: is romancy_database_url the same here as where it started?",
                    task_name,
                    instance_id,
                    masked_url(romancy.settings.database_url),
                )
                return "unknown_instance"
            logger.info("celery_romancy: dropped duplicate %s for %s", task_name, instance_id)
            return "duplicate"
        pending = claim.instance.pending
        if pending is None or pending.get("name") != task_name:
            romancy.storage.release(claim)
            logger.error("celery_romancy: %s is not the pending step of %s", task_name, instance_id)
            return "mismatch"
        command = ActivityCommand.from_json(pending)
        crashes = claim.instance.step_takeovers
        if crashes >= romancy.settings.max_step_crashes:
            return self._park_poisoned(claim, command, crashes)
        if command.kind == "compensation":
            return self._compensate(claim, command)
        if claim.instance.cancel_reason is not None:
            # Cancelled while this step was queued: this is the next step boundary.
            return self.roll_back(claim, claim.instance.error, "cancelled")
        return self._activity(claim, command)

    def roll_back(self, claim: Claim, error: dict[str, Any] | None, final_status: str) -> str:
        """Start undoing the instance's succeeded steps (or end it) under ``claim``."""
        romancy = self.romancy
        changes, dispatch = start_rollback(
            claim.instance,
            error,
            romancy.storage.get_compensations(claim.instance.instance_id),
            romancy.registry.compensation_queue,
            final_status,
        )
        committed = romancy.storage.commit(claim, StepWrite(instance_changes=changes))
        return self._published(claim, committed, dispatch)

    def _park_poisoned(self, claim: Claim, command: ActivityCommand, crashes: int) -> str:
        """Stop redelivering a step that keeps killing its worker; keep it for ``resume``."""
        error = PoisonStepError(claim.instance.instance_id, command.step_id, crashes)
        status = "compensation_failed" if command.kind == "compensation" else "failed"
        changes, _ = finish(status, pending=command.to_json(), error=describe_error(error))
        if command.kind == "compensation":
            changes["error"] = {
                **(claim.instance.error or {}),
                "compensation_error": describe_error(error),
            }
        committed = self.romancy.storage.commit(claim, StepWrite(instance_changes=changes))
        logger.error("celery_romancy: %s", error)
        return self._published(claim, committed, None)

    # -- activities ---------------------------------------------------------------------

    def _activity(self, claim: Claim, command: ActivityCommand) -> str:
        romancy = self.romancy
        # An unknown workflow fails here, before the activity body runs.
        romancy.registry.workflow(claim.instance.workflow_name)
        activity = romancy.registry.activity(command.name)
        info = self._activity_info(claim, command)
        reset = _current_activity.set(info)
        romancy.lease_keeper.hold(claim)
        try:
            try:
                result = activity.shape.encode_result(activity.invoke(command.arguments))
            except Exception as exc:  # noqa: BLE001 - every failure is recorded or retried
                info.close()  # the activity's own writes die with its attempt
                if _retryable(activity.retry, exc, command.attempt):
                    return self._retry(claim, command, activity.retry, exc)
                event = HistoryEvent(
                    command.seq,
                    command.step_id,
                    "activity",
                    command.name,
                    error=describe_error(exc, command.step_id),
                    attempt=command.attempt,
                )
            else:
                event = HistoryEvent(
                    command.seq,
                    command.step_id,
                    "activity",
                    command.name,
                    result=result,
                    attempt=command.attempt,
                )
            registrations = []
            if event.error is None and activity.compensation is not None:
                compensation = activity.compensation
                registrations.append(
                    registration(
                        command.seq,
                        command.step_id,
                        compensation.name,
                        compensation.arguments_from(command.arguments, event.result),
                    )
                )
            write = StepWrite(events=[event], registrations=registrations, outbox=info.outbox)
            # Renewals stop before the commit releases the lease (one just ran, so at
            # least two thirds of it remain): a renewal after the commit would look lost.
            romancy.lease_keeper.release(claim)
            return self.advance(claim, write, info.recording_connection())
        finally:
            romancy.lease_keeper.release(claim)
            _current_activity.reset(reset)
            info.close()

    def advance(self, claim: Claim, write: StepWrite, conn: Connection | None = None) -> str:
        """Replay with ``write``'s new history, plan what follows, commit it all, publish.

        ``write`` arrives with the step's own rows (its history event, its compensation,
        its outbox rows); the replay may add compensation registrations and outbox rows
        of its own, which commit in the same transaction.
        """
        romancy = self.romancy
        instance = claim.instance
        workflow = romancy.registry.workflow(instance.workflow_name)
        outcome, new_events = replay_recording(
            workflow, instance.instance_id, instance.input_data, [*claim.history, *write.events]
        )
        replayed = recorded_rows(new_events)
        write.events.extend(replayed.events)
        write.registrations.extend(replayed.registrations)
        write.outbox.extend(replayed.outbox)
        changes, dispatch = plan_outcome(
            instance,
            outcome,
            # Only read on failure: every compensation to run, this step's included.
            lambda: [
                *romancy.storage.get_compensations(instance.instance_id),
                *write.registrations,
            ],
            romancy.registry.compensation_queue,
        )
        write.instance_changes = changes
        committed = romancy.storage.commit(claim, write, conn)
        result = self._published(claim, committed, dispatch)
        if committed and changes.get("status") == "waiting_for_event":
            # An event may have come before the wait: deliver it now (see events.py).
            deliver_kept_event(romancy, instance.instance_id)
        return result

    # -- waits: timers and events ---------------------------------------------------------

    def wake(
        self,
        instance_id: str,
        token: str,
        event_for: Callable[[ActivityCommand], HistoryEvent | None],
        consume_event: int | None = None,
    ) -> str:
        """Resume a waiting instance with the history event ``event_for`` makes from its
        wait (a fired timer, an event's data, a timeout); "early" if it returns None."""
        romancy = self.romancy
        claim = romancy.storage.claim(
            instance_id, token, romancy.worker_id, romancy.settings.lease_timeout
        )
        if claim is None:
            return "duplicate"  # fired already, or being fired by someone else right now
        pending = claim.instance.pending
        command = ActivityCommand.from_json(pending) if pending else None
        if command is None or command.runs_as_task:
            romancy.storage.release(claim)
            return "mismatch"
        if claim.instance.cancel_reason is not None:
            return self.roll_back(claim, claim.instance.error, "cancelled")
        event = event_for(command)
        if event is None:
            romancy.storage.release(claim)
            return "early"
        return self.advance(claim, StepWrite(events=[event], consume_event=consume_event))

    # -- compensations --------------------------------------------------------------------

    def _compensate(self, claim: Claim, command: ActivityCommand) -> str:
        romancy = self.romancy
        instance = claim.instance
        compensation = romancy.registry.compensation(command.name)
        info = self._activity_info(claim, command)
        reset = _current_activity.set(info)
        romancy.lease_keeper.hold(claim)
        try:
            try:
                compensation.invoke(command.arguments)
            except Exception as exc:  # noqa: BLE001
                info.close()
                if _retryable(compensation.retry, exc, command.attempt):
                    return self._retry(claim, command, compensation.retry, exc)
                failure = describe_error(exc, command.step_id)
                # Parked for an operator: ``pending`` keeps the command to retry.
                changes, dispatch = finish(
                    "compensation_failed",
                    pending=command.to_json(),
                    error={**(instance.error or {}), "compensation_error": failure},
                )
                update: dict[str, Any] = {"status": "failed", "error": failure}
            else:
                remaining = [
                    c
                    for c in romancy.storage.get_compensations(instance.instance_id)
                    if c.step_id != command.step_id
                ]
                final = "cancelled" if instance.cancel_reason is not None else "failed"
                changes, dispatch = start_rollback(
                    instance, instance.error, remaining, romancy.registry.compensation_queue, final
                )
                update = {"status": "done", "error": None}
            update.update(attempts=command.attempt, finished_at=utcnow())
            write = StepWrite(
                instance_changes=changes, compensation_update=(command.step_id, update)
            )
            romancy.lease_keeper.release(claim)  # see _activity
            committed = romancy.storage.commit(claim, write, info.recording_connection())
        finally:
            romancy.lease_keeper.release(claim)
            _current_activity.reset(reset)
            info.close()
        return self._published(claim, committed, dispatch)

    # -- shared -------------------------------------------------------------------------

    def _retry(
        self, claim: Claim, command: ActivityCommand, policy: RetryPolicy, error: Exception
    ) -> str:
        self.romancy.lease_keeper.release(claim)  # see _activity
        delay = policy.delay_after(command.attempt)
        changes, dispatch = dispatch_command(
            claim.instance, command.next_attempt(), status=claim.instance.status, delay=delay
        )
        write = StepWrite(
            instance_changes=changes,
            attempt={
                "step_id": attempt_step_id(command),
                "attempt": command.attempt,
                "error": describe_error(error, command.step_id),
                "retry_in": delay,
            },
        )
        committed = self.romancy.storage.commit(claim, write)
        self._published(claim, committed, dispatch)
        return "retrying" if committed else "fenced"

    def _published(self, claim: Claim, committed: bool, dispatch: Dispatch | None) -> str:
        if not committed:
            # A newer owner took the instance over while this step ran (fencing).
            logger.warning(
                "celery_romancy: lease on %s was lost; this step's result is discarded",
                claim.instance.instance_id,
            )
            return "fenced"
        if dispatch is not None:
            publish(self.romancy.app, dispatch)
        return "recorded"

    def _activity_info(self, claim: Claim, command: ActivityCommand) -> ActivityInfo:
        return ActivityInfo(
            instance_id=claim.instance.instance_id,
            workflow_name=claim.instance.workflow_name,
            step_id=attempt_step_id(command),
            attempt=command.attempt,
            _open_connection=self.romancy.storage.connect,
        )


def _retryable(policy: RetryPolicy, error: Exception, attempt: int) -> bool:
    if isinstance(error, SerializationError | ConfigurationError):
        return False  # the same input fails the same way every time
    return policy.should_retry(error, attempt)


def registration(
    seq: int, step_id: str, name: str, arguments: dict[str, Any]
) -> CompensationRecord:
    return CompensationRecord(
        seq=seq,
        step_id=step_id,
        name=name,
        arguments=arguments,
        status="registered",
        error=None,
        attempts=0,
        created_at=utcnow(),
        finished_at=None,
    )


def recorded_rows(events: list[HistoryEvent]) -> StepWrite:
    """The rows to commit for events a replay recorded on its own: the events, and the
    compensations (``ctx.register_compensation``) and outbox rows (``ctx.publish_event``)
    they stand for."""
    return StepWrite(
        events=list(events), registrations=registrations_of(events), outbox=outbox_of(events)
    )


def registrations_of(events: list[HistoryEvent]) -> list[CompensationRecord]:
    """The compensations that ``ctx.register_compensation`` calls recorded."""
    return [
        registration(e.seq, e.step_id, e.name, e.result)
        for e in events
        if e.kind == "compensation_registered"
    ]


def outbox_of(events: list[HistoryEvent]) -> list[dict[str, Any]]:
    """The outbox rows that ``ctx.publish_event`` calls recorded."""
    return [
        {"event_id": e.result["event_id"], "event_type": e.name, "data": e.result["data"]}
        for e in events
        if e.kind == "event_published"
    ]


def attempt_step_id(command: ActivityCommand) -> str:
    """The step id an attempt is recorded under; compensations get their own."""
    if command.kind == "compensation":
        return f"{command.name}:undo:{command.step_id}"
    return command.step_id
