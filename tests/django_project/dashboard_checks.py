"""The dashboard mounted in Django (``celery_romancy.contrib.django.urls``), through
Django's test client, with a real worker: who may see it, who may act, and Django's
own CSRF protection on the actions.

Run by ``tests/test_dashboard_django.py`` in a pytest process of its own, like
``admin_checks.py`` (Django is set up once per process). Not named ``test_*.py``.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from urllib.parse import quote

import django
from django.test.utils import setup_test_environment

django.setup()
setup_test_environment()

import pytest  # noqa: E402
from django.contrib.auth.models import Permission, User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402
from proj.celery import romancy  # noqa: E402
from shop.tasks import booking  # noqa: E402

from tests.ledger import wait_for  # noqa: E402
from tests.processes import ServiceProcess, celery, log_says  # noqa: E402
from tests.services import redis_client  # noqa: E402

PROJECT = Path(__file__).resolve().parent
ROOT_URL = "/romancy/"


def instance_url(instance_id: str) -> str:
    return f"{ROOT_URL}instances/{quote(instance_id, safe='')}"


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    call_command("migrate", verbosity=0)
    romancy.migrate()
    name = f"dashboard-{uuid.uuid4().hex[:6]}@localhost"
    process = ServiceProcess(
        "dashboard-worker",
        celery("proj", "worker", "-c", "2", "-l", "INFO", "-n", name, "--without-mingle"),
        os.environ,
        tmp_path_factory.mktemp("worker"),
        cwd=PROJECT,
    ).start(log_says(" ready."))
    yield
    process.stop()
    redis_client(os.environ["SHOP_BROKER_URL"]).delete(os.environ["SHOP_QUEUE"])


def client_of(name: str, *, staff: bool, perms: tuple[str, ...] = (), csrf: bool = False) -> Client:
    user, _ = User.objects.get_or_create(username=name, defaults={"is_staff": staff})
    user.user_permissions.set(Permission.objects.filter(codename__in=perms))
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


def waiting_booking() -> str:
    instance_id = romancy.start_workflow(booking, f"D-{uuid.uuid4().hex[:6]}")

    def waits() -> bool:
        return romancy.get_instance(instance_id).status == "waiting_for_event"

    wait_for(waits, 60, f"{instance_id} to wait for its confirmation")
    return instance_id


def test_only_staff_with_permission_see_it_and_only_change_acts(worker: None) -> None:
    instance_id = waiting_booking()
    for url in (ROOT_URL, instance_url(instance_id), f"{ROOT_URL}api/instances"):
        response = Client().get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]
    customer = client_of("d-customer", staff=False)
    assert customer.get(ROOT_URL).status_code == 302
    intern = client_of("d-intern", staff=True)
    assert intern.get(ROOT_URL).status_code == 403

    viewer = client_of("d-viewer", staff=True, perms=("view_workflowinstance",))
    page = unescape(viewer.get(ROOT_URL).content.decode())
    assert instance_id in page
    assert f'href="{instance_url(instance_id)}"' in page  # links under the mount point
    detail = unescape(viewer.get(instance_url(instance_id)).content.decode())
    assert 'id="timeline"' in detail and 'id="actions"' not in detail
    # charge_card's first attempt failed and was retried: folded under its step.
    assert "1 failed attempt" in detail and "the card service timed out" in detail
    refused = viewer.post(f"{ROOT_URL}actions/cancel/{quote(instance_id, safe='')}")
    assert refused.status_code == 403
    assert romancy.get_instance(instance_id).cancel_reason is None
    assert romancy.operator_actions(instance_id) == []


def test_an_operator_acts_with_djangos_csrf_token_and_is_recorded(worker: None) -> None:
    instance_id = waiting_booking()
    operator = client_of("d-operator", staff=True, perms=("change_workflowinstance",), csrf=True)
    page = unescape(operator.get(instance_url(instance_id)).content.decode())
    assert 'id="action-send-event"' in page
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert found is not None
    action = f"{ROOT_URL}actions/send-event/{quote(instance_id, safe='')}"
    fields = {"event_type": "confirmation", "data": '"confirmed"'}
    assert operator.post(action, fields).status_code == 403  # no token: Django refuses
    done = operator.post(action, {**fields, "csrfmiddlewaretoken": found.group(1)})
    assert done.status_code == 303
    assert done["Location"] == f"{instance_url(instance_id)}?done=send-event"

    def completed() -> bool:
        return romancy.get_instance(instance_id).status == "completed"

    wait_for(completed, 60, f"{instance_id} to complete")
    assert [(a.action, a.actor) for a in romancy.operator_actions(instance_id)] == [
        ("send_event", "d-operator")
    ]
    api = operator.get(f"{ROOT_URL}api/instances/{quote(instance_id, safe='')}").json()
    assert api["instance"]["output_data"] == f"TICKET-{api['instance']['input_data']['seat']}"
