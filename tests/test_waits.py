"""Timers and external events (and their CloudEvents intake); the outbox: test_outbox.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from celery_romancy import InvalidArgumentsError, UnknownInstanceError
from celery_romancy.contrib.cloudevents import CloudEventsIntake
from celery_romancy.maintenance import fire

from .harness import Harness
from .ledger import wait_for

TIMERS = {
    "romancy_timer_interval": 1,
    "romancy_lease_timeout": 5,
    "romancy_outbox_interval": 1,
}


@pytest.fixture
def waits(database_url: str, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(database_url, tmp_path, **TIMERS)
    yield h
    h.close()


# -- timers -------------------------------------------------------------------------------


def test_a_sleeping_workflow_holds_no_worker_and_resumes_on_time(waits: Harness) -> None:
    worker = waits.worker_process().start()
    waits.beat_process().start()
    instance_id = waits.romancy.start_workflow("napper", "Z-1", 3.0)

    wait_for(
        lambda: waits.romancy.get_instance(instance_id).status == "waiting_for_timer",
        30,
        "the workflow to fall asleep",
    )
    [timer_step] = waits.romancy.storage.get_steps(instance_id)
    # Ask this test's worker only: others may share the broker.
    inspector = waits.app.control.inspect(destination=[worker.hostname], timeout=5)

    def workflow_tasks_running() -> list[str]:
        active = inspector.active()
        assert active, "the worker answered no inspect request"
        names = [task["name"] for tasks in active.values() for task in tasks]
        return [name for name in names if not name.startswith("romancy.")]  # beat jobs aside

    # The step that put the workflow to sleep finishes, and then no worker slot is held
    # for the sleeping workflow (the timer is 3 s; a held slot would fail this wait).
    wait_for(lambda: workflow_tasks_running() == [], 2, "the worker to hold no workflow task")
    assert waits.romancy.get_instance(instance_id).status == "waiting_for_timer"  # still
    fire_at = datetime.fromisoformat(timer_step.command.arguments["fire_at"])

    done = waits.romancy.wait(instance_id, timeout=30)
    assert done.status == "completed" and done.output_data == "after-Z-1"
    timer = next(e for e in waits.romancy.get_history(instance_id) if e.kind == "timer")
    assert timer.created_at is not None
    # Never early; late by at most one beat interval plus a step's latency.
    assert fire_at <= timer.created_at
    assert (timer.created_at - fire_at).total_seconds() < TIMERS["romancy_timer_interval"] + 1
    worker.stop()


def test_a_timer_fired_twice_resumes_once(waits: Harness) -> None:
    instance_id = waits.romancy.start_workflow("napper", "Z-2", 0.0)
    with waits.worker():
        wait_for(
            lambda: (
                waits.romancy.get_instance(instance_id).status
                in ("waiting_for_timer", "running", "completed")
            ),
            30,
            "the first step",
        )
        # Read once: the timer may fire meanwhile, and its step give way to the next one.
        timers = [s for s in waits.romancy.storage.get_steps(instance_id) if s.kind == "timer"]
        if timers:
            token = timers[0].token
            results = [fire(waits.romancy, instance_id, token) for _ in range(2)]
            assert sorted(results) == ["duplicate", "recorded"] or results == [
                "duplicate",
                "duplicate",
            ]  # the countdown message won the race
        done = waits.romancy.wait(instance_id, timeout=30)
    assert done.status == "completed"
    assert waits.ledger.count("note:after-Z-2") == 1
    assert [e.kind for e in waits.romancy.get_history(instance_id)] == [
        "activity",
        "timer",
        "activity",
    ]


# -- events -------------------------------------------------------------------------------


def test_an_event_sent_before_the_wait_is_kept_and_delivered(waits: Harness) -> None:
    instance_id = waits.romancy.start_workflow("await_payment", "gated-E1")
    with waits.worker():
        wait_for(lambda: waits.ledger.count("hold_stock:gated-E1") == 1, 30, "the first step")
        # The workflow is not waiting yet: the event must be kept, not lost.
        assert waits.romancy.send_event(
            "payment.received",
            {"order_id": "gated-E1", "amount": 109.97},
            correlation_id="gated-E1",
        )
        waits.gate("gated-E1").open()
        done = waits.romancy.wait(instance_id, timeout=30)
    assert done.status == "completed"
    assert done.output_data == "paid-gated-E1-109.97"


def test_an_event_sent_to_a_waiting_workflow_resumes_it_at_once(waits: Harness) -> None:
    instance_id = waits.romancy.start_workflow("await_payment", "E2")
    with waits.worker():
        wait_for(
            lambda: waits.romancy.get_instance(instance_id).status == "waiting_for_event",
            30,
            "the wait",
        )
        waits.romancy.send_event(
            "payment.received", {"order_id": "E2", "amount": 5.0}, instance_id=instance_id
        )
        # No beat runs here: the send itself (or the worker that just committed the wait,
        # if it saw the event first and holds the wait) delivers it and sends the next step.
        wait_for(
            lambda: waits.romancy.get_instance(instance_id).status != "waiting_for_event",
            2,
            "the event to be delivered",
        )
        done = waits.romancy.wait(instance_id, timeout=30)
    assert done.output_data == "paid-E2-5.0"
    assert [e.kind for e in waits.romancy.get_history(instance_id)] == [
        "activity",
        "event",
        "activity",
    ]


@pytest.mark.parametrize("on_timeout", ["catch", "raise"])
def test_a_wait_that_times_out_raises_event_timeout_error(waits: Harness, on_timeout: str) -> None:
    order = f"T-{on_timeout}"
    instance_id = waits.romancy.start_workflow("await_payment", order, 0.5, on_timeout)
    with waits.worker():
        wait_for(
            lambda: waits.romancy.get_instance(instance_id).status == "waiting_for_event",
            30,
            "the wait",
        )
        # The beat job's work, done here: fire the timeout once it is due.
        wait_for(lambda: waits.romancy.fire_due() == 1, 30, "the timeout to fire")
        done = waits.romancy.wait(instance_id, timeout=30)
    if on_timeout == "catch":
        assert done.status == "completed"
        assert done.output_data == f"expired-{order}"
        assert waits.ledger.count(f"release_hold:{order}") == 0
    else:
        assert done.status == "failed"
        assert done.error is not None
        assert done.error["type"] == "celery_romancy.errors.EventTimeoutError"
        assert waits.ledger.count(f"release_hold:{order}") == 1  # compensated


def test_send_event_rejects_bad_input_and_writes_nothing(waits: Harness) -> None:
    with pytest.raises(UnknownInstanceError):
        waits.romancy.send_event("payment.received", {}, instance_id="nope")
    with pytest.raises(InvalidArgumentsError, match="exactly one of"):
        waits.romancy.send_event("payment.received", {})
    with pytest.raises(InvalidArgumentsError, match="event_type must be 1 to 200 characters"):
        waits.romancy.send_event("", {}, correlation_id="x")
    assert waits.romancy.storage.waiting_with_kept_events(10) == []
    assert waits.romancy.storage.find_event("payment.received", "x", "x") is None


# -- CloudEvents intake --------------------------------------------------------------------


def post(client: Client, body: bytes | str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    response = client.post("/", data=body, **kwargs)
    return response.status_code, json.loads(response.get_data())


def test_cloudevents_intake_accepts_structured_and_binary_events(waits: Harness) -> None:
    client = Client(CloudEventsIntake(waits.romancy, allow_anonymous=True))
    first = waits.romancy.start_workflow("await_payment", "CE-1")
    second = waits.romancy.start_workflow("await_payment", "CE-2")
    structured = {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "/payments",
        "type": "payment.received",
        "romancycorrelationid": "CE-1",
        "data": {"order_id": "CE-1", "amount": 1.5},
    }
    with waits.worker():
        for instance_id in (first, second):
            wait_for(
                lambda i=instance_id: waits.romancy.get_instance(i).status == "waiting_for_event",
                30,
                "the wait",
            )
        status, body = post(
            client, json.dumps(structured), content_type="application/cloudevents+json"
        )
        assert (status, body) == (202, {"accepted": "evt-1", "duplicate": False})
        # The sender retries: the same source + id is accepted and stored once.
        assert (
            post(client, json.dumps(structured), content_type="application/cloudevents+json")[1][
                "duplicate"
            ]
            is True
        )
        status, _ = post(
            client,
            json.dumps({"order_id": "CE-2", "amount": 2.5}),
            content_type="application/json",
            headers={
                "ce-specversion": "1.0",
                "ce-id": "evt-2",
                "ce-source": "/payments",
                "ce-type": "payment.received",
                "ce-romancyinstanceid": second,
            },
        )
        assert status == 202
        assert waits.romancy.wait(first, timeout=30).output_data == "paid-CE-1-1.5"
        assert waits.romancy.wait(second, timeout=30).output_data == "paid-CE-2-2.5"


@pytest.mark.parametrize(
    ("body", "kwargs", "status", "message"),
    [
        ("{not json", {"content_type": "application/cloudevents+json"}, 400, "not valid JSON"),
        (
            json.dumps({"specversion": "1.0", "id": "x", "type": "t"}),
            {"content_type": "application/cloudevents+json"},
            400,
            "missing CloudEvents attributes",
        ),
        (
            json.dumps(
                {
                    "specversion": "1.0",
                    "id": "x",
                    "source": "s",
                    "type": "t",
                    "romancyinstanceid": "no-such-instance",
                }
            ),
            {"content_type": "application/cloudevents+json"},
            404,
            "no workflow instance",
        ),
        (
            "{}",
            {"content_type": "application/json", "headers": {"ce-id": "x"}},
            400,
            "missing CloudEvents attributes: specversion, source, type",
        ),
        (
            json.dumps({"specversion": "1.0", "id": "x", "source": "s", "type": "t"}),
            {"content_type": "application/cloudevents+json"},
            400,
            "exactly one of",
        ),
    ],
)
def test_cloudevents_intake_rejects_bad_requests_and_writes_nothing(
    waits: Harness, body: str, kwargs: dict[str, Any], status: int, message: str
) -> None:
    client = Client(CloudEventsIntake(waits.romancy, allow_anonymous=True))
    got, payload = post(client, body, **kwargs)
    assert got == status
    assert message in payload["error"]
    with waits.romancy.storage.engine.connect() as conn:
        from celery_romancy.storage.schema import events

        assert conn.execute(events.select()).all() == []


def test_cancelling_a_waiting_workflow_compensates_at_once(waits: Harness) -> None:
    instance_id = waits.romancy.start_workflow("await_payment", "X-1")
    with waits.worker():
        wait_for(
            lambda: waits.romancy.get_instance(instance_id).status == "waiting_for_event",
            30,
            "the wait",
        )
        assert waits.romancy.cancel(instance_id, "customer left") is True
        done = waits.romancy.wait(instance_id, timeout=30)
    assert done.status == "cancelled"
    assert waits.ledger.count("release_hold:X-1") == 1
    # The event that comes too late is refused: nothing waits for it any more.
    with pytest.raises(Exception, match="already ended cancelled"):
        waits.romancy.send_event(
            "payment.received", {"order_id": "X-1", "amount": 1.0}, instance_id=instance_id
        )


def test_a_workflow_that_starts_by_waiting_waits_from_the_start(waits: Harness) -> None:
    instance_id = waits.romancy.start_workflow("await_first", "W-1")
    assert waits.romancy.get_instance(instance_id).status == "waiting_for_event"
    assert waits.queued() == 0  # waiting holds no message, and no worker
    with waits.worker():
        waits.romancy.send_event("go", "now", correlation_id="W-1")
        done = waits.romancy.wait(instance_id, timeout=30)
    assert done.output_data == "go-W-1-now"
