"""The jobs Celery beat drives. Each is safe to run anywhere, at any time, concurrently.

Recovery does not need to know *why* a step stopped moving (its worker was SIGKILLed,
the broker lost the message, the process crashed between commit and publish): all three
leave the same trace, a pending dispatch that is old and not leased by a live worker,
and all three heal the same way, by publishing that dispatch again. The dispatch token
makes a message that was not lost after all harmless: it is dropped as a duplicate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .commands import ActivityCommand
from .dispatch import Dispatch, publish
from .storage.schema import utcnow

if TYPE_CHECKING:
    from .app import Romancy
    from .settings import RomancySettings

logger = logging.getLogger(__name__)

RECOVER_TASK = "romancy.recover"
BATCH = 500


@dataclass(frozen=True)
class RecoveryReport:
    republished: int
    failed_publishes: int


def recover(romancy: Romancy) -> RecoveryReport:
    """Re-send every step whose message is presumed lost; see the module docstring."""
    settings = romancy.settings
    stale_before = utcnow() - timedelta(seconds=settings.dispatch_timeout)
    republished = failed = 0
    while True:
        overdue = romancy.storage.take_overdue(stale_before, BATCH)
        for instance in overdue:
            assert instance.pending is not None and instance.dispatch_token is not None
            dispatch = Dispatch(
                instance.instance_id,
                instance.workflow_name,
                instance.dispatch_token,
                ActivityCommand.from_json(instance.pending),
            )
            if publish(romancy.app, dispatch):
                republished += 1
            else:
                failed += 1
        if len(overdue) < BATCH:
            break
    if republished or failed:
        logger.warning(
            "celery_romancy: recovery re-sent %d lost or stalled steps (%d could not be sent)",
            republished,
            failed,
        )
    return RecoveryReport(republished, failed)


def beat_schedule(settings: RomancySettings) -> dict[str, dict[str, Any]]:
    """The entries Romancy adds to ``beat_schedule`` (names prefixed ``romancy.``)."""
    interval = settings.recovery_interval
    return {
        RECOVER_TASK: {
            "task": RECOVER_TASK,
            "schedule": interval,
            # A backlog of identical sweeps is useless: one that waited a whole
            # interval is superseded by the next.
            "options": {"expires": interval},
        }
    }
