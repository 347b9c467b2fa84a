"""The Django admin's workflow instances, through Django's test client, on this project.

Run by ``tests/test_django_admin.py`` in a pytest process of its own (Django is set up
once per process, and the other Django tests run with the example project's settings),
once with the history in Django's own SQLite database and once in another database
(``SHOP_HISTORY_URL`` -> ``CELERY_ROMANCY_DATABASE_URL``). A real worker runs the steps.
Not named ``test_*.py``: a plain ``pytest`` run of the suite does not collect it.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from html import unescape
from pathlib import Path
from typing import Any

import django
from django.test.utils import setup_test_environment

django.setup()
setup_test_environment()  # as Django's test runner: "testserver" allowed, response.context

import pytest  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from django.contrib import admin  # noqa: E402
from django.contrib.admin.models import LogEntry  # noqa: E402
from django.contrib.admin.utils import quote  # noqa: E402
from django.contrib.auth.models import Permission, User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402
from proj.celery import romancy  # noqa: E402
from shop.tasks import booking, flag, party_check  # noqa: E402

from celery_romancy.contrib.django.models import WorkflowInstance  # noqa: E402
from celery_romancy.storage import schema  # noqa: E402
from celery_romancy.storage.schema import utcnow  # noqa: E402
from tests.ledger import wait_for  # noqa: E402
from tests.processes import ServiceProcess, celery, log_says  # noqa: E402
from tests.services import redis_client  # noqa: E402

PROJECT = Path(__file__).resolve().parent
LIST_URL = "/admin/celery_romancy/workflowinstance/"


def detail_url(instance_id: str) -> str:
    return f"{LIST_URL}{quote(instance_id)}/change/"


@pytest.fixture(scope="module")
def migrated() -> None:
    call_command("migrate", verbosity=0)  # auth, sessions, admin log: Django's database
    romancy.migrate()  # the history: Django's database or CELERY_ROMANCY_DATABASE_URL


@pytest.fixture(scope="module")
def stuck_booking(migrated: None) -> str:
    """A booking started while no worker ran, whose first step's message was lost: it
    stays pending until someone resumes it."""
    instance_id = romancy.start_workflow(booking, "S1", search={"seat": "S1"})
    redis_client(os.environ["SHOP_BROKER_URL"]).delete(os.environ["SHOP_QUEUE"])
    return instance_id


@pytest.fixture(scope="module")
def worker(stuck_booking: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    name = f"admin-{uuid.uuid4().hex[:6]}@localhost"
    process = ServiceProcess(
        "admin-worker",
        celery("proj", "worker", "-c", "2", "-l", "INFO", "-n", name, "--without-mingle"),
        os.environ,
        tmp_path_factory.mktemp("worker"),
        cwd=PROJECT,
    ).start(log_says(" ready."))
    yield
    process.stop()
    redis_client(os.environ["SHOP_BROKER_URL"]).delete(os.environ["SHOP_QUEUE"])


def user(name: str, *, staff: bool, superuser: bool = False, perms: tuple[str, ...] = ()) -> User:
    found, _ = User.objects.get_or_create(
        username=name, defaults={"is_staff": staff, "is_superuser": superuser}
    )
    found.user_permissions.set(Permission.objects.filter(codename__in=perms))
    return found


@pytest.fixture(scope="module")
def operator(migrated: None) -> Client:
    """A staff user with every permission, logged in."""
    client = Client()
    client.force_login(user("operator", staff=True, superuser=True))
    return client


def start_booking(seat: str) -> str:
    return romancy.start_workflow(booking, seat, search={"seat": seat})


def wait_status(instance_id: str, status: str, timeout: float = 60) -> None:
    def reached() -> bool:
        return romancy.get_instance(instance_id).status == status

    wait_for(reached, timeout, f"{instance_id} to be {status}")


def page(client: Client, url: str, **params: str) -> str:
    response = client.get(url, params)
    assert response.status_code == 200, response.content[:2000]
    return unescape(response.content.decode())


def listed(client: Client, **params: str) -> list[str]:
    """The instance ids the list shows, in its order."""
    html = page(client, LIST_URL, **params)
    return re.findall(r'<th class="field-instance_id"><a href="[^"]*">([^<]*)</a>', html)


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


def post_action(client: Client, url: str, action: str, *selected: str, **extra: str) -> Any:
    data: dict[str, Any] = {"action": action, **extra}
    if selected:
        data["_selected_action"] = list(selected)
    return client.post(url, data, follow=True)


# -- who may see and act ---------------------------------------------------------------


def test_only_staff_with_permission_see_the_instances_and_only_change_acts(
    worker: None, operator: Client
) -> None:
    instance_id = start_booking(f"P-{uuid.uuid4().hex[:6]}")
    wait_status(instance_id, "waiting_for_event")
    anonymous = Client()
    for url in (LIST_URL, detail_url(instance_id)):
        response = anonymous.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]

    customer = Client()
    customer.force_login(user("customer", staff=False))
    response = customer.get(LIST_URL)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    refused = customer.post(LIST_URL, {"action": "cancel", "_selected_action": [instance_id]})
    assert refused.status_code == 302

    no_perms = Client()
    no_perms.force_login(user("intern", staff=True))
    assert no_perms.get(LIST_URL).status_code == 403
    assert no_perms.get(detail_url(instance_id)).status_code == 403
    assert "Workflow instances" not in page(no_perms, "/admin/")

    viewer = Client()
    viewer.force_login(user("viewer", staff=True, perms=("view_workflowinstance",)))
    assert "Workflow instances" in page(viewer, "/admin/")
    assert instance_id in listed(viewer)
    detail = page(viewer, detail_url(instance_id))
    assert 'id="romancy-actions"' not in detail  # no buttons for a view-only user
    assert 'name="action"' not in page(viewer, LIST_URL)
    for url in (LIST_URL, detail_url(instance_id)):
        response = viewer.post(url, {"action": "cancel", "_selected_action": [instance_id]})
        assert response.status_code == 403
    assert romancy.get_instance(instance_id).cancel_reason is None

    # The operator may: the admin index lists the model, the instance has its buttons;
    # but an action posted without the form's CSRF token is refused.
    assert "Workflow instances" in page(operator, "/admin/")
    assert 'value="cancel"' in page(operator, detail_url(instance_id))
    forged = Client(enforce_csrf_checks=True)
    forged.force_login(User.objects.get(username="operator"))
    response = forged.post(LIST_URL, {"action": "cancel", "_selected_action": [instance_id]})
    assert response.status_code == 403
    assert romancy.get_instance(instance_id).cancel_reason is None
    romancy.cancel(instance_id, "test over")


# -- the list ------------------------------------------------------------------------------


def test_the_list_filters_by_status_workflow_and_date(worker: None, operator: Client) -> None:
    waiting = start_booking(f"L-{uuid.uuid4().hex[:6]}")
    party = romancy.start_workflow(party_check, ["L1", "L2"])
    old = start_booking(f"O-{uuid.uuid4().hex[:6]}")
    wait_status(waiting, "waiting_for_event")
    wait_status(old, "waiting_for_event")
    assert romancy.result(party, timeout=60) == ["L1 ok", "L2 ok"]
    children = [c.instance_id for c in romancy.find_instances(parent=party)]
    assert len(children) == 2
    # One booking started 400 days ago (the history's own clock, moved back).
    with romancy.storage.transaction() as conn:
        t = schema.instances
        conn.execute(
            sa.update(t)
            .where(t.c.instance_id == old)
            .values(created_at=utcnow() - timedelta(days=400))
        )

    everything = listed(operator)
    assert {waiting, party, old, *children} <= set(everything)
    assert everything.index(waiting) < everything.index(old)  # newest first

    completed = listed(operator, status="completed")
    assert {party, *children} <= set(completed)
    assert waiting not in completed and old not in completed
    assert waiting in listed(operator, status="waiting_for_event")

    bookings = listed(operator, workflow="booking")
    assert waiting in bookings and old in bookings and party not in bookings
    assert set(listed(operator, workflow="party_check")) == {party}
    assert set(children) <= set(listed(operator, workflow="seat_check", status="completed"))

    for period in ("today", "7d", "month", "year"):
        shown = listed(operator, created=period)
        assert waiting in shown and party in shown, period
        assert old not in shown, period

    html = page(operator, LIST_URL, status="completed")
    assert 'class="selected"><a href="?status=completed"' in html  # the filter shows as chosen
    assert "Clear all filters" in html


def test_the_list_searches_by_id_and_business_key(worker: None, operator: Client) -> None:
    seat = f"K-{uuid.uuid4().hex[:6]}"
    instance_id = start_booking(seat)
    other = start_booking(f"K-{uuid.uuid4().hex[:6]}")
    assert listed(operator, q=instance_id) == [instance_id]
    assert listed(operator, q=instance_id[:12]) == [instance_id]  # the beginning of an id
    assert listed(operator, q=f"seat={seat}") == [instance_id]
    assert listed(operator, q=seat) == [instance_id]  # only the value
    assert listed(operator, q="seat=nobody") == []
    assert listed(operator, q="100%_") == []  # LIKE's wildcards are plain characters
    # The search keeps the filters, and the filters keep the search.
    assert listed(operator, q=f"seat={seat}", workflow="party_check") == []
    html = page(operator, LIST_URL, q=seat, workflow="booking")
    assert f'name="q" value="{seat}"' in html
    assert '<input type="hidden" name="workflow" value="booking">' in html
    for id_ in (instance_id, other):
        wait_status(id_, "waiting_for_event")
        romancy.cancel(id_, "test over")


def test_the_list_pages_newest_first(
    worker: None, operator: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = [start_booking(f"G-{uuid.uuid4().hex[:6]}") for _ in range(3)]
    monkeypatch.setattr(admin.site._registry[WorkflowInstance], "page_size", 2)
    first = listed(operator, workflow="booking")
    html = page(operator, LIST_URL, workflow="booking")
    assert '<a href="?workflow=booking&p=1">next' in html
    second = listed(operator, workflow="booking", p="1")
    assert '<a href="?workflow=booking">\u2039 previous</a>' in page(
        operator, LIST_URL, workflow="booking", p="1"
    )
    assert len(first) == 2 and len(second) == 2
    assert first == list(reversed(started))[:2]
    assert second[0] == started[0]
    for instance_id in started:
        wait_status(instance_id, "waiting_for_event")
        romancy.cancel(instance_id, "test over")


# -- one instance ------------------------------------------------------------------------------


def test_the_detail_page_shows_history_attempts_compensations_and_aware_times(
    worker: None, operator: Client
) -> None:
    seat = f"D-{uuid.uuid4().hex[:6]}"
    instance_id = start_booking(seat)
    wait_status(instance_id, "waiting_for_event")
    romancy.send_event("confirmation", "sold out", instance_id=instance_id)
    wait_status(instance_id, "failed")
    instance = romancy.get_instance(instance_id)
    html = page(operator, detail_url(instance_id))

    assert '<td class="field-status">failed</td>' in html
    assert f'Business key seat</th><td class="field-search">{seat}' in html
    # The history: each step, its outcome; the failed one with its traceback.
    rows = html.split('<tr class="romancy-history-row">')[1:]
    cells = [re.findall(r"<td>([^<]*)</td>", row) for row in rows]
    assert [(row[3], row[4]) for row in cells] == [
        ("reserve_seat", "1"),
        ("charge_card", "2"),  # through on its second attempt
        ("confirmation", "1"),
        ("issue_ticket", "1"),
    ]
    assert f"HOLD-{seat}" in rows[0] and f"PAY-{seat}" in rows[1]
    # When and where each activity ran: its start, duration and Celery task id.
    for row, event in zip(rows, romancy.get_history(instance_id), strict=True):
        if event.kind == "activity":
            assert event.started_at is not None and event.task_id
            assert f'datetime="{timezone.localtime(event.started_at).isoformat()}"' in row
            assert re.search(r"<td>\d+\.\d{3} s</td>", row)
            assert f"<td>{event.task_id}</td>" in row
    assert f"error celery_romancy.errors.TerminalError: seat {seat} was not confirmed" in rows[3]
    assert "Traceback (most recent call last)" in rows[3]
    # The attempt that failed before the retry.
    attempts = html.split('<tr class="romancy-attempt-row">')[1:]
    assert len(attempts) == 1
    assert "ConnectionError: the card service timed out" in attempts[0]
    # The compensation that undid the reservation.
    compensations = html.split('<tr class="romancy-compensation-row">')[1:]
    assert len(compensations) == 1
    assert "<td>release_seat</td>" in compensations[0] and "<td>done</td>" in compensations[0]
    # Times: aware, shown in the project's time zone (Asia/Tokyo), not as naive UTC.
    local_created = timezone.localtime(instance.created_at)
    assert local_created.utcoffset() == timedelta(hours=9)
    assert f'datetime="{local_created.isoformat()}"' in html
    assert local_created.strftime("%Y-%m-%d %H:%M:%S") in html and " JST" in html


def test_the_detail_page_links_children_and_parent(worker: None, operator: Client) -> None:
    party = romancy.start_workflow(party_check, ["C1", "C2"])
    assert romancy.result(party, timeout=60) == ["C1 ok", "C2 ok"]
    children = sorted(c.instance_id for c in romancy.find_instances(parent=party))
    html = page(operator, detail_url(party))
    assert html.count('<tr class="romancy-child-row">') == 2
    for child in children:
        assert f'<a href="{detail_url(child)}">{child}</a>' in html
    child_html = page(operator, detail_url(children[0]))  # ids with "/" and ":" in URLs
    assert f'<a href="{detail_url(party)}">{party}</a>' in child_html
    assert "check_seat" in child_html


def test_the_short_url_leads_to_the_page_and_an_unknown_id_to_the_list(
    worker: None, operator: Client
) -> None:
    # Django's short form of an object's URL leads to its page.
    party = romancy.start_workflow(party_check, [])
    response = operator.get(f"{LIST_URL}{quote(party)}/")
    assert response.status_code == 302 and response["Location"] == detail_url(party)
    response = operator.get(detail_url("no-such-instance"), follow=True)
    assert response.redirect_chain[-1][0] == LIST_URL
    assert "No workflow instance with id 'no-such-instance'." in messages_of(response)


# -- the actions ----------------------------------------------------------------------------------


def test_cancel_from_the_list_rolls_the_instances_back(worker: None, operator: Client) -> None:
    ids = [start_booking(f"X-{uuid.uuid4().hex[:6]}") for _ in range(2)]
    for instance_id in ids:
        wait_status(instance_id, "waiting_for_event")
    response = post_action(operator, f"{LIST_URL}?workflow=booking", "cancel", *ids)
    assert response.status_code == 200
    assert response.redirect_chain[-1][0] == f"{LIST_URL}?workflow=booking"
    assert f"Cancel requested for 2 workflow instances: {', '.join(ids)}" in messages_of(response)
    for instance_id in ids:
        wait_status(instance_id, "cancelled")
        instance = romancy.get_instance(instance_id)
        assert instance.cancel_reason == "cancelled by operator in the Django admin"
        undo = romancy.storage.get_compensations(instance_id)
        assert [(c.name, c.status) for c in undo] == [("release_seat", "done")]
        entry = LogEntry.objects.filter(object_id=instance_id).get()
        assert entry.user.username == "operator"
        assert entry.get_change_message() == "cancel: cancelled by operator in the Django admin"
        assert entry.get_admin_url() == detail_url(instance_id)

    # Again: each instance says why nothing happened; nothing changes.
    again = post_action(operator, LIST_URL, "cancel", ids[0])
    assert f"{ids[0]}: already being cancelled or rolled back; nothing to do" in messages_of(again)
    assert romancy.get_instance(ids[0]).status == "cancelled"
    nothing = post_action(operator, LIST_URL, "cancel")
    assert "Items must be selected in order to perform actions on them." in messages_of(nothing)


def test_cancel_from_the_detail_page_keeps_the_reason(worker: None, operator: Client) -> None:
    instance_id = start_booking(f"Y-{uuid.uuid4().hex[:6]}")
    wait_status(instance_id, "waiting_for_event")
    url = detail_url(instance_id)
    response = post_action(operator, url, "cancel", reason="customer called")
    assert response.redirect_chain[-1][0] == url
    wait_status(instance_id, "cancelled")
    assert romancy.get_instance(instance_id).cancel_reason == "customer called"
    html = page(operator, url)
    assert '<td class="field-cancel_reason">requested: customer called</td>' in html
    assert 'id="romancy-actions"' not in html  # nothing applies to a cancelled instance


def test_resume_sends_a_lost_step_again(worker: None, operator: Client, stuck_booking: str) -> None:
    assert romancy.get_instance(stuck_booking).status == "pending"
    assert 'value="resume"' in page(operator, detail_url(stuck_booking))
    response = post_action(operator, detail_url(stuck_booking), "resume")
    assert f"Resumed 1 workflow instance: {stuck_booking}" in messages_of(response)
    wait_status(stuck_booking, "waiting_for_event")  # its steps ran on the worker
    history = [e.name for e in romancy.get_history(stuck_booking)]
    assert history == ["reserve_seat", "charge_card"]
    refused = post_action(operator, LIST_URL, "resume", stuck_booking)
    assert any("only pending, running" in m for m in messages_of(refused))
    romancy.cancel(stuck_booking, "test over")


def test_retry_compensation_finishes_a_parked_rollback(worker: None, operator: Client) -> None:
    seat = f"Z-{uuid.uuid4().hex[:6]}"
    instance_id = start_booking(seat)
    wait_status(instance_id, "waiting_for_event")
    down = flag(f"seat-service-down-{seat}")
    down.touch()
    romancy.send_event("confirmation", "declined", instance_id=instance_id)
    wait_status(instance_id, "compensation_failed")
    html = page(operator, detail_url(instance_id))
    assert re.search(r'class="field-compensation_error">failed: \S*ConnectionError: the seat', html)
    assert 'value="retry_compensation"' in html and 'value="cancel"' not in html

    down.unlink()  # the seat service is back
    response = post_action(operator, LIST_URL, "retry_compensation", instance_id)
    assert f"Compensation retried for 1 workflow instance: {instance_id}" in messages_of(response)
    wait_status(instance_id, "failed")
    undo = romancy.storage.get_compensations(instance_id)
    assert [(c.name, c.status) for c in undo] == [("release_seat", "done")]
    entry = LogEntry.objects.filter(object_id=instance_id).get()
    assert entry.get_change_message() == "retry compensation"


def test_the_history_database_is_the_configured_one(migrated: None) -> None:
    """What the two runs differ in: where the history lives."""
    configured = os.environ.get("SHOP_HISTORY_URL")
    url = romancy.settings.database_url
    if configured:
        assert url == configured
        assert "romancy_instances" not in connection.introspection.table_names()
    else:
        assert url == f"sqlite:///{os.environ['SHOP_SQLITE_PATH']}"
        assert "romancy_instances" in connection.introspection.table_names()
