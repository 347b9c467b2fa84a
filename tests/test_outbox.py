"""The transactional outbox, relayed right after the commit that wrote it (beat is only
the fallback), and quiet maintenance: routed where configured, silent when idle."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import signals
from kombu import Connection, Exchange, Queue

from celery_romancy import maintenance, outbox
from celery_romancy.settings import RomancySettings
from celery_romancy.storage import StepWrite
from celery_romancy.storage.schema import utcnow
from celery_romancy.testing import worker

from .harness import ROOT, Harness
from .ledger import wait_for
from .processes import CeleryProcess, celery_worker
from .services import CI

MAINTENANCE_TASKS = sorted(maintenance.MAINTENANCE_TASKS)


@pytest.fixture
def consumer_queue(harness: Harness) -> Iterator[tuple[Connection, Queue]]:
    """A real consumer bound to the outbox exchange before anything is published."""
    connection = Connection(harness.broker_url)
    exchange = Exchange(harness.romancy.settings.outbox_exchange, type="topic", durable=True)
    queue = Queue(f"outbox-test-{uuid.uuid4().hex[:8]}", exchange, routing_key="#")
    queue(connection.channel()).declare()
    yield connection, queue
    queue(connection.channel()).delete()
    connection.release()


class Inbox:
    """What a consumer has received so far about some instances, read from its queue
    without blocking (other tests sharing the broker publish to the same exchange)."""

    def __init__(self, connection: Connection, queue: Queue) -> None:
        self.bound = queue(connection.channel())
        self.all_events: list[dict[str, Any]] = []

    def events(self, *instance_ids: str) -> list[dict[str, Any]]:
        while (message := self.bound.get(accept=["json"])) is not None:
            self.all_events.append(message.payload)
            message.ack()
        return [e for e in self.all_events if e["subject"] in instance_ids]

    def types(self, *instance_ids: str) -> list[str]:
        return sorted(e["type"] for e in self.events(*instance_ids))


def outbox_rows(instance_id: str, *event_types: str) -> StepWrite:
    """A start that only writes outbox rows, straight to storage: no relay follows it, as
    after a crash right after the commit."""
    return StepWrite(
        outbox=[
            {"event_id": f"{instance_id}:e{n}", "event_type": t, "data": {"n": n}}
            for n, t in enumerate(event_types, 1)
        ]
    )


def insert_unrelayed(h: Harness, instance_id: str, *event_types: str) -> None:
    values = {
        "instance_id": instance_id,
        "workflow_name": "publisher",
        "status": "completed",
        "input_data": {},
    }
    h.romancy.storage.create_instance(values, outbox_rows(instance_id, *event_types))


def test_default_outbox_interval_is_a_slow_fallback() -> None:
    settings = RomancySettings()
    assert settings.outbox_interval == 60
    relay = maintenance.beat_schedule(settings)[maintenance.RELAY_TASK]
    assert relay["schedule"] == 60


# -- relayed after the commit ------------------------------------------------------------


def test_an_event_published_by_a_step_reaches_its_consumer_right_after_the_step(
    harness: Harness, consumer_queue: tuple[Connection, Queue]
) -> None:
    # A real worker and no beat: only the relay after each commit can send the events.
    assert harness.romancy.settings.outbox_interval == 60
    inbox = Inbox(*consumer_queue)
    harness.worker_process().start()
    # The first step publishes, then the workflow sleeps for an hour: the event must
    # arrive while it sleeps, long before any fallback would run.
    napping = harness.romancy.start_workflow("napper", "Q-1", 3600.0)
    wait_for(lambda: inbox.types(napping) == ["order.noted"], 30, "the step's event")
    assert harness.romancy.get_instance(napping).status == "waiting_for_timer"
    [row] = harness.romancy.storage.get_outbox(napping)
    assert row.status == "published" and row.published_at is not None

    # Events the workflow body publishes (the first with the start's commit, in this
    # process) and those of each activity run, each once.
    publishing = harness.romancy.start_workflow("publisher", "Q-2")
    assert harness.romancy.wait(publishing, timeout=30).status == "completed"
    expected = ["order.finished", "order.noted", "order.noted", "order.noted", "order.started"]
    wait_for(lambda: inbox.types(napping, publishing) == expected, 30, "every event")
    rows = harness.romancy.storage.get_outbox(publishing)
    assert len(rows) == 4 and {r.status for r in rows} == {"published"}
    assert harness.romancy.relay_outbox() == 0  # nothing left for the fallback
    events = inbox.events(napping, publishing)
    started = next(e for e in events if e["type"] == "order.started")
    assert started["specversion"] == "1.0" and started["data"] == {"order_id": "Q-2"}
    assert started["id"] == f"{publishing}:publish:order.started:1"
    assert len({e["id"] for e in events}) == 5


def test_a_relay_that_fails_after_the_commit_leaves_the_rows_to_the_fallback(
    harness: Harness,
    consumer_queue: tuple[Connection, Queue],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    inbox = Inbox(*consumer_queue)

    def database_gone(*_: Any, **__: Any) -> list[Any]:
        raise ConnectionError("database gone")

    with monkeypatch.context() as patched:
        patched.setattr(harness.romancy.storage, "claim_outbox", database_gone)
        instance_id = harness.romancy.start_workflow("publisher", "Q-3")  # does not raise
    assert "not relayed after their commit" in caplog.text
    [row] = harness.romancy.storage.get_outbox(instance_id)
    assert row.status == "pending"
    with caplog.at_level(logging.INFO, logger="celery_romancy.outbox"):
        assert harness.romancy.relay_outbox() == 1
    assert "outbox relay sent 1 events left behind" in caplog.text
    wait_for(lambda: inbox.types(instance_id) == ["order.started"], 30, "the fallback's event")


# -- the fallback ------------------------------------------------------------------------


def test_a_row_left_in_progress_by_a_crash_is_relayed_by_the_fallback(
    database_url: str, tmp_path: Path
) -> None:
    h = Harness(database_url, tmp_path, romancy_outbox_interval=1)
    connection = Connection(h.broker_url)
    exchange = Exchange(h.romancy.settings.outbox_exchange, type="topic", durable=True)
    queue = Queue(f"outbox-test-{uuid.uuid4().hex[:8]}", exchange, routing_key="#")
    queue(connection.channel()).declare()
    try:
        inbox = Inbox(connection, queue)
        crashed = f"crashed-{uuid.uuid4().hex[:8]}"
        insert_unrelayed(h, crashed, "order.a", "order.b", "order.c", "order.d")
        # A relayer takes the rows (marks them in progress), then is SIGKILLed before it
        # can publish them or mark them published.
        script = (
            "import os, signal\n"
            "from tests.worker_app import romancy\n"
            "taken = romancy.storage.claim_outbox(2.0, 100)\n"
            "print(len(taken), flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n"
        )
        relayer = subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env=subprocess_env(h),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert relayer.returncode == -signal.SIGKILL
        assert relayer.stdout.strip() == "4"
        assert {r.status for r in h.romancy.storage.get_outbox(crashed)} == {"in_progress"}
        assert h.romancy.relay_outbox() == 0  # locked: the dead relayer's rows are not due yet

        # Real beat and worker: the fallback job takes them again once the lock runs out.
        h.worker_process().start()
        h.beat_process().start()
        wait_for(
            lambda: {r.status for r in h.romancy.storage.get_outbox(crashed)} == {"published"},
            60,
            "the fallback relay to publish the rows",
        )
        wait_for(
            lambda: inbox.types(crashed) == ["order.a", "order.b", "order.c", "order.d"],
            30,
            "the events at the consumer",
        )
    finally:
        queue(connection.channel()).delete()
        connection.release()
        h.close()


def subprocess_env(h: Harness) -> dict[str, str]:
    return {
        **os.environ,
        **{k: v for k, v in h._env().items() if k.startswith(("ROMANCY", "PYTHON"))},
    }


def test_outbox_relays_to_rabbitmq(database_url: str, tmp_path: Path) -> None:
    url = "amqp://guest:guest@127.0.0.1:5672//"
    try:
        with Connection(url, connect_timeout=3) as probe:
            probe.ensure_connection(max_retries=1)
    except Exception as exc:  # noqa: BLE001
        if CI:
            pytest.fail(f"RabbitMQ is not reachable: {exc}")
        pytest.skip(f"RabbitMQ is not reachable: {exc}")
    h = Harness(database_url, tmp_path)
    try:
        h.app.conf.broker_url = url
        with Connection(url) as connection:
            exchange = Exchange(h.romancy.settings.outbox_exchange, type="topic", durable=True)
            queue = Queue(
                f"outbox-test-{uuid.uuid4().hex[:8]}",
                exchange,
                routing_key="order.#",
                auto_delete=True,
            )
            queue(connection.channel()).declare()
            instance_id = f"rmq-{uuid.uuid4().hex[:8]}"
            write = StepWrite(
                outbox=[
                    {
                        "event_id": f"{instance_id}:e1",
                        "event_type": "order.done",
                        "data": {"at": utcnow().isoformat()},
                    }
                ]
            )
            values = {
                "instance_id": instance_id,
                "workflow_name": "publisher",
                "status": "completed",
                "input_data": {},
            }
            h.romancy.storage.create_instance(values, write)
            # What a commit does next: relay the rows it wrote.
            assert outbox.relay_written(h.romancy, write) == 1
            messages: list[dict[str, Any]] = []
            bound = queue(connection.channel())
            wait_for(
                lambda: (
                    (m := bound.get(accept=["json"])) is not None
                    and messages.append(m.payload) is None
                    and messages[-1]["subject"] == instance_id
                ),
                30,
                "the event on RabbitMQ",
            )
            assert messages[-1]["id"] == f"{instance_id}:e1"
            assert messages[-1]["type"] == "order.done"
            assert h.romancy.relay_outbox() == 0
    finally:
        h.close()


# -- quiet maintenance -------------------------------------------------------------------


def test_idle_maintenance_logs_nothing_above_debug(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    harness.romancy.storage.get_outbox()  # the first use migrates (and says so) first
    caplog.set_level(logging.DEBUG)
    maintenance.recover(harness.romancy)
    maintenance.fire_due(harness.romancy)
    outbox.relay(harness.romancy)
    assert [r for r in caplog.records if r.levelno > logging.DEBUG] == []
    said = caplog.text
    assert "recovery found no lost or stalled step" in said
    assert "no timer, event timeout or kept event was due" in said
    assert "outbox relay found nothing to send" in said

    # The same jobs as Celery tasks on a real (in-process) worker, with DEBUG enabled:
    # Celery's own "received" and "succeeded" lines for them are DEBUG too.
    caplog.clear()
    ran = run_maintenance_tasks(harness)
    assert sorted(ran) == MAINTENANCE_TASKS
    about_jobs = [r for r in caplog.records if any(t in r.getMessage() for t in ran)]
    assert any("succeeded" in r.getMessage() for r in about_jobs)
    assert [r.getMessage() for r in about_jobs if r.levelno > logging.DEBUG] == []

    # A job that did something still says so at INFO.
    insert_unrelayed(harness, "left-1", "order.left")
    caplog.clear()
    run_maintenance_tasks(harness, [maintenance.RELAY_TASK])
    succeeded = [r for r in caplog.records if "succeeded" in r.getMessage()]
    assert [r.levelno for r in succeeded] == [logging.INFO]
    assert "outbox relay sent 1 events" in caplog.text


def run_maintenance_tasks(h: Harness, names: list[str] = MAINTENANCE_TASKS) -> list[str]:
    """Send the jobs as beat does and wait until a worker has run each."""
    ran: list[str] = []

    def finished(sender: Any = None, **_: Any) -> None:
        if sender is not None and sender.name in names:
            ran.append(sender.name)

    def keep_logging_as_is(**_: Any) -> None:
        """A ``setup_logging`` receiver: the worker leaves the root logger (and caplog's
        handler on it) alone instead of replacing its handlers and level."""

    signals.task_postrun.connect(finished, weak=False)
    signals.setup_logging.connect(keep_logging_as_is, weak=False)
    try:
        with worker(h.app):
            for name in names:
                h.app.send_task(name)
            wait_for(lambda: len(ran) == len(names), 30, "the maintenance jobs to run")
    finally:
        signals.task_postrun.disconnect(finished)
        signals.setup_logging.disconnect(keep_logging_as_is)
    return ran


def test_a_real_worker_running_idle_maintenance_logs_nothing_about_it(
    database_url: str, tmp_path: Path
) -> None:
    h = Harness(
        database_url,
        tmp_path,
        romancy_recovery_interval=1,
        romancy_timer_interval=1,
        romancy_outbox_interval=1,
        romancy_purge_interval=1,
    )
    try:
        process = h.worker_process().start()  # logs at INFO
        h.beat_process().start()
        ran = wait_for_maintenance_runs(h, process, minimum=3)
        assert set(ran) == set(MAINTENANCE_TASKS)
        # After the startup banner (which lists the tasks), not a line about the jobs.
        after_startup = process.log().partition(" ready.")[2]
        assert [line for line in after_startup.splitlines() if "romancy." in line] == []
    finally:
        h.close()


def wait_for_maintenance_runs(h: Harness, process: CeleryProcess, minimum: int) -> dict[str, int]:
    """Each maintenance job's run count on ``process``, once each has run ``minimum`` times."""
    assert process.hostname is not None
    inspector = h.app.control.inspect(destination=[process.hostname], timeout=5)
    counts: dict[str, int] = {}

    def enough() -> bool:
        stats = inspector.stats() or {}
        totals = stats.get(process.hostname or "", {}).get("total", {})
        counts.clear()
        counts.update({name: n for name, n in totals.items() if name in MAINTENANCE_TASKS})
        return len(counts) == len(MAINTENANCE_TASKS) and min(counts.values()) >= minimum

    wait_for(enough, 60, f"each maintenance job to run {minimum} times")
    return counts


def test_maintenance_jobs_go_to_their_queue_which_every_worker_consumes(
    database_url: str, tmp_path: Path
) -> None:
    maintenance_queue = f"romancy-maintenance-{uuid.uuid4().hex[:8]}"
    h = Harness(
        database_url,
        tmp_path,
        romancy_maintenance_queue=maintenance_queue,
        romancy_recovery_interval=1,
        romancy_timer_interval=1,
        romancy_outbox_interval=1,
        romancy_purge_interval=1,
    )
    try:
        schedule = maintenance.beat_schedule(h.romancy.settings)
        assert {e["options"]["queue"] for e in schedule.values()} == {maintenance_queue}
        # A worker started for the steps' queue only (-Q) consumes the maintenance queue
        # too (the package adds it) and runs every job; the steps' queue stays empty of
        # them.
        process = celery_worker("tests.worker_app", h._env(), h.folder, h.queue)
        h._processes.append(process)
        process.start()
        h.beat_process().start()
        wait_for_maintenance_runs(h, process, minimum=1)
        assert h.queued() == 0
    finally:
        h.redis.delete(maintenance_queue)
        h.close()
