"""Scheduled workflows: a beat entry per schedule, each tick started once.

``romancy.schedule(name, workflow, crontab(...), *args)`` checks the start as
``start_workflow`` would and keeps it, JSON, in this process's registry; its beat
entry sends ``romancy.start_scheduled`` (``scheduled_runs``), which starts the run of
the tick beat sent it for. When beat starts, an entry it has no record of takes its last
run from the database, so a tick missed while beat was down is started late, once, with
or without beat's schedule file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from celery import signals
from celery.schedules import crontab

from .definitions import WorkflowDefinition
from .errors import ConfigurationError, InvalidArgumentsError
from .recorded import checked_search
from .settings import RomancySettings
from .ticks import EveryInterval, as_tickable, next_tick, tick_label
from .validation import MAX_ID_LENGTH, check_identifier, check_payload_size

if TYPE_CHECKING:
    from .app import Romancy

logger = logging.getLogger(__name__)

START_TASK = "romancy.start_scheduled"
ENTRY_PREFIX = "romancy.schedule:"  # beat_schedule key of each schedule
ID_PREFIX = "schedule:"
SEARCH_KEY = "schedule"  # business key every scheduled run carries: its schedule's name
# "schedule:<name>:2026-11-29T02:00:00Z" fits an instance id.
MAX_SCHEDULE_NAME = MAX_ID_LENGTH - len(ID_PREFIX) - len(":2026-11-29T02:00:00Z")


@dataclass(frozen=True)
class ScheduledWorkflow:
    """A schedule as ``romancy.schedule`` checked it: its runs' input is stored JSON."""

    name: str
    workflow: WorkflowDefinition[Any, Any]
    schedule: crontab | EveryInterval
    input_data: dict[str, Any]
    search: dict[str, str]

    def instance_id(self, tick: datetime) -> str:
        return f"{ID_PREFIX}{self.name}:{tick_label(tick)}"


def add(
    romancy: Romancy,
    name: str,
    workflow: WorkflowDefinition[Any, Any] | str,
    every: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    search: Mapping[str, str] | None,
) -> ScheduledWorkflow:
    """Check a schedule as ``start_workflow`` checks a start, then register it and its
    beat entry; nothing is kept if a check fails."""
    check_identifier(name, "schedule name", MAX_SCHEDULE_NAME)
    if name in romancy.schedules:
        raise ConfigurationError(f"the schedule {name!r} is already registered")
    tickable = as_tickable(every)
    tickable.app = romancy.app  # its timezone and clock, as beat sets them on its entries
    keys = checked_search({} if search is None else search)
    if SEARCH_KEY in keys:
        raise InvalidArgumentsError(
            f"search key {SEARCH_KEY!r} is set for you to the schedule's name; choose another"
        )
    definition = romancy.registry.resolve_workflow(workflow)
    input_data = definition.shape.bind(args, kwargs)
    # Romancy(app) has configured the app already (its tasks bind to the config).
    settings = romancy.settings
    check_payload_size(input_data, settings.max_payload_bytes, "the workflow input")
    scheduled = ScheduledWorkflow(
        name, definition, tickable, input_data, {**keys, SEARCH_KEY: name}
    )
    romancy.schedules[name] = scheduled
    conf = romancy.app.conf
    conf.beat_schedule = {**(conf.beat_schedule or {}), **beat_entries(settings, [scheduled])}
    return scheduled


def beat_entries(
    settings: RomancySettings, scheduled: list[ScheduledWorkflow]
) -> dict[str, dict[str, Any]]:
    """The ``beat_schedule`` entries of these schedules, on the maintenance queue (every
    worker of the app consumes it; a start is one short transaction)."""
    options = {"queue": settings.maintenance_queue} if settings.maintenance_queue else {}
    return {
        f"{ENTRY_PREFIX}{each.name}": {
            "task": START_TASK,
            "schedule": each.schedule,
            "args": [each.name],
            "options": dict(options),
        }
        for each in scheduled
    }


def scheduled_time(instance_id: str) -> datetime | None:
    """The tick a scheduled run was started for (UTC), read from its instance id; None
    for an instance no schedule started. Pure: a workflow may call it on
    ``ctx.instance_id`` (the report of which night?)."""
    if not instance_id.startswith(ID_PREFIX):
        return None
    try:
        return datetime.strptime(instance_id[-20:], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def next_run(romancy: Romancy, scheduled: ScheduledWorkflow, now: datetime) -> datetime:
    return next_tick(scheduled.schedule, now, romancy.app.timezone)


def install_beat_hook(romancy: Romancy) -> None:
    """Beat's schedule entries made ready when it starts (``prepare_entries``)."""

    def prepare_beat(sender: Any = None, **_: Any) -> None:
        if sender is not None and sender.app is romancy.app:
            prepare_entries(romancy, sender.scheduler)

    signals.beat_init.connect(prepare_beat, weak=False)


def prepare_entries(romancy: Romancy, scheduler: Any) -> None:
    """Before beat's first tick: add the schedules its config lacked (a ``beat_schedule``
    replaced after ``romancy.schedule``), and give each entry beat never ran (no schedule
    file, a new schedule) the tick of its latest run in the database as its last run.
    Beat then sends an entry that missed ticks at once, whether or not it kept its file."""
    settings = romancy.settings
    entries = beat_entries(settings, list(romancy.schedules.values()))
    scheduler.update_from_dict({k: v for k, v in entries.items() if k not in scheduler.schedule})
    for name in romancy.schedules:
        entry = scheduler.schedule.get(f"{ENTRY_PREFIX}{name}")
        if entry is None or entry.total_run_count:
            continue  # beat's file knows when it last sent this entry
        try:
            last = latest_started_tick(romancy, name)
        except sa.exc.SQLAlchemyError as exc:
            logger.warning("celery_romancy: schedule %s: last run unknown: %s", name, exc)
            continue
        if last is not None:
            entry.last_run_at = last


def latest_started_tick(romancy: Romancy, name: str) -> datetime | None:
    """The latest tick of schedule ``name`` with a run in the database (the newest
    created few: a late start of an older tick may be newer)."""
    runs = romancy.find_instances(search={SEARCH_KEY: name}, limit=20)
    ticks = [tick for run in runs if (tick := scheduled_time(run.instance_id)) is not None]
    return max(ticks, default=None)
