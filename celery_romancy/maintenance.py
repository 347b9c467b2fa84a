"""The jobs Celery beat drives. Each is safe to run anywhere, at any time, concurrently.

Recovery does not need to know *why* a step stopped moving (its worker was SIGKILLed,
the broker lost the message, the process crashed between commit and publish): all three
leave the same trace, a pending dispatch that is old and not leased by a live worker,
and all three heal the same way, by publishing that dispatch again. The dispatch token
makes a message that was not lost after all harmless: it is dropped as a duplicate.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from celery.app.trace import LOG_RECEIVED, LOG_SUCCESS

from . import children
from .commands import ActivityCommand
from .dispatch import Dispatch, publish
from .errors import EventTimeoutError
from .events import deliver_kept_event
from .failures import describe_error
from .retention import PURGE_TASK
from .states import HistoryKind, RunOutcome, StepKind
from .storage import HistoryEvent
from .storage.schema import utcnow

if TYPE_CHECKING:
    from .app import Romancy
    from .settings import RomancySettings

logger = logging.getLogger(__name__)

RECOVER_TASK = "romancy.recover"
FIRE_TASK = "romancy.fire_timers"
RELAY_TASK = "romancy.relay_outbox"
# The jobs beat sends; ``romancy.wake`` is not one of them: it is a timer step's own
# message, sent on its workflow's queue.
MAINTENANCE_TASKS = frozenset({RECOVER_TASK, FIRE_TASK, RELAY_TASK, PURGE_TASK})
BATCH = 500


@dataclass(frozen=True)
class RecoveryReport:
    republished: int
    failed_publishes: int
    # Child workflows' ends passed on, undos begun, cancels sent that a crash had lost.
    children_reconciled: int = 0


def recover(romancy: Romancy) -> RecoveryReport:
    """Re-send every step whose message is presumed lost; see the module docstring."""
    settings = romancy.settings
    stale_before = utcnow() - timedelta(seconds=settings.dispatch_timeout)
    republished = failed = 0
    while True:
        overdue = romancy.storage.take_overdue(stale_before, BATCH)
        for workflow_name, step in overdue:
            dispatch = Dispatch(step.instance_id, workflow_name, step.token, step.command)
            if publish(romancy.app, dispatch):
                republished += 1
            else:
                failed += 1
        if len(overdue) < BATCH:
            break
    # Children whose end, undo or cancel was lost with the process that committed it.
    reconciled = children.reconcile(romancy, stale_before, BATCH)
    if republished or failed:
        logger.warning(
            "celery_romancy: recovery re-sent %d lost or stalled steps (%d could not be sent)",
            republished,
            failed,
        )
    if reconciled:
        logger.warning(
            "celery_romancy: recovery passed on %d lost child workflow ends, undos or cancels",
            reconciled,
        )
    if not (republished or failed or reconciled):
        logger.debug("celery_romancy: recovery found no lost or stalled step")
    return RecoveryReport(republished, failed, reconciled)


def fire(romancy: Romancy, instance_id: str, token: str) -> RunOutcome:
    """Resume one waiting instance whose timer or event timeout is due.

    Idempotent: the claim on ``token`` lets one firing through; a second one finds the
    token gone and does nothing. "early" if it is not due yet.
    """
    now = utcnow()

    def fired(command: ActivityCommand) -> HistoryEvent | None:
        if command.kind is StepKind.TIMER:
            if datetime.fromisoformat(command.arguments["fire_at"]) > now:
                return None
            return HistoryEvent(command.seq, command.step_id, HistoryKind.TIMER, command.name)
        timeout_at = command.arguments.get("timeout_at")
        if timeout_at is None or datetime.fromisoformat(timeout_at) > now:
            return None
        timeout = EventTimeoutError(command.name, command.arguments.get("timeout"))
        return HistoryEvent(
            command.seq,
            command.step_id,
            HistoryKind.EVENT,
            command.name,
            error=describe_error(timeout, command.step_id),
        )

    return romancy.runner.wake(instance_id, token, fired)


def fire_due(romancy: Romancy) -> int:
    """Fire every due timer and event timeout, whichever process started the workflow;
    then hand kept events to waits that missed them (a sender that died mid-send), and
    drop events past their retention."""
    fired = 0
    for workflow_name, step in romancy.storage.due_waits(utcnow(), BATCH):
        if workflow_name not in romancy.registry.workflows:
            logger.warning(
                "celery_romancy: no workflow %r here to resume %s",
                workflow_name,
                step.instance_id,
            )
            continue
        if fire(romancy, step.instance_id, step.token) is RunOutcome.RECORDED:
            fired += 1
    for workflow_name, step in romancy.storage.waiting_with_kept_events(BATCH):
        if workflow_name in romancy.registry.workflows:
            fired += deliver_kept_event(romancy, step.instance_id)
    purged = purge_expired_events(romancy)
    if fired:
        logger.info("celery_romancy: fired %d due timers, event timeouts or kept events", fired)
    elif not purged:
        logger.debug("celery_romancy: no timer, event timeout or kept event was due")
    return fired


def purge_expired_events(romancy: Romancy) -> int:
    """Delete events received more than ``romancy_event_retention`` ago, consumed or not.

    An event for a correlation id nobody ever waits for would otherwise be kept forever.
    Consumed events stay as long, so a late redelivery is still known as a duplicate.
    Cheap when there is nothing to do: one indexed read, no write.
    """
    cutoff = utcnow() - timedelta(seconds=romancy.settings.event_retention)
    purged = 0
    while True:
        deleted = romancy.storage.purge_events(cutoff, BATCH)
        purged += deleted
        if deleted < BATCH:
            break
    if purged:
        logger.info("celery_romancy: purged %d events older than %s", purged, cutoff)
    return purged


def beat_schedule(settings: RomancySettings) -> dict[str, dict[str, Any]]:
    """The entries Romancy adds to ``beat_schedule`` (names prefixed ``romancy.``).

    They do not expire: a sweep stuck behind a backlog of steps must still run when it
    gets its turn (an expiry would drop exactly the sweeps a busy system needs). They go
    past that backlog on ``romancy_maintenance_queue``, a queue of their own that every
    worker of the app consumes.
    """
    jobs = {
        RECOVER_TASK: settings.recovery_interval,
        FIRE_TASK: settings.timer_interval,
        RELAY_TASK: settings.outbox_interval,
        PURGE_TASK: settings.purge_interval,
    }
    options = {"queue": settings.maintenance_queue} if settings.maintenance_queue else {}
    return {
        name: {"task": name, "schedule": interval, "options": dict(options)}
        for name, interval in jobs.items()
    }


class QuietIdleMaintenance(logging.Filter):
    """Celery's own log lines about a maintenance job, at DEBUG unless the job did work.

    A worker logs "Received task" and "Task ... succeeded" at INFO for every task, and
    beat "Sending due task" for every entry it sends: for jobs that run every few seconds
    and mostly find nothing, that buries the log. This filter demotes those lines to
    DEBUG (dropped unless the logger is enabled for DEBUG), except a "succeeded" line
    whose job did something: the jobs return counts (a number, or a dict of them), and
    a run with none above zero did nothing. Failures and retries keep their level.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._about_idle_maintenance(record):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)

    @staticmethod
    def _about_idle_maintenance(record: logging.LogRecord) -> bool:
        args = record.args
        if record.msg == BEAT_SENDING and isinstance(args, tuple) and len(args) == 2:
            return args[1] in MAINTENANCE_TASKS
        if not isinstance(args, dict) or args.get("name") not in MAINTENANCE_TASKS:
            return False
        if record.msg == LOG_RECEIVED:
            return True
        if record.msg == LOG_SUCCESS:
            return _NONZERO_COUNT.search(str(args.get("return_value"))) is None
        return False


# celery.beat's line for each entry it sends (its format string, as celery.beat logs it).
BEAT_SENDING = "Scheduler: Sending due task %s (%s)"
_NONZERO_COUNT = re.compile(r"[1-9]")
# Where those lines come from: the task tracer, the worker's consumer, beat.
QUIETED_LOGGERS = ("celery.app.trace", "celery.worker.strategy", "celery.beat")


def quiet_idle_maintenance_logs() -> None:
    """Install ``QuietIdleMaintenance`` on Celery's loggers, once per process.

    A filter on those loggers, not on a handler: it holds whatever handlers the worker
    or the project's logging config sets up, and a forked pool child inherits it.
    """
    for name in QUIETED_LOGGERS:
        celery_logger = logging.getLogger(name)
        if not any(isinstance(f, QuietIdleMaintenance) for f in celery_logger.filters):
            celery_logger.addFilter(QuietIdleMaintenance())


# Every process that loads the package: the worker and its pool children, beat.
quiet_idle_maintenance_logs()
