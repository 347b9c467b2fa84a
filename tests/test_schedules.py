"""Scheduled workflows: the tick rule, the checks at the call, and real beats.

The last tests run real ``celery beat`` and ``celery worker`` processes on PostgreSQL
(tests/schedule_app.py): two beats sending every tick start it once, and a tick a
stopped beat missed is started once, late, when it is back.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.bin.base import CLIContext
from celery.schedules import crontab, schedule
from celery.signals import before_task_publish
from click.testing import CliRunner, Result

from celery_romancy import (
    ConfigurationError,
    InvalidArgumentsError,
    Romancy,
    SerializationError,
    UnknownWorkflowError,
    WorkflowContext,
)
from celery_romancy.cli import romancy as romancy_command
from celery_romancy.scheduled_runs import start_tick
from celery_romancy.schedules import START_TASK
from celery_romancy.ticks import (
    EveryInterval,
    as_tickable,
    latest_cron_tick,
    latest_tick,
    next_tick,
)

from .conftest import empty_database
from .harness import Harness
from .ledger import Ledger, wait_for
from .processes import ROOT, CeleryProcess, celery_beat, celery_worker
from .services import REDIS_URL, redis_client

UTC_APP = Celery("ticks")


class OwnSchedule(schedule):  # type: ignore[misc]
    """A schedule class of a project's own: its ticks are its business."""


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# -- the tick rule ----------------------------------------------------------------------


def test_a_crontab_tick_is_the_latest_matching_minute_and_late_sends_map_to_it() -> None:
    nightly = crontab(hour=2, minute=0)
    tick = at("2026-11-29T02:00:00")
    # Sent on the tick, a little later, or hours later (a beat back from a stop): the
    # same tick, until the next one.
    for moment in ("02:00:00", "02:00:00.004", "02:00:59", "02:07:31", "23:59:59.999999"):
        assert latest_cron_tick(nightly, at(f"2026-11-29T{moment}"), UTC) == tick
    assert latest_cron_tick(nightly, at("2026-11-30T01:59:59"), UTC) == tick
    assert latest_cron_tick(nightly, at("2026-11-30T02:00:00"), UTC) == tick + timedelta(days=1)
    assert next_tick(nightly, at("2026-11-29T02:00:00"), UTC) == tick + timedelta(days=1)


def test_a_crontab_reads_the_wall_clock_of_the_apps_timezone() -> None:
    from zoneinfo import ZoneInfo

    paris = ZoneInfo("Europe/Paris")
    nightly = crontab(hour=2, minute=0)
    assert latest_cron_tick(nightly, at("2026-11-29T12:00:00"), paris) == at("2026-11-29T01:00:00")
    assert latest_cron_tick(nightly, at("2026-07-01T12:00:00"), paris) == at("2026-07-01T00:00:00")


@pytest.mark.parametrize("seed", range(4))
def test_the_latest_crontab_tick_agrees_with_celerys_next_run(seed: int) -> None:
    """For random crontabs and moments: the tick matches the crontab (Celery's next run
    after the minute before it is the tick itself), and Celery's next run after the
    tick is later than the moment (no tick in between)."""
    rng = random.Random(seed)
    for _ in range(150):
        cron = crontab(
            minute=rng.choice(["*", "0", "*/15", "7,41", "59"]),
            hour=rng.choice(["*", "2", "0-5", "*/6", "23"]),
            day_of_week=rng.choice(["*", "mon", "sat,sun", "1-5"]),
            day_of_month=rng.choice(["*", "1", "13", "28-31", "1-7"]),
            month_of_year=rng.choice(["*", "2", "*/3", "12"]),
            app=UTC_APP,
        )
        moment = at("2026-01-01T00:00:00") + timedelta(seconds=rng.randrange(3 * 365 * 86400))
        tick = latest_cron_tick(cron, moment, UTC)
        assert tick <= moment
        assert celery_next_run(cron, tick - timedelta(minutes=1)) == tick, (cron, moment)
        assert celery_next_run(cron, tick) > moment, (cron, moment, tick)


def celery_next_run(cron: crontab, after: datetime) -> datetime:
    start, delta, _ = cron.remaining_delta(after, tz=UTC)
    following: datetime = start + delta
    return following


def test_an_interval_ticks_on_multiples_of_it_since_the_epoch() -> None:
    every = as_tickable(timedelta(seconds=2))
    assert isinstance(every, EveryInterval)
    tick = at("2026-11-29T14:00:02")
    for moment in ("14:00:02", "14:00:02.000001", "14:00:03.999999"):
        assert latest_tick(every, at(f"2026-11-29T{moment}"), UTC) == tick
    assert latest_tick(every, at("2026-11-29T14:00:04"), UTC) == tick + timedelta(seconds=2)
    hourly = as_tickable(schedule(timedelta(hours=1)))
    assert latest_tick(hourly, at("2026-11-29T14:59:59"), UTC) == at("2026-11-29T14:00:00")
    assert next_tick(hourly, at("2026-11-29T14:59:59"), UTC) == at("2026-11-29T15:00:00")


def test_an_interval_is_due_once_for_any_number_of_ticks_missed() -> None:
    clock = [at("2026-11-29T14:00:05")]
    every = EveryInterval(2, nowfun=lambda: clock[0], app=UTC_APP)
    # Last ran on the tick at :04: not due before :06, then due at once.
    assert every.is_due(at("2026-11-29T14:00:04.001")) == (False, pytest.approx(1.0))
    clock[0] = at("2026-11-29T14:00:06")
    assert every.is_due(at("2026-11-29T14:00:04.001")) == (True, pytest.approx(2.0))
    # Beat down from :04 to :31 (13 ticks): due now; after that run, not before :32.
    clock[0] = at("2026-11-29T14:00:31")
    assert every.is_due(at("2026-11-29T14:00:04.001")).is_due
    assert not every.is_due(at("2026-11-29T14:00:31.002")).is_due


# -- checks at the call -----------------------------------------------------------------


@pytest.fixture
def app_and_romancy(tmp_path: Path) -> Iterator[tuple[Celery, Romancy]]:
    app = Celery("schedule_checks", broker="memory://", set_as_current=False)
    romancy = Romancy(app, database_url=f"sqlite:///{tmp_path / 'history.db'}")

    @romancy.workflow("nightly_report")
    def nightly_report(ctx: WorkflowContext, region: str, days: int = 1) -> str:
        return region

    yield app, romancy
    if romancy._storage is not None:
        romancy.storage.dispose()


def test_schedule_adds_its_beat_entry_to_the_config_and_opens_nothing(
    app_and_romancy: tuple[Celery, Romancy],
) -> None:
    app, romancy = app_and_romancy
    scheduled = romancy.schedule("nightly", "nightly_report", crontab(hour=2, minute=0), "eu")
    assert scheduled.input_data == {"region": "eu"}
    entry = app.conf.beat_schedule["romancy.schedule:nightly"]
    assert entry["task"] == START_TASK
    assert entry["args"] == ["nightly"]
    assert entry["schedule"] == crontab(hour=2, minute=0)
    assert entry["options"] == {"queue": "romancy.maintenance"}
    assert "romancy.recover" in app.conf.beat_schedule
    romancy.schedule("hourly", "nightly_report", 3600, region="us", days=2)
    hourly = app.conf.beat_schedule["romancy.schedule:hourly"]["schedule"]
    assert isinstance(hourly, EveryInterval) and hourly.run_every == timedelta(hours=1)
    assert romancy._storage is None  # nothing opened, nothing written


@pytest.mark.parametrize(
    ("name", "workflow", "every", "args", "kwargs", "error", "message"),
    [
        ("x", "no_such_flow", 60, ("eu",), {}, UnknownWorkflowError, "unknown workflow"),
        ("x", "nightly_report", 60, (), {}, InvalidArgumentsError, "region"),
        ("x", "nightly_report", 60, ("eu", 1, 2), {}, InvalidArgumentsError, "argument"),
        ("x", "nightly_report", 60, (object(),), {}, SerializationError, "region"),
        ("x", "nightly_report", 60, ("eu",), {"days": "many"}, InvalidArgumentsError, "days"),
        ("", "nightly_report", 60, ("eu",), {}, InvalidArgumentsError, "schedule name"),
        ("a\nb", "nightly_report", 60, ("eu",), {}, InvalidArgumentsError, "schedule name"),
        ("n" * 71, "nightly_report", 60, ("eu",), {}, InvalidArgumentsError, "1 to 70"),
        ("x", "nightly_report", 0.5, ("eu",), {}, InvalidArgumentsError, "whole number"),
        ("x", "nightly_report", 2.5, ("eu",), {}, InvalidArgumentsError, "whole number"),
        ("x", "nightly_report", "daily", ("eu",), {}, InvalidArgumentsError, "crontab"),
        ("x", "nightly_report", True, ("eu",), {}, InvalidArgumentsError, "crontab"),
        (
            "x",
            "nightly_report",
            OwnSchedule(60),
            ("eu",),
            {},
            InvalidArgumentsError,
            "crontab",
        ),
    ],
)
def test_bad_schedules_fail_at_the_call_and_register_nothing(
    app_and_romancy: tuple[Celery, Romancy],
    name: str,
    workflow: str,
    every: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    app, romancy = app_and_romancy
    with pytest.raises(error, match=message):
        romancy.schedule(name, workflow, every, *args, **kwargs)
    assert romancy.schedules == {}
    assert not any(key.startswith("romancy.schedule:") for key in app.conf.beat_schedule)


def test_a_duplicate_name_or_a_reserved_search_key_fails_at_the_call(
    app_and_romancy: tuple[Celery, Romancy],
) -> None:
    _, romancy = app_and_romancy
    first = romancy.schedule("nightly", "nightly_report", 60, "eu")
    with pytest.raises(ConfigurationError, match="'nightly' is already registered"):
        romancy.schedule("nightly", "nightly_report", 120, "us")
    with pytest.raises(InvalidArgumentsError, match="search key 'schedule'"):
        romancy.schedule("other", "nightly_report", 60, "eu", search={"schedule": "mine"})
    assert romancy.schedules == {"nightly": first}
    assert first.search == {"schedule": "nightly"}


# -- starting a tick --------------------------------------------------------------------


def test_each_start_message_carries_the_moment_it_was_sent_and_a_resend_keeps_it(
    app_and_romancy: tuple[Celery, Romancy],
) -> None:
    app, _ = app_and_romancy
    published: list[dict[str, Any]] = []

    def capture(sender: Any = None, body: Any = None, **_: Any) -> None:
        if sender == START_TASK:
            published.append(body[1])  # protocol 2: (args, kwargs, embed)

    before_task_publish.connect(capture, weak=False)
    try:
        task = app.tasks[START_TASK]
        before = datetime.now(UTC)
        task.apply_async(["nightly"])  # as beat sends it
        task.s("nightly", sent_at="2026-11-29T02:00:00.1+00:00").apply_async()  # a retry
    finally:
        before_task_publish.disconnect(capture)
    stamped = datetime.fromisoformat(published[0]["sent_at"])
    assert before <= stamped <= datetime.now(UTC)
    assert published[1] == {"sent_at": "2026-11-29T02:00:00.1+00:00"}


def test_every_send_of_one_tick_starts_one_instance_that_completes(harness: Harness) -> None:
    romancy = harness.romancy
    romancy.schedule("doubler", "instant", 2, 21, search={"team": "ops"})
    tick = "2026-11-29T14:00:02Z"
    # Two beats on the tick, one of them late: one instance.
    sends = ["2026-11-29T14:00:02.001+00:00", "2026-11-29T14:00:03.9+00:00"]
    started = [start_tick(romancy, "doubler", sent_at) for sent_at in sends]
    assert started == [{"instance_id": f"schedule:doubler:{tick}", "tick": tick}] * 2
    later = start_tick(romancy, "doubler", "2026-11-29T14:00:04+00:00")
    assert later["instance_id"] == "schedule:doubler:2026-11-29T14:00:04Z"
    found = romancy.find_instances(search={"schedule": "doubler"})
    assert sorted(i.instance_id for i in found) == [
        f"schedule:doubler:{tick}",
        "schedule:doubler:2026-11-29T14:00:04Z",
    ]
    assert romancy.search_attributes(found[0].instance_id) == {"schedule": "doubler", "team": "ops"}
    with harness.worker():
        for instance in found:
            assert romancy.result(instance.instance_id, timeout=30) == 42
        # Through the task, as beat sends it: the message carries the moment it was sent.
        sent = harness.app.tasks[START_TASK].apply_async(["doubler"])
        wait_for(
            lambda: len(romancy.find_instances(search={"schedule": "doubler"})) == 3,
            30,
            "the task to start a third run",
        )
        newest = romancy.find_instances(search={"schedule": "doubler"}, limit=1)[0]
        assert newest.instance_id.startswith("schedule:doubler:20")
        assert romancy.result(newest.instance_id, timeout=30) == 42
    assert sent.id
    with pytest.raises(ConfigurationError, match="no schedule 'unknown'"):
        start_tick(romancy, "unknown", None)

    listed = run_cli(harness.app, "schedules")
    assert listed.exit_code == 0, listed.output
    header, row = listed.output.splitlines()
    assert header.split() == [
        "NAME",
        "WORKFLOW",
        "SCHEDULE",
        "NEXT",
        "RUN",
        "LAST",
        "STARTED",
        "STATUS",
    ]
    assert row.split()[:5] == ["doubler", "instant", "every", "2", "s"]
    assert row.split()[-2:] == [newest.instance_id, "completed"]
    as_json = run_cli(harness.app, "schedules", "--json")
    (shown,) = json.loads(as_json.output)
    next_run = datetime.fromisoformat(shown.pop("next_run"))
    assert next_run > datetime.now(UTC) - timedelta(seconds=1)
    assert next_run.timestamp() % 2 == 0
    assert shown == {
        "name": "doubler",
        "workflow": "instant",
        "schedule": "every 2 s",
        "last_instance_id": newest.instance_id,
        "last_status": "completed",
    }


def run_cli(app: Celery, *args: str) -> Result:
    """``celery -A app romancy ...`` through click's runner."""
    return CliRunner().invoke(
        romancy_command, list(args), obj=CLIContext(app=app, no_color=True, workdir=None)
    )


# -- real beats -------------------------------------------------------------------------


class ScheduleRig:
    """A worker and beats of tests/schedule_app.py on one PostgreSQL database."""

    def __init__(self, database_url: str, folder: Path, every: float) -> None:
        self.folder = folder
        self.every = every
        self.queue = f"romancy-sched-{folder.name[-10:]}-{random.randrange(10**6)}"
        self.env = {
            **os.environ,
            "ROMANCY_TEST_DB": database_url,
            "ROMANCY_TEST_BROKER": REDIS_URL,
            "ROMANCY_TEST_DIR": str(folder),
            "ROMANCY_TEST_QUEUE": self.queue,
            "ROMANCY_TEST_EVERY": str(every),
            "PYTHONPATH": str(ROOT),
        }
        self.ledger = Ledger(folder / "ledger.log")
        self.processes: list[CeleryProcess] = []
        app = Celery("rig", broker=REDIS_URL, set_as_current=False)
        self.romancy = Romancy(app, database_url=database_url)

    def worker(self) -> CeleryProcess:
        worker = celery_worker("tests.schedule_app", self.env, self.folder, self.queue)
        self.processes.append(worker)
        # The start task goes to the maintenance queue: the worker adds it itself.
        return worker.start()

    def beat(self) -> CeleryProcess:
        beat = celery_beat("tests.schedule_app", self.env, self.folder)
        self.processes.append(beat)
        return beat.start()

    def starts(self) -> list[dict[str, Any]]:
        """Every start message a worker ran, in order: instance id, tick, sent_at."""
        return [
            json.loads(line.removeprefix("start:"))
            for line in self.ledger.events()
            if line.startswith("start:")
        ]

    def ticks_started(self) -> set[str]:
        return {start["tick"] for start in self.starts()}

    def instances(self) -> dict[str, str]:
        found = self.romancy.find_instances(search={"schedule": "ticker"}, limit=1000)
        return {instance.instance_id: instance.status for instance in found}

    def close(self) -> None:
        for process in self.processes:
            process.stop()
        redis_client().delete(self.queue, f"{self.queue}.maintenance")
        self.romancy.storage.dispose()


@pytest.fixture
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    made: list[ScheduleRig] = []

    def make(every: float) -> ScheduleRig:
        made.append(ScheduleRig(empty_database("postgresql", request, tmp_path), tmp_path, every))
        return made[-1]

    yield make
    for each in made:
        each.close()


def beat_sends(beat: CeleryProcess) -> int:
    return beat.log().count("Sending due task romancy.schedule:ticker (romancy.start_scheduled)")


def seconds(label: str) -> float:
    return datetime.fromisoformat(label.replace("Z", "+00:00")).timestamp()


def test_two_beats_start_each_tick_once(rig: Any) -> None:
    every = 2.0
    run: ScheduleRig = rig(every)
    run.worker()
    first, second = run.beat(), run.beat()
    # Up means ticking: each has sent once (a tick while a beat was still starting may
    # have been started by the other before this one looked; it rightly sends nothing).
    wait_for(lambda: beat_sends(first) and beat_sends(second), 30, "both beats to send")
    both_up = time.time()
    # Four ticks after both beats are up, each sent by both.
    wait_for(
        lambda: sum(seconds(t) > both_up for t in run.ticks_started()) >= 4,
        40,
        "four ticks started with both beats running",
    )
    first.stop()
    second.stop()
    sent = beat_sends(first) + beat_sends(second)
    wait_for(lambda: len(run.starts()) == sent, 20, "the worker to run every start sent")
    wait_for(lambda: set(run.instances().values()) == {"completed"}, 20, "every run to complete")

    starts = run.starts()
    per_tick = Counter(start["tick"] for start in starts)
    shared = [tick for tick in per_tick if seconds(tick) > both_up]
    assert len(shared) >= 4
    # Both beats sent every tick after both were up; the worker ran both sends...
    assert all(per_tick[tick] == 2 for tick in shared), per_tick
    assert beat_sends(first) >= 4 and beat_sends(second) >= 4
    # ...and each tick is one instance, named after it, whose step ran once.
    instances = run.instances()
    assert sorted(instances) == sorted(f"schedule:ticker:{tick}" for tick in per_tick)
    reports = Counter(line for line in run.ledger.events() if line.startswith("report:"))
    assert reports == Counter(f"report:{instance_id}" for instance_id in instances)
    # No tick skipped: consecutive multiples of the interval.
    ticks = sorted(seconds(tick) for tick in per_tick)
    assert all(b - a == every for a, b in itertools.pairwise(ticks)), ticks
    assert all(t % every == 0 for t in ticks)
    # Each start names the latest tick at or before the moment beat sent it; both beats
    # sent on the tick (the interval runs on the epoch, not from each beat's start).
    for start in starts:
        sent_at = datetime.fromisoformat(start["sent_at"]).timestamp()
        assert 0 <= sent_at - seconds(start["tick"]) < every, start
        if start["tick"] in shared:
            assert sent_at - seconds(start["tick"]) < every / 2, start


@pytest.mark.parametrize("schedule_file", ["kept", "new"])
def test_a_tick_missed_while_beat_was_down_starts_once_late(rig: Any, schedule_file: str) -> None:
    """Beat back with its schedule file knows its entry's last run from it; a beat with
    a new file (a new container) from the latest run in the database."""
    every = 8.0  # beat restarts well within one interval, even on a loaded machine
    run: ScheduleRig = rig(every)
    run.worker()
    beat = run.beat()
    wait_for(lambda: run.ticks_started(), 30, "a first tick started")
    beat.stop()  # SIGTERM: beat writes its schedule file, with the entry's last run
    stopped = time.time()
    wait_for(lambda: len(run.starts()) == beat_sends(beat), 20, "the sends to be run")
    before = run.ticks_started()
    # The first tick after the stop passes with no beat running.
    missed = (stopped // every + 1) * every
    wait_for(lambda: time.time() >= missed + 0.3, every + 1, "a tick to pass without beat")
    if schedule_file == "kept":
        beat.launch().wait_ready(lambda b: b.log().count("beat: Starting...") == 2)
    else:
        beat = run.beat()
    wait_for(lambda: run.ticks_started() - before, 20, "the missed tick to start")
    beat.stop()
    wait_for(lambda: set(run.instances().values()) == {"completed"}, 20, "the runs to end")

    # Sent when beat came back (before the next tick), for the tick it missed, once.
    (late,) = [start for start in run.starts() if start["tick"] not in before]
    assert seconds(late["tick"]) == missed
    sent_at = datetime.fromisoformat(late["sent_at"]).timestamp()
    assert missed + 0.3 <= sent_at < missed + every
    assert run.instances()[late["instance_id"]] == "completed"
    assert sorted(run.instances()) == sorted(
        f"schedule:ticker:{t}" for t in before | {late["tick"]}
    )
