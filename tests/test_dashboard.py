"""The dashboard (``contrib.dashboard``): its pages, JSON API and actions on SQLite and
PostgreSQL, with sagas run by a real worker (completed, rolled back, waiting on a timer,
waiting on an event, parked in compensation_failed); the keyset paging and capped
counts it reads through; the operator actions recorded with who did them; and the real
``celery ... romancy dashboard`` command over HTTP."""

from __future__ import annotations

import base64
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html import unescape
from typing import Any
from urllib.parse import quote

import pytest
from celery.bin.base import CLIContext
from click.testing import CliRunner
from flask import Flask
from werkzeug.test import Client, TestResponse

from celery_romancy import ConfigurationError, InstanceStateError, InvalidArgumentsError
from celery_romancy.cli import romancy as romancy_command
from celery_romancy.contrib.dashboard import Dashboard, Request
from celery_romancy.contrib.flask import dashboard_blueprint
from celery_romancy.storage import Store

from .example_stack import QUEUE, example_env, example_worker, import_example, order
from .harness import Harness
from .ledger import wait_for
from .processes import ROOT, ServiceProcess, celery, free_port, log_says
from .services import redis_client

FLOWER = "http://flower.example:5555"


def reach(harness: Harness, instance_id: str, *statuses: str) -> None:
    def reached() -> bool:
        return harness.romancy.get_instance(instance_id).status in statuses

    wait_for(reached, 30, f"{instance_id} to be {' or '.join(statuses)}")


def start_sagas(harness: Harness) -> dict[str, str]:
    """One instance of each kind the dashboard must draw, run by the in-process worker
    (which must be running)."""
    romancy = harness.romancy
    ids = {
        "completed": romancy.start_workflow("trip", "D1", search={"trip": "D1"}),
        "rolled_back": romancy.start_workflow("trip", "D2", fail_car=True),
        "timer": romancy.start_workflow("napper", "D3", 3600.0),
        "event": romancy.start_workflow("await_payment", "D4"),
    }
    reach(harness, ids["completed"], "completed")
    reach(harness, ids["rolled_back"], "failed")
    reach(harness, ids["timer"], "waiting_for_timer")
    reach(harness, ids["event"], "waiting_for_event")
    (harness.folder / "flight-api-down").touch()  # cancel_flight fails from now on
    ids["parked"] = romancy.start_workflow("trip", "D5", fail_car=True)
    reach(harness, ids["parked"], "compensation_failed")
    return ids


def text(response: TestResponse) -> str:
    return unescape(response.get_data(as_text=True))


def listed(page: str) -> list[str]:
    return [unescape(i) for i in re.findall(r'<tr data-instance-id="([^"]*)"', page)]


def entries(page: str) -> list[tuple[str, str, str]]:
    """(kind, state, step id) of each step the timeline draws, branches included."""
    found = re.findall(
        r'data-kind="([^"]*)" data-state="([^"]*)"(?: data-step-id="([^"]*)")?', page
    )
    return [(k, s, unescape(i)) for k, s, i in found]


def test_the_pages_and_the_api_show_every_kind_of_saga(harness: Harness) -> None:
    with harness.worker():
        ids = start_sagas(harness)
    client = Client(Dashboard(harness.romancy, flower_url=FLOWER))

    # The list: newest first, with status, workflow, current step; counts at the top.
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    page = text(response)
    newest_first = [i.instance_id for i in harness.romancy.find_instances()]
    assert listed(page) == newest_first
    assert set(newest_first) == set(ids.values())
    assert re.search(r'data-status="failed"[^>]*>.*?class="count">1<', page)
    assert re.search(r'data-status="">all <span class="count">5<', page)
    timer_row = re.search(rf'data-instance-id="{ids["timer"]}".*?</tr>', page)
    assert timer_row is not None and "timer until" in timer_row.group()
    event_row = re.search(rf'data-instance-id="{ids["event"]}".*?</tr>', page)
    assert event_row is not None and "waiting for event payment.received" in event_row.group()
    for landmark in ('<main id="main">', "<h1>", '<label for="filter-status">', 'scope="col"'):
        assert landmark in page
    assert "http://" not in page.replace(FLOWER, "")  # nothing fetched from elsewhere

    # Filters: status, workflow, business key, id, time range.
    assert listed(text(client.get("/?status=failed"))) == [ids["rolled_back"]]
    assert listed(text(client.get("/?workflow=napper"))) == [ids["timer"]]
    assert listed(text(client.get("/?search=trip%3DD1"))) == [ids["completed"]]
    assert listed(text(client.get(f"/?id={ids['event']}"))) == [ids["event"]]
    assert listed(text(client.get(f"/?id={ids['event']}&status=completed"))) == []
    later = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M")
    assert listed(text(client.get(f"/?created_after={later}"))) == []
    assert listed(text(client.get(f"/?created_before={later}"))) == newest_first
    bad = client.get("/?status=nonsense")
    assert bad.status_code == 400 and "no such status" in text(bad)

    # Pages of two, by the "Older" link: every instance once, in order.
    seen: list[str] = []
    url: str | None = "/?limit=2"
    while url is not None:
        page = text(client.get(url))
        seen += listed(page)
        found = re.search(r'id="next-page" rel="next" href="([^"]*)"', page)
        url = unescape(found.group(1)) if found else None
    assert seen == newest_first

    # The same through the JSON API.
    body = client.get("/api/instances?limit=3").get_json()
    assert [i["instance_id"] for i in body["instances"]] == newest_first[:3]
    rest = client.get(f"/api/instances?limit=3&after={body['next']}").get_json()
    assert [i["instance_id"] for i in rest["instances"]] == newest_first[3:]
    assert rest["next"] is None
    assert client.get("/api/instances?status=waiting_for_event").get_json()["instances"][0][
        "current_step"
    ] == ("waiting for event payment.received")
    assert client.get("/api/counts").get_json() == {
        "counts": {
            "completed": 1,
            "failed": 1,
            "waiting_for_timer": 1,
            "waiting_for_event": 1,
            "compensation_failed": 1,
        },
        "cap": 1_000,
    }

    # A rolled-back saga: its steps in order, the failed one with its traceback folded,
    # the undo path newest first, each task linked to Flower.
    page = text(client.get(f"/instances/{ids['rolled_back']}"))
    assert entries(page) == [
        ("activity", "completed", "book_flight:1"),
        ("activity", "completed", "book_hotel:1"),
        ("activity", "failed", "book_car:1"),
    ]
    assert '<details id="error-traceback"><summary>Traceback</summary>' in page
    assert "TerminalError" in page and "no car for D2" in page
    undo = re.findall(r'<li class="undo state-(\w+)" data-step-id="([^"]*)"', page)
    assert undo == [
        ("done", "book_hotel:1"),
        ("done", "register:send_apology:1"),
        ("done", "book_flight:1"),
    ]
    history = harness.romancy.get_history(ids["rolled_back"])
    for event in history:
        if event.task_id:
            assert f'href="{FLOWER}/task/{event.task_id}"' in page
    assert '"trip_id": "D2"' in page  # the input, as formatted JSON

    api = client.get(f"/api/instances/{ids['rolled_back']}").get_json()
    assert api["instance"]["status"] == "failed"
    assert api["instance"]["input_data"] == {"trip_id": "D2", "fail_car": True}
    assert [(s["step_id"], s["state"]) for s in api["steps"]] == [
        ("book_flight:1", "completed"),
        ("book_hotel:1", "completed"),
        ("book_car:1", "failed"),
    ]
    assert [s["task_id"] for s in api["steps"]] == [e.task_id for e in history if e.task_id]
    assert api["steps"][0]["result"] == "FL-D2" and api["steps"][0]["worker"]
    assert api["steps"][2]["error"]["message"] == "no car for D2"
    assert [c["undoes"] for c in api["compensations"]] == [u[1] for u in undo]

    # Waiting on a timer, and on an event: the wait is the current step, with its end.
    page = text(client.get(f"/instances/{ids['timer']}"))
    assert entries(page)[-1] == ("timer", "waiting", "sleep:1")
    assert 'id="auto-refresh"' in page  # still running: the page refreshes itself
    (timer,) = [
        s
        for s in client.get(f"/api/instances/{ids['timer']}").get_json()["steps"]
        if s["kind"] == "timer"
    ]
    until = datetime.fromisoformat(timer["until"])
    assert timedelta(minutes=59) < until - datetime.now(UTC) <= timedelta(hours=1)
    page = text(client.get(f"/instances/{ids['event']}"))
    assert entries(page)[-1][:2] == ("wait_event", "waiting")
    assert "payment.received" in page and "correlation id" in page

    # Parked in compensation_failed: the failed compensation on the undo path, with its
    # attempts and the traceback of the compensation error.
    page = text(client.get(f"/instances/{ids['parked']}"))
    assert re.search(r'<li class="undo state-failed" data-step-id="book_flight:1"', page)
    assert '<details id="undo-traceback">' in page
    assert "flight API unreachable" in page
    assert "2 failed attempts" in page  # cancel_flight tried three times: two retried
    (undo,) = [
        c
        for c in client.get(f"/api/instances/{ids['parked']}").get_json()["compensations"]
        if c["status"] == "failed"
    ]
    assert (undo["name"], undo["state"], undo["attempts"]) == ("cancel_flight", "failed", 3)
    # The retried attempts; the last one's error is the compensation's own.
    assert [a["attempt"] for a in undo["failed_attempts"]] == [1, 2]
    assert undo["task_id"] and f'href="{FLOWER}/task/{undo["task_id"]}"' in page
    assert 'id="auto-refresh"' not in page  # it ended
    assert 'id="actions"' not in page  # no authorize: no one may act

    # A completed saga: its output as formatted JSON.
    page = text(client.get(f"/instances/{ids['completed']}"))
    assert '"flight": "FL-D1"' in page
    assert "trip=D1" in page  # its business key

    assert client.get("/instances/no-such-id").status_code == 404
    assert client.get("/api/instances/no-such-id").get_json() == {
        "error": "no workflow instance 'no-such-id'"
    }
    with pytest.raises(ConfigurationError, match="flower_url must be an http"):
        Dashboard(harness.romancy, flower_url="javascript:alert(1)")
    head = client.head("/")
    assert head.status_code == 200 and head.get_data() == b""
    css = client.get("/static/dashboard.css")
    assert css.status_code == 200 and css.headers["Content-Type"].startswith("text/css")
    assert client.get("/static/../app.py").status_code == 404


def test_the_timeline_draws_branches_side_by_side_and_links_child_workflows(
    harness: Harness,
) -> None:
    romancy = harness.romancy
    client = Client(Dashboard(romancy))
    with harness.worker():
        paired = romancy.start_workflow("pair", "G1")
        jammed = romancy.start_workflow("fulfil", "G2", "raise")
        paying = romancy.start_workflow("c_payment", "G3", 10.0)
        publishing = romancy.start_workflow("publisher", "G4")
        # One branch held at its gate while the others end: drawn as running meanwhile.
        wait_for(lambda: "reserve-start:G2" in harness.ledger.events(), 30, "g_reserve")
        (step,) = [
            s
            for s in client.get(f"/api/instances/{jammed}").get_json()["steps"]
            if s["kind"] == "gather"
        ]
        assert step["state"] in ("open", "failed")
        assert [b["name"] for b in step["branches"]] == ["g_charge", "g_jam", "g_reserve"]
        assert step["branches"][2]["state"] == "running"
        harness.gate("reserve-G2").open()
        for instance_id in (paired, jammed, paying, publishing):
            romancy.wait(instance_id, timeout=30)

    page = text(client.get(f"/instances/{paired}"))
    gather = re.search(r'<ul class="branches" aria-label="Parallel branches">(.*?)</ul>', page)
    assert gather is not None
    assert entries(gather.group(1)) == [
        ("activity", "completed", "g_pair:1"),
        ("activity", "completed", "g_pair:2"),
    ]
    (step,) = [
        s for s in client.get(f"/api/instances/{paired}").get_json()["steps"] if s["branches"]
    ]
    assert step["kind"] == "gather" and step["state"] == "completed"
    assert [b["result"] for b in step["branches"]] == ["left", "right"]

    # A failed branch fails its gather; the rollback's undo path is drawn apart.
    api = client.get(f"/api/instances/{jammed}").get_json()
    assert api["instance"]["status"] == "failed"
    (step,) = [s for s in api["steps"] if s["kind"] == "gather"]
    assert step["state"] == "failed"
    assert "failed" in [b["state"] for b in step["branches"]]
    assert "undo-title" in text(client.get(f"/instances/{jammed}"))

    # A child workflow: linked from its step and listed; the child links back.
    (child,) = romancy.find_instances(parent=paying)
    page = text(client.get(f"/instances/{paying}"))
    assert re.search(r'<li class="entry kind-child state-completed" data-kind="child"', page)
    assert f'class="child" href="/instances/{quote(child.instance_id, safe="")}"' in page
    assert re.search(
        rf'<table id="children">.*data-instance-id="{re.escape(child.instance_id)}"', page, re.S
    )
    page = text(client.get(f"/instances/{quote(child.instance_id, safe='')}"))
    assert f'<dt>Parent</dt><dd><a href="/instances/{paying}">{paying}</a>' in page

    # The events the saga published (its outbox; those one commit wrote in any order).
    page = text(client.get(f"/instances/{publishing}"))
    outbox = re.search(r'<table id="outbox">.*?</table>', page, re.S)
    assert outbox is not None
    assert sorted(re.findall(r'<tr><th scope="row">([\w.]+)</th>', outbox.group())) == [
        "order.finished",
        "order.noted",
        "order.noted",
        "order.started",
    ]


def csrf_token(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page)
    assert found is not None, "no CSRF token in the page"
    return found.group(1)


def test_actions_need_a_csrf_token_and_authorization_and_are_recorded(harness: Harness) -> None:
    romancy = harness.romancy
    allowed: dict[str, str | None] = {"actor": "ann"}

    def authorize(request: Request) -> str | None:
        return allowed["actor"]

    client = Client(Dashboard(romancy, authorize=authorize))
    with harness.worker():
        ids = start_sagas(harness)
        timer = ids["timer"]
        page = text(client.get(f"/instances/{timer}"))
        assert 'id="action-cancel"' in page and 'id="action-retry-compensation"' not in page
        token = csrf_token(page)
        cancel = f"/actions/cancel/{timer}"

        # Refused: no token; a wrong token; a token without its cookie; another site;
        # someone authorize turns away. Nothing happens, nothing is recorded.
        assert client.post(cancel, data={"reason": "x"}).status_code == 403
        assert client.post(cancel, data={"csrf_token": "0" * 64}).status_code == 403
        stranger = Client(Dashboard(romancy, authorize=authorize))
        assert stranger.post(cancel, data={"csrf_token": token}).status_code == 403
        other_site = {"Origin": "https://evil.example", "Host": "localhost"}
        assert (
            client.post(cancel, data={"csrf_token": token}, headers=other_site).status_code == 403
        )
        allowed["actor"] = None
        assert client.post(cancel, data={"csrf_token": token}).status_code == 403
        allowed["actor"] = "ann"
        read_only = Client(Dashboard(romancy, authorize=authorize, read_only=True))
        assert 'id="actions"' not in text(read_only.get(f"/instances/{timer}"))
        assert read_only.post(cancel, data={"csrf_token": token}).status_code == 403
        assert romancy.get_instance(timer).status == "waiting_for_timer"
        assert romancy.operator_actions(timer) == []

        # Allowed: cancel with a reason.
        done = client.post(cancel, data={"csrf_token": token, "reason": "customer asked"})
        assert done.status_code == 303
        assert done.headers["Location"] == f"/instances/{timer}?done=cancel"
        reach(harness, timer, "cancelled")
        assert romancy.get_instance(timer).cancel_reason == "customer asked"
        page = text(client.get(done.headers["Location"]))
        assert 'id="notice" class="notice done"' in page
        assert re.search(
            r'data-kind="operator" data-state="done"><span class=.what.>ann did <strong>cancel',
            page,
        )

        # Refused by the instance's status: the page says why (409), nothing recorded;
        # asked twice: nothing changes, and the page says so.
        finished = client.post(f"/actions/cancel/{ids['completed']}", data={"csrf_token": token})
        assert finished.status_code == 409
        assert "it already ended completed" in text(finished)
        assert 'id="notice" class="notice error" role="alert"' in text(finished)
        again = client.post(cancel, data={"csrf_token": token})
        assert again.headers["Location"] == f"/instances/{timer}?done=cancel-already"
        assert "already being cancelled" in text(client.get(again.headers["Location"]))

        # Send an event: the waiting saga takes it and completes.
        sent = client.post(
            f"/actions/send-event/{ids['event']}",
            data={
                "csrf_token": token,
                "event_type": "payment.received",
                "data": '{"order_id": "D4", "amount": 12.5}',
            },
        )
        assert sent.status_code == 303
        reach(harness, ids["event"], "completed")
        bad_json = client.post(
            f"/actions/send-event/{ids['parked']}",
            data={"csrf_token": token, "event_type": "x", "data": "{nope"},
        )
        assert bad_json.status_code == 400 and "not JSON" in text(bad_json)

        # Retry the failed compensation once its cause is fixed: the rollback ends.
        (harness.folder / "flight-api-down").unlink()
        retried = client.post(
            f"/actions/retry-compensation/{ids['parked']}", data={"csrf_token": token}
        )
        assert retried.status_code == 303
        reach(harness, ids["parked"], "failed")

    # Resume: a saga whose first step's message was lost (no worker took it).
    stuck = romancy.start_workflow("order_saga", "D6")
    harness.redis.delete(harness.queue)
    resumed = client.post(f"/actions/resume/{stuck}", data={"csrf_token": token})
    assert resumed.status_code == 303
    with harness.worker():
        reach(harness, stuck, "completed")

    recorded = {
        i: [(a.action, a.actor, a.detail) for a in romancy.operator_actions(i)]
        for i in (timer, ids["event"], ids["parked"], ids["completed"], stuck)
    }
    assert recorded == {
        timer: [("cancel", "ann", {"reason": "customer asked"})],
        ids["event"]: [("send_event", "ann", {"event_type": "payment.received"})],
        ids["parked"]: [("retry_compensation", "ann", None)],
        ids["completed"]: [],
        stuck: [("resume", "ann", None)],
    }
    api = client.get(f"/api/instances/{timer}").get_json()
    assert [(a["action"], a["actor"]) for a in api["operator_actions"]] == [("cancel", "ann")]

    # `romancy show` lists them too.
    context = CLIContext(app=harness.app, no_color=True, workdir=None)
    shown = CliRunner().invoke(romancy_command, ["show", timer], obj=context)
    assert shown.exit_code == 0, shown.output
    assert re.search(
        r"operator actions \(1\)\n.*\n.*cancel\s+ann\s+\{\"reason\": \"customer asked\"\}",
        shown.output,
    )


def test_romancy_records_who_acted_only_when_the_action_succeeds(harness: Harness) -> None:
    romancy = harness.romancy
    with harness.worker():
        waiting = romancy.start_workflow("await_payment", "R1")
        reach(harness, waiting, "waiting_for_event")
        # By correlation id: no instance named, nothing to record it with.
        romancy.send_event(
            "payment.received", {"order_id": "R1", "amount": 1.0}, correlation_id="R1", by="bob"
        )
        reach(harness, waiting, "completed")
    assert romancy.operator_actions(waiting) == []
    with pytest.raises(InstanceStateError, match="already ended completed"):
        romancy.cancel(waiting, "too late", by="bob")
    with pytest.raises(InvalidArgumentsError, match="by must not contain control characters"):
        romancy.cancel(waiting, "x", by="b\x00b")
    with pytest.raises(InstanceStateError):
        romancy.resume(waiting, by="bob")
    assert romancy.operator_actions(waiting) == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the adapter only
def test_the_flask_blueprint_serves_the_dashboard_under_its_prefix(harness: Harness) -> None:
    app = Flask(__name__)
    blueprint = dashboard_blueprint(harness.romancy, flower_url=FLOWER, authorize=lambda r: "fay")
    app.register_blueprint(blueprint, url_prefix="/romancy")
    client = app.test_client()
    with harness.worker():
        waiting = harness.romancy.start_workflow("napper", "F1", 3600.0)
        reach(harness, waiting, "waiting_for_timer")
        page = unescape(client.get("/romancy/").get_data(as_text=True))
        assert listed(page) == [waiting]
        assert f'href="/romancy/instances/{waiting}"' in page
        assert 'href="/romancy/static/dashboard.css"' in page
        assert client.get("/romancy/static/dashboard.js").status_code == 200
        api = client.get("/romancy/api/instances").get_json()
        assert [i["instance_id"] for i in api["instances"]] == [waiting]
        page = unescape(client.get(f"/romancy/instances/{waiting}").get_data(as_text=True))
        assert f'action="/romancy/actions/cancel/{waiting}"' in page
        cancel = f"/romancy/actions/cancel/{waiting}"
        assert client.post(cancel, data={"reason": "no token"}).status_code == 403
        done = client.post(cancel, data={"csrf_token": csrf_token(page), "reason": "by fay"})
        assert done.status_code == 303
        assert done.headers["Location"] == f"/romancy/instances/{waiting}?done=cancel"
        reach(harness, waiting, "cancelled")
    assert [(a.action, a.actor) for a in harness.romancy.operator_actions(waiting)] == [
        ("cancel", "fay")
    ]


# -- storage: keyset pages and capped counts -----------------------------------------------


def test_keyset_pages_visit_every_instance_once_newest_first(store: Store) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    # Ties on created_at, broken by instance_id, and several statuses.
    for n in range(9):
        store.create_instance(
            {
                "instance_id": f"k{n}",
                "workflow_name": "wf" if n % 3 else "other",
                "status": "completed" if n % 2 else "running",
                "input_data": {},
                "created_at": base + timedelta(seconds=n // 3),
            }
        )
    everything = [i.instance_id for i in store.find_instances(limit=100)]
    assert everything == ["k6", "k7", "k8", "k3", "k4", "k5", "k0", "k1", "k2"]
    for status in (None, "completed"):
        expected = [i.instance_id for i in store.find_instances(status=status, limit=100)]
        seen: list[str] = []
        after = None
        while True:
            page = store.find_instances(status=status, limit=2, after=after)
            seen += [i.instance_id for i in page]
            if len(page) < 2:
                break
            after = (page[-1].created_at, page[-1].instance_id)
        assert seen == expected
    window = store.find_instances(
        created_after=base + timedelta(seconds=1), created_before=base + timedelta(seconds=2)
    )
    assert [i.instance_id for i in window] == ["k3", "k4", "k5"]

    assert store.count_by_status() == {"completed": 4, "running": 5}
    assert store.count_by_status(cap=3) == {"completed": 3, "running": 3}
    assert store.count_by_status("wf") == {"completed": 3, "running": 3}
    assert store.count_by_status(created_before=base + timedelta(seconds=1)) == {
        "completed": 1,
        "running": 2,
    }


# -- the real command, over HTTP --------------------------------------------------------------


@pytest.fixture
def dashboard_process(harness: Harness) -> Iterator[tuple[str, ServiceProcess]]:
    env = harness._env()
    process = ServiceProcess(
        "dashboard",
        celery(
            "tests.worker_app",
            "romancy",
            "dashboard",
            "--port",
            "0",
            "--flower-url",
            FLOWER,
            "--allow-actions",
            "--basic-auth",
            "ann:s3cret",
        ),
        env,
        harness.folder,
    )
    process.start(lambda p: "Romancy dashboard on http://" in p.log(), timeout=60)
    found = re.search(r"Romancy dashboard on (http://\S+/)", process.log())
    assert found is not None
    yield found.group(1), process
    process.stop()


def fetch(
    url: str,
    auth: str | None = None,
    data: dict[str, str] | None = None,
    cookie: str = "",
    host: str | None = None,
) -> tuple[int, str, Any]:
    headers = {"Cookie": cookie} if cookie else {}
    if host is not None:
        headers["Host"] = host
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    body = None if data is None else urllib.parse.urlencode(data).encode()
    request = urllib.request.Request(url, data=body, headers=headers)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.read().decode(), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), exc.headers


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_celery_command_serves_the_dashboard(
    harness: Harness, dashboard_process: tuple[str, ServiceProcess]
) -> None:
    url, _ = dashboard_process
    with harness.worker():
        waiting = harness.romancy.start_workflow("napper", "C1", 3600.0)
        reach(harness, waiting, "waiting_for_timer")
    status, _, headers = fetch(url)
    assert status == 401 and "Basic" in headers["WWW-Authenticate"]
    assert fetch(url, "ann:wrong")[0] == 401
    status, page, _ = fetch(url, "ann:s3cret")
    assert status == 200 and waiting in page
    status, page, headers = fetch(f"{url}instances/{waiting}", "ann:s3cret")
    assert status == 200 and 'id="action-cancel"' in page
    cookie = headers["Set-Cookie"].split(";")[0]
    token = csrf_token(unescape(page))
    status, _, headers = fetch(
        f"{url}actions/cancel/{waiting}",
        "ann:s3cret",
        {"csrf_token": token, "reason": "from the command"},
        cookie,
    )
    assert status == 303, headers
    reach(harness, waiting, "cancelled")
    assert [(a.action, a.actor) for a in harness.romancy.operator_actions(waiting)] == [
        ("cancel", "ann")
    ]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_command_allows_actions_only_behind_a_login(harness: Harness) -> None:
    context = CLIContext(app=harness.app, no_color=True, workdir=None)

    def run(*args: str) -> tuple[int, str]:
        done = CliRunner().invoke(romancy_command, ["dashboard", *args], obj=context)
        return done.exit_code, done.output

    code, output = run("--allow-actions")
    assert code == 2 and "--allow-actions needs --basic-auth USER:PASSWORD or --token T" in output
    code, output = run("--allow-actions", "--read-only", "--token", "t")
    assert code == 2 and "exclude each other" in output
    code, output = run("--basic-auth", "ann", "--allow-actions")
    assert code == 2 and "--basic-auth takes user:password" in output


def test_the_example_project_s_dashboard_serves_its_sagas(
    pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``celery -A example_project.celery_app romancy dashboard``, as its README says."""
    example = import_example(pg_url)
    folder = tmp_path_factory.mktemp("example-dashboard")
    worker = example_worker(pg_url, folder, "dashboard-example-worker")
    try:
        instance_id = example.romancy.start_workflow("order_processing", order("DASH-1"))
        assert example.romancy.wait(instance_id, timeout=60).status == "completed"
    finally:
        worker.stop()
        redis_client().delete(QUEUE)
    env = {**os.environ, **example_env(pg_url), "PYTHONPATH": str(ROOT)}
    argv = celery("example_project.celery_app", "romancy", "dashboard", "--port", str(free_port()))
    dashboard = ServiceProcess("example-dashboard", argv, env, folder)
    dashboard.start(log_says("Romancy dashboard on http://"))
    try:
        url = re.search(r"(http://\S+/)", dashboard.log())
        assert url is not None
        status, page, _ = fetch(url.group(1))
        assert status == 200 and instance_id in page
        status, page, _ = fetch(f"{url.group(1)}instances/{instance_id}")
        assert status == 200
        steps = [step for _, _, step in entries(unescape(page))]
        assert steps == ["reserve_inventory:1", "process_payment:1", "ship_order:1"]
        assert 'id="actions"' not in page  # read-only unless --allow-actions
    finally:
        dashboard.stop()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_without_a_login_the_command_answers_only_to_a_loopback_host(harness: Harness) -> None:
    argv = celery("tests.worker_app", "romancy", "dashboard", "--port", "0")
    process = ServiceProcess("open-dashboard", argv, harness._env(), harness.folder)
    process.start(log_says("Romancy dashboard on http://"), timeout=60)
    try:
        found = re.search(r"Romancy dashboard on (http://\S+/)", process.log())
        assert found is not None
        url, port = found.group(1), urllib.parse.urlsplit(found.group(1)).port
        assert fetch(f"{url}api/instances")[0] == 200
        assert fetch(f"{url}api/instances", host=f"localhost:{port}")[0] == 200
        # A page whose name was pointed at 127.0.0.1 (DNS rebinding) sends its own name.
        status, body, _ = fetch(f"{url}api/instances", host=f"rebound.example:{port}")
        assert status == 403 and "loopback address only" in body
    finally:
        process.stop()


def test_static_files_are_served_by_their_own_name_only(harness: Harness) -> None:
    dashboard = Dashboard(harness.romancy)
    assert dashboard.handle(Request("GET", "/static/dashboard.css")).status == 200
    # The path arrives decoded: a name still encoded once more names no file (not a 500).
    for name in ("dashboard%2Ecss", "..%2Fapp.py", "app.py", "nothing.css"):
        assert dashboard.handle(Request("GET", f"/static/{name}")).status == 404, name


def test_a_csrf_secret_that_is_no_bytes_or_empty_is_refused_at_the_call(harness: Harness) -> None:
    for secret in ("text", b""):
        with pytest.raises(ConfigurationError, match="secret must be bytes, not empty"):
            Dashboard(harness.romancy, secret=secret)  # type: ignore[arg-type]
    Dashboard(harness.romancy, secret=b"shared by every process")


def test_an_instance_asked_for_by_id_passes_the_other_filters_too(harness: Harness) -> None:
    r = harness.romancy
    instance_id = r.start_workflow("instant", 1, search={"order_id": "ORD-1"})
    created = r.get_instance(instance_id).created_at
    dashboard = Dashboard(r)

    def listed(**query: str) -> list[str]:
        asked = Request("GET", "/api/instances", query={"id": instance_id, **query})
        answer = dashboard.handle(asked)
        assert answer.status == 200, answer.body
        return [i["instance_id"] for i in json.loads(answer.body)["instances"]]

    later = (created + timedelta(seconds=1)).isoformat()
    assert listed() == [instance_id]
    assert listed(search="order_id=ORD-1", created_before=later) == [instance_id]
    assert listed(search="order_id=ORD-2") == []
    assert listed(created_after=later) == []
    assert listed(created_before=created.isoformat()) == []


def test_a_step_s_flower_link_keeps_its_task_id_in_one_path_segment() -> None:
    from celery_romancy.contrib.dashboard.instance_page import _task

    link = _task("a/../../x?y#z", "http://flower:5555/")
    assert 'href="http://flower:5555/task/a%2F..%2F..%2Fx%3Fy%23z"' in link
