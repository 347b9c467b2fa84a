"""Starting a schedule's runs: the task beat sends, and the instance it names.

``romancy.start_scheduled`` carries the schedule's name and the moment it was sent
(``StampedTask``). The worker looks the name up in its own registry (nothing in the
message chooses code or arguments) and starts ``schedule:<name>:<tick>``, the tick being
the latest one at or before that moment: every send of one tick names one instance.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from celery import Task

from .errors import ConfigurationError, InvalidArgumentsError
from .schedules import START_TASK
from .ticks import latest_tick, tick_label
from .validation import check_payload_size

if TYPE_CHECKING:
    from .app import Romancy

logger = logging.getLogger(__name__)


def start_tick(romancy: Romancy, name: str, sent_at: str | None) -> dict[str, Any]:
    """Start the run of schedule ``name`` for the latest tick at or before ``sent_at``
    (beat's clock when it sent; this worker's now for a message without it)."""
    scheduled = romancy.schedules.get(name)
    if scheduled is None:
        raise ConfigurationError(
            f"no schedule {name!r} in this worker: call romancy.schedule({name!r}, ...) in a "
            "module the worker imports, as beat does"
        )
    moment = datetime.now(UTC) if sent_at is None else _aware(sent_at)
    tick = latest_tick(scheduled.schedule, moment, romancy.app.timezone)
    instance_id = scheduled.instance_id(tick)
    check_payload_size(
        scheduled.input_data, romancy.settings.max_payload_bytes, "the workflow input"
    )
    from .app import PreparedStart  # app imports this module (through tasks)

    romancy.start_prepared(
        PreparedStart(scheduled.workflow, scheduled.input_data, instance_id, scheduled.search)
    )
    return {"instance_id": instance_id, "tick": tick_label(tick)}


def _aware(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise InvalidArgumentsError(f"sent_at is not an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class StampedTask(Task):  # type: ignore[misc]  # untyped Celery
    """``romancy.start_scheduled``: each message carries the moment it was sent.

    Beat calls the task's ``apply_async`` when it sends a due entry (the task is
    registered in beat's process too), so the moment is beat's, taken just after it
    found the entry due: a message delivered late, or retried, still names its tick.
    """

    def apply_async(self, args: Any = None, kwargs: Any = None, *rest: Any, **options: Any) -> Any:
        stamped = {"sent_at": datetime.now(UTC).isoformat(), **(kwargs or {})}
        return super().apply_async(args, stamped, *rest, **options)


def register_start_task(romancy: Romancy) -> None:
    def start_scheduled(task: Task, name: str, sent_at: str | None = None) -> dict[str, Any]:
        try:
            return start_tick(romancy, name, sent_at)
        except sa.exc.DBAPIError as exc:
            # The history database is unreachable (a restart, a failover): try again
            # later rather than lose the tick; the retry keeps its ``sent_at``.
            logger.warning("celery_romancy: database error starting %s, retrying: %s", name, exc)
            raise task.retry(countdown=2.0, max_retries=None) from None

    romancy.app.task(
        name=START_TASK,
        base=StampedTask,
        bind=True,
        lazy=False,
        shared=False,
        serializer="json",
        # A worker that dies mid-start leaves the message to be redelivered: the same
        # tick, the same instance id, started once.
        acks_late=True,
        reject_on_worker_lost=True,
    )(start_scheduled)
