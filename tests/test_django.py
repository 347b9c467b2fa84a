"""Django: the example shop's views (Django test client, real worker process), starting a
workflow on commit, settings from Django, and ``manage.py romancy_migrate``."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery, signals
from django.core.management import CommandError, call_command
from django.db import connection, connections, transaction
from django.test import Client, override_settings

from celery_romancy import (
    ConfigurationError,
    InvalidArgumentsError,
    SerializationError,
    UnknownWorkflowError,
)
from celery_romancy.contrib.django import (
    DjangoRomancy,
    database_url_from_django,
    sqlalchemy_url,
    start_workflow_on_commit,
)

from .example_stack import QUEUE, example_env, example_worker, import_example, order
from .ledger import wait_for
from .processes import ROOT, ServiceProcess, celery, log_says
from .services import REDIS_URL, redis_client


class RollbackError(Exception):
    pass


@pytest.fixture(scope="module")
def shop(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The example project imported here (views, models), its tables, and a worker."""
    redis = redis_client()
    module = import_example(pg_url)
    call_command("migrate", verbosity=0)
    worker = example_worker(pg_url, tmp_path_factory.mktemp("django"), "django-worker")
    yield module
    worker.stop()
    redis.delete(QUEUE)
    connections.close_all()


@contextmanager
def published() -> Iterator[list[str]]:
    """The names of the tasks this process publishes while the block runs."""
    names: list[str] = []

    def record(sender: Any = None, **_: Any) -> None:
        names.append(str(sender))

    signals.before_task_publish.connect(record, weak=False)
    try:
        yield names
    finally:
        signals.before_task_publish.disconnect(record)


def post_order(client: Client, payload: Any) -> Any:
    return client.post("/orders", data=json.dumps(payload), content_type="application/json")


def test_checkout_view_starts_the_saga_after_commit_and_shows_its_status(
    shop: ModuleType,
) -> None:
    from example_project.django_shop.models import Checkout

    client = Client()
    order_id = f"ORD-{uuid.uuid4().hex[:8]}"
    with published() as names:
        response = post_order(client, order(order_id))
    assert response.status_code == 202, response.content
    instance_id = response.json()["instance_id"]
    assert names == ["reserve_inventory"]  # one message: the first step
    assert Checkout.objects.get(order_id=order_id).instance_id == instance_id

    def finished() -> bool:
        return bool(client.get(f"/orders/{order_id}").json()["finished"])

    wait_for(finished, 60, "the order saga to finish on the worker")
    status = client.get(f"/orders/{order_id}").json()
    assert status["instance_id"] == instance_id
    assert status["status"] == "completed"
    assert status["output"]["total"] == "109.97"
    assert status["output"]["tracking_number"] == f"TRACK-{order_id}"
    assert client.get("/orders/ORD-none").status_code == 404
    # The shop's ready-made status endpoint: its steps with timings.
    saga = client.get(f"/sagas/{instance_id}").json()
    assert [step["step_id"] for step in saga["steps"]][:1] == ["reserve_inventory:1"]
    assert client.get("/sagas/no-such-instance").status_code == 404


def test_a_rolled_back_checkout_starts_nothing(shop: ModuleType) -> None:
    from example_project.django_shop.models import Checkout

    client = Client()
    order_id = f"ORD-{uuid.uuid4().hex[:8]}"
    assert post_order(client, order(order_id)).status_code == 202
    romancy = shop.romancy

    def instance_ids() -> set[str]:
        return {i.instance_id for i in romancy.find_instances(limit=10_000)}

    before = instance_ids()

    # The same order again: the view's INSERT fails, its transaction rolls back.
    with published() as names:
        response = post_order(client, order(order_id))
    assert response.status_code == 409
    assert names == []
    assert instance_ids() == before
    assert Checkout.objects.filter(order_id=order_id).count() == 1

    with published() as names:
        assert post_order(client, {"order_id": "ORD-bad", "items": []}).status_code == 400
    assert names == []


def test_the_workflow_starts_only_when_the_transaction_commits(shop: ModuleType) -> None:
    romancy, orders = shop.romancy, sys.modules["example_project.orders"]
    sample = orders.OrderInput(
        "ORD-tx", "a@b.jp", [orders.OrderItem("I-1", 1, orders.Decimal("5"))], "Tokyo"
    )
    with published() as names:
        with transaction.atomic():
            instance_id = start_workflow_on_commit(romancy, orders.order_processing, sample)
            # Later changes to the caller's objects do not reach the workflow.
            sample.shipping_address = "changed after the call"
            assert romancy.storage.get_instance(instance_id) is None
            assert names == []
        assert names == ["reserve_inventory"]
    instance = romancy.get_instance(instance_id)
    assert instance.input_data["order"]["shipping_address"] == "Tokyo"
    assert romancy.wait(instance_id, timeout=60).status == "completed"

    with published() as names, pytest.raises(RollbackError), transaction.atomic():
        rolled_back = start_workflow_on_commit(
            romancy, orders.order_processing, sample, instance_id=f"rb-{uuid.uuid4().hex}"
        )
        raise RollbackError
    assert names == []
    assert romancy.storage.get_instance(rolled_back) is None


def test_bad_arguments_raise_at_the_call_and_register_nothing(shop: ModuleType) -> None:
    romancy, orders = shop.romancy, sys.modules["example_project.orders"]
    with transaction.atomic():
        with pytest.raises(InvalidArgumentsError):
            start_workflow_on_commit(romancy, orders.order_processing)
        with pytest.raises(SerializationError):
            start_workflow_on_commit(romancy, orders.order_processing, object())
        with pytest.raises(UnknownWorkflowError):
            start_workflow_on_commit(romancy, "no_such_workflow", 1)
        with pytest.raises(InvalidArgumentsError):
            start_workflow_on_commit(romancy, orders.order_processing, 1, instance_id="")
        assert connection.run_on_commit == []


def test_settings_come_from_django_settings_under_the_celery_namespace(
    shop: ModuleType, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    with override_settings(CELERY_ROMANCY_DATABASE_URL=url, CELERY_ROMANCY_LEASE_TIMEOUT=42):
        app = Celery("django_settings_test", set_as_current=False)
        app.config_from_object("django.conf:settings", namespace="CELERY")
        romancy = DjangoRomancy(app)
        assert romancy.settings.database_url == url
        assert romancy.settings.lease_timeout == 42


def test_history_defaults_to_the_django_database(shop: ModuleType, pg_url: str) -> None:
    app = Celery("django_history_test", set_as_current=False)
    app.config_from_object("django.conf:settings", namespace="CELERY")
    romancy = DjangoRomancy(app)

    @romancy.workflow("django_instant")
    def instant(ctx: Any, value: int) -> int:
        return value * 2

    assert romancy.settings.database_url == database_url_from_django() == pg_url
    instance_id = romancy.start_workflow(instant, 21)  # no step: it ends at once
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT status, output_data FROM romancy_instances WHERE instance_id = %s",
            [instance_id],
        )
        status, output = cursor.fetchone()
    assert status == "completed"
    assert (json.loads(output) if isinstance(output, str) else output) == 42
    romancy.storage.dispose()


def test_django_database_entries_become_sqlalchemy_urls(tmp_path: Path) -> None:
    pg = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "shop",
        "USER": "shop",
        "PASSWORD": "p@ss word",
        "HOST": "db.internal",
        "PORT": "6432",
        "OPTIONS": {"sslmode": "require", "pool": {"min_size": 2}},
    }
    url = sa.make_url(sqlalchemy_url(pg))
    assert (url.drivername, url.username, url.password) == ("postgresql", "shop", "p@ss word")
    assert (url.host, url.port, url.database) == ("db.internal", 6432, "shop")
    assert dict(url.query) == {"sslmode": "require"}  # libpq options only
    socket = {**pg, "HOST": "/var/run/postgresql", "PORT": "", "PASSWORD": "", "OPTIONS": {}}
    url = sa.make_url(sqlalchemy_url(socket))
    assert (url.host, url.password) == (None, None)
    assert dict(url.query) == {"host": "/var/run/postgresql"}
    sqlite = {"ENGINE": "django.db.backends.sqlite3", "NAME": tmp_path / "db.sqlite3"}
    assert sqlalchemy_url(sqlite) == f"sqlite:///{tmp_path / 'db.sqlite3'}"
    memory = {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
    with pytest.raises(ConfigurationError, match="in-memory"):
        sqlalchemy_url(memory)
    with pytest.raises(ConfigurationError, match="PostgreSQL or SQLite"):
        sqlalchemy_url({"ENGINE": "django.db.backends.mysql", "NAME": "shop"})


def test_romancy_migrate_command(shop: ModuleType, pg_url: str, tmp_path: Path) -> None:
    target = tmp_path / "explicit.db"
    out = io.StringIO()
    call_command("romancy_migrate", database_url=f"sqlite:///{target}", stdout=out)
    assert out.getvalue().startswith("history schema at revision ")
    assert "romancy_instances" in _tables(target)
    with pytest.raises(CommandError, match="unsupported history database"):
        call_command("romancy_migrate", database_url="mysql://shop@db/shop")

    # As an operator runs it: the project's Celery app (imported by the project package,
    # as Celery's Django guide does) tells which database.
    configured = tmp_path / "configured.db"
    env = {
        **os.environ,
        **example_env(pg_url),
        "ROMANCY_DATABASE_URL": f"sqlite:///{configured}",
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "example_project" / "manage.py"), "romancy_migrate"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"sqlite:///{configured}" in done.stdout
    assert "romancy_instances" in _tables(configured)


def test_the_documented_django_layout(tmp_path: Path) -> None:
    """docs/integrations.md's layout as a project (tests/django_project): the history in
    Django's own database, a prefork worker using the ORM, romancy_migrate, the CLI."""
    redis = redis_client()
    project = ROOT / "tests" / "django_project"
    database = tmp_path / "shop.sqlite3"
    queue = f"romancy-layout-{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "SHOP_SQLITE_PATH": str(database),
        "SHOP_BROKER_URL": REDIS_URL,
        "SHOP_QUEUE": queue,
        "DJANGO_SETTINGS_MODULE": "proj.settings",
        "PYTHONPATH": f"{project}{os.pathsep}{ROOT}",
    }

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            argv, cwd=project, env=env, capture_output=True, text=True, timeout=90, check=False
        )
        assert done.returncode == 0, done.stderr
        return done

    migrated = run(sys.executable, "manage.py", "romancy_migrate")
    assert f"(sqlite:///{database})" in migrated.stdout  # DATABASES["default"]
    name = f"layout-{uuid.uuid4().hex[:6]}@localhost"
    worker = ServiceProcess(
        "layout-worker",
        celery("proj", "worker", "-c", "2", "-l", "INFO", "-n", name, "--without-mingle"),
        env,
        tmp_path,
        cwd=project,
    ).start(log_says(" ready."))
    try:
        script = (
            "import django; django.setup()\n"
            "from proj.celery import romancy\n"
            "from shop.tasks import greeting\n"
            "print(romancy.result(romancy.start_workflow(greeting, 'Ada'), timeout=60))\n"
        )
        started = run(sys.executable, "-c", script)
        assert started.stdout.strip() == "hello Ada, instance 1"
        listing = run(*celery("proj", "romancy", "list", "--json"))
        assert [(i["workflow"], i["status"]) for i in json.loads(listing.stdout)] == [
            ("greeting", "completed")
        ]
    finally:
        worker.stop()
        redis.delete(queue)


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


# -- JSON views under Django's default protections; the CLI with a django-db backend -------

DEFAULT_MIDDLEWARE = [  # a new project's, less sessions, auth and messages (not installed)
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]


def test_the_json_views_pass_csrf_checks_and_answer_404_for_a_missing_saga(
    shop: ModuleType,
) -> None:
    """A JSON POST carries no CSRF token; the README's and the example's checkout view
    is exempt. A saved order whose saga never started is a 404, not a 500."""
    from example_project.django_shop.models import Checkout

    with override_settings(MIDDLEWARE=DEFAULT_MIDDLEWARE):
        client = Client(enforce_csrf_checks=True, raise_request_exception=False)
        response = post_order(client, order(f"ORD-{uuid.uuid4().hex[:8]}"))
        assert response.status_code == 202, response.content

        # Saved with its order, but the start after the commit never happened.
        lost = f"ORD-{uuid.uuid4().hex[:8]}"
        Checkout.objects.create(order_id=lost, instance_id=f"never-started-{lost}")
        missing = client.get(f"/orders/{lost}")
        assert missing.status_code == 404
        assert missing.json() == {"error": f"order {lost} has no saga"}


def test_the_cli_sets_django_up_for_a_django_db_result_backend(tmp_path: Path) -> None:
    """With django-celery-results' ``django-db`` backend, the first publish imports its
    models: ``celery -A proj romancy resume`` must have set Django up by then."""
    redis = redis_client()
    project = ROOT / "tests" / "django_project"
    queue = f"romancy-results-{uuid.uuid4().hex[:10]}"
    (tmp_path / "results_settings.py").write_text(
        "from proj.settings import *  # noqa: F403\n"
        "INSTALLED_APPS = [*INSTALLED_APPS, 'django_celery_results']  # noqa: F405\n"
        "CELERY_RESULT_BACKEND = 'django-db'\n"
    )
    env = {
        **os.environ,
        "SHOP_SQLITE_PATH": str(tmp_path / "shop.sqlite3"),
        "SHOP_BROKER_URL": REDIS_URL,
        "SHOP_QUEUE": queue,
        "DJANGO_SETTINGS_MODULE": "results_settings",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(project), str(ROOT)]),
    }

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, cwd=project, env=env, capture_output=True, text=True, timeout=90, check=False
        )

    script = (
        "import django; django.setup()\n"
        "from proj.celery import romancy\n"
        "from shop.tasks import greeting\n"
        "print(romancy.start_workflow(greeting, 'Ada'))\n"
    )
    try:
        started = run(sys.executable, "-c", script)
        assert started.returncode == 0, started.stderr
        redis.delete(queue)  # no worker: the step's message is dropped, resume sends it again
        done = run(*celery("proj", "romancy", "resume", started.stdout.strip()))
        assert done.returncode == 0, done.stderr
        assert "AppRegistryNotReady" not in done.stderr
        assert "could not publish" not in done.stderr
        assert redis.llen(queue) == 1
    finally:
        redis.delete(queue)
