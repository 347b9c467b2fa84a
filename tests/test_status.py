"""``contrib.status``: the status summary of an instance (current steps, steps with their
timings, compensations, cancel reason) on a real worker, and the ready-made Django view
that answers it as JSON (Django's test client)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from celery import current_app
from django.test import Client, override_settings
from django.urls import path

from celery_romancy.contrib.django.views import InstanceStatusView
from celery_romancy.contrib.status import instance_status, read_details, status_of

from .example_stack import import_example
from .ledger import Gate, wait_for
from .test_cli import Cli, running_cli

# The keys every summary has; ``details`` adds current_steps, steps and compensations.
SUMMARY_KEYS = {
    "instance_id",
    "workflow",
    "status",
    "finished",
    "output",
    "error",
    "created_at",
    "updated_at",
    "parent_instance_id",
    "root_instance_id",
    "cancel_reason",
}
STEP_KEYS = {
    "step_id",
    "kind",
    "name",
    "attempt",
    "started_at",
    "finished_at",
    "duration",
    "outcome",
    "error",
}


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    yield from running_cli(tmp_path_factory)


def test_the_status_of_a_rolled_back_saga(cli: Cli) -> None:
    instance_id = cli.start("trip", "ST1", fail_car=True)
    assert cli.finished(instance_id).status == "failed"
    status = status_of(cli.romancy, instance_id)
    assert set(status) == SUMMARY_KEYS | {"current_steps", "steps", "compensations"}
    assert status["status"] == "failed"
    assert status["finished"] is True
    assert status["cancel_reason"] is None
    assert status["error"] == {
        "type": "celery_romancy.errors.TerminalError",
        "message": "no car for ST1",
        "step": "book_car:1",
    }
    assert status["current_steps"] == []
    # Steps only: the registration of send_apology is bookkeeping.
    steps = status["steps"]
    assert [(s["step_id"], s["outcome"]) for s in steps] == [
        ("book_flight:1", "completed"),
        ("book_hotel:1", "completed"),
        ("book_car:1", "failed"),
    ]
    for step in steps:
        assert set(step) == STEP_KEYS
        started = datetime.fromisoformat(step["started_at"])
        finished = datetime.fromisoformat(step["finished_at"])
        assert started <= finished
        assert step["duration"] == round((finished - started).total_seconds(), 3)
    assert steps[0]["error"] is None
    assert steps[2]["error"] == status["error"]
    assert [
        (c["name"], c["undoes"], c["status"], c["attempts"]) for c in status["compensations"]
    ] == [
        ("cancel_hotel", "book_hotel:1", "done", 1),
        ("send_apology", "register:send_apology:1", "done", 1),
        ("cancel_flight", "book_flight:1", "done", 1),
    ]
    assert all(c["finished_at"] and c["error"] is None for c in status["compensations"])
    # Nothing a status endpoint must not show: input, arguments, results, tracebacks.
    text = json.dumps(status)
    for private in ("fail_car", "Traceback", "FL-ST1", "HT-ST1", "arguments", "worker"):
        assert private not in text, private


def test_the_status_of_a_running_saga_then_of_its_cancel(cli: Cli) -> None:
    instance_id = cli.start("held_saga", "ST2")
    wait_for(lambda: "held-start:ST2" in cli.ledger.events(), 60, "the held step to start")
    status = status_of(cli.romancy, instance_id)
    assert status["status"] == "running"
    assert status["finished"] is False
    (current,) = status["current_steps"]
    since = current.pop("since")
    assert current == {
        "step_id": "held:1",
        "kind": "activity",
        "name": "held",
        "attempt": 1,
        "until": None,
    }
    assert datetime.fromisoformat(since) >= datetime.fromisoformat(status["created_at"])
    assert [s["step_id"] for s in status["steps"]] == ["reserve:1"]  # recorded before held

    assert cli.romancy.cancel(instance_id, "customer asked")
    assert status_of(cli.romancy, instance_id)["cancel_reason"] == "customer asked"
    Gate(cli.folder, "ST2").open()
    assert cli.finished(instance_id).status == "cancelled"
    status = status_of(cli.romancy, instance_id)
    assert status["status"] == "cancelled"
    assert status["cancel_reason"] == "customer asked"
    assert status["current_steps"] == []


def test_waits_are_current_steps_with_when_they_end(cli: Cli) -> None:
    instance_id = cli.start("awaiting_payment", "ST3", by_correlation=True)
    napping = cli.start("napper", "ST3", 3600.0)
    timing_out = cli.start("await_payment", "ST3", timeout=1800.0)
    wait_for(lambda: all(_waits(cli, i) for i in (instance_id, napping, timing_out)), 30, "waits")
    (current,) = status_of(cli.romancy, instance_id)["current_steps"]
    assert (current["kind"], current["name"], current["until"]) == ("wait_event", "payment", None)
    (timer,) = status_of(cli.romancy, napping)["current_steps"]
    assert timer["kind"] == "timer"
    slept = datetime.fromisoformat(timer["until"]) - datetime.fromisoformat(timer["since"])
    assert abs(slept.total_seconds() - 3600) < 5
    (event_wait,) = status_of(cli.romancy, timing_out)["current_steps"]
    assert (event_wait["kind"], event_wait["name"]) == ("wait_event", "payment.received")
    patience = datetime.fromisoformat(event_wait["until"]) - datetime.fromisoformat(
        event_wait["since"]
    )
    assert abs(patience.total_seconds() - 1800) < 5
    cli.romancy.send_event("payment", "paid", correlation_id="ST3")
    assert cli.finished(instance_id).status == "completed"


def _waits(cli: Cli, instance_id: str) -> bool:
    return cli.romancy.get_instance(instance_id).status in (
        "waiting_for_event",
        "waiting_for_timer",
    )


def test_without_details_the_summary_has_the_instance_row_only(cli: Cli) -> None:
    instance_id = cli.start("order_saga", "ST4")
    instance = cli.finished(instance_id)
    assert set(instance_status(instance)) == SUMMARY_KEYS
    assert instance_status(instance, read_details(cli.romancy, instance_id)) == status_of(
        cli.romancy, instance_id
    )


# -- the Django view ------------------------------------------------------------------------


class StatusUrls:
    """A URLconf (any object with ``urlpatterns`` will do): the view given a Romancy,
    and the view that finds the Romancy of Celery's current app."""

    def __init__(self, cli: Cli) -> None:
        self.urlpatterns = [
            path("sagas/<path:instance_id>", InstanceStatusView.as_view(romancy=cli.romancy)),
            path("current/<path:instance_id>", InstanceStatusView.as_view()),
        ]


@pytest.fixture
def django_client(cli: Cli, pg_url: str) -> Iterator[Client]:
    import_example(pg_url)  # Django's settings: the example project's, as in test_django
    with override_settings(ROOT_URLCONF=StatusUrls(cli)):
        yield Client()


def test_the_django_view_answers_the_status_as_json(cli: Cli, django_client: Client) -> None:
    instance_id = cli.start("trip", "ST5", fail_car=True, instance_id="trips/ST5")  # a '/'
    assert cli.finished(instance_id).status == "failed"
    response = django_client.get(f"/sagas/{instance_id}")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert body == status_of(cli.romancy, instance_id)
    assert body["compensations"][0]["status"] == "done"

    missing = django_client.get("/sagas/no-such-id")
    assert missing.status_code == 404
    assert missing.json() == {"error": "no workflow instance 'no-such-id'"}
    impossible = django_client.get(f"/sagas/{'x' * 1000}")  # longer than any id can be
    assert impossible.status_code == 404
    assert impossible.json()["error"].startswith("no workflow instance 'xxx")
    # A status view answers; it never acts.
    assert django_client.post(f"/sagas/{instance_id}").status_code == 405


def test_the_django_view_finds_the_romancy_of_celerys_current_app(
    cli: Cli, django_client: Client
) -> None:
    instance_id = cli.start("order_saga", "ST6")
    cli.finished(instance_id)
    previous = current_app._get_current_object()
    cli.app.set_current()
    try:
        response = django_client.get(f"/current/{instance_id}")
    finally:
        previous.set_current()
    assert response.status_code == 200
    assert response.json()["output"]["tracking"] == "TRACK-ST6"
