"""Flask: the example shop's views (Flask test client, real worker process), the
``init_app`` extension, the status blueprint, and activities run in the app's context."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from unittest import mock

import pytest
from celery import Celery
from flask import Flask

from celery_romancy import ConfigurationError, Romancy
from celery_romancy.contrib.flask import FlaskRomancy, current_romancy, status_blueprint
from celery_romancy.contrib.status import status_of

from .example_stack import QUEUE, example_worker, import_example, order
from .ledger import wait_for
from .processes import ROOT, ServiceProcess, celery, free_port, http, log_says
from .services import REDIS_URL, redis_client


@pytest.fixture(scope="module")
def shop(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    redis = redis_client()
    import_example(pg_url)
    from example_project import flask_shop

    worker = example_worker(pg_url, tmp_path_factory.mktemp("flask"), "flask-worker")
    yield flask_shop
    worker.stop()
    redis.delete(QUEUE)


def test_view_starts_the_saga_and_reads_its_status(shop: ModuleType) -> None:
    client = shop.create_app({"TESTING": True}).test_client()
    order_id = f"ORD-{uuid.uuid4().hex[:8]}"
    response = client.post("/orders", json=order(order_id))
    assert response.status_code == 202, response.get_data(as_text=True)
    instance_id = response.get_json()["instance_id"]
    assert instance_id == f"order-{order_id}"

    def finished() -> bool:
        return bool(client.get(f"/orders/{instance_id}").get_json()["finished"])

    wait_for(finished, 60, "the order saga to finish on the worker")
    status = client.get(f"/orders/{instance_id}").get_json()
    assert status["status"] == "completed"
    assert status["workflow"] == "order_processing"
    assert status["output"]["tracking_number"] == f"TRACK-{order_id}"
    assert status["error"] is None

    # A retried POST gets the same saga back, and nothing runs twice.
    again = client.post("/orders", json=order(order_id))
    assert again.status_code == 202
    assert again.get_json()["instance_id"] == instance_id
    assert client.get(f"/orders/{instance_id}").get_json()["status"] == "completed"
    # The shop's ready-made status endpoint: its steps with timings.
    saga = client.get(f"/sagas/{instance_id}").get_json()
    assert [step["step_id"] for step in saga["steps"]][:1] == ["reserve_inventory:1"]
    assert client.get("/sagas/no-such-instance").status_code == 404


def test_bad_requests_start_nothing(shop: ModuleType) -> None:
    client = shop.create_app({"TESTING": True}).test_client()
    romancy = shop.romancy
    before = len(romancy.find_instances(limit=10_000))
    assert client.post("/orders", json={"order_id": "ORD-x", "items": []}).status_code == 400
    assert client.post("/orders", data="not json").status_code == 400
    assert len(romancy.find_instances(limit=10_000)) == before
    assert client.get("/orders/no-such-instance").status_code == 404
    assert client.get("/health").get_json() == {"ok": True}


def test_init_app_fills_unset_romancy_settings_from_the_flask_config(tmp_path: Path) -> None:
    celery_app = Celery("flask_config_test", set_as_current=False)
    celery_app.conf.romancy_worker_id = "set-in-celery"
    romancy = Romancy(celery_app)
    ext = FlaskRomancy(romancy)
    app = Flask("flask_config_test")
    app.config.update(
        ROMANCY_DATABASE_URL=f"sqlite:///{tmp_path / 'history.db'}",
        ROMANCY_LEASE_TIMEOUT=42,
        ROMANCY_WORKER_ID="set-in-flask",  # the Celery config already has one: it wins
    )
    ext.init_app(app)
    assert app.extensions["celery_romancy"] is ext
    assert romancy.settings.database_url == f"sqlite:///{tmp_path / 'history.db'}"
    assert romancy.settings.lease_timeout == 42
    assert romancy.settings.worker_id == "set-in-celery"
    with app.app_context():
        assert current_romancy() is romancy


def test_init_app_reports_mistakes() -> None:
    romancy = Romancy(Celery("flask_mistakes_test", set_as_current=False))
    with pytest.raises(ConfigurationError, match="needs a Romancy"):
        FlaskRomancy().init_app(Flask("a"))
    typo = Flask("b")
    typo.config["ROMANCY_DATABSE_URL"] = "sqlite://"
    with pytest.raises(ConfigurationError, match="ROMANCY_DATABSE_URL"):
        FlaskRomancy(romancy, typo)
    bare = Flask("c")
    with bare.app_context(), pytest.raises(ConfigurationError, match="init_app"):
        current_romancy()
    late = Flask("d")
    FlaskRomancy().init_app(late, romancy)  # the factory pattern: the Romancy given late
    with late.app_context():
        assert current_romancy() is romancy


# -- the README's Flask layout, as processes ----------------------------------------------

README = ROOT / "README.md"
FILE_HEADER = re.compile(r"^# (shop/\w+\.py).*$", re.MULTILINE)
# What the README leaves to the reader ("Order and order_processing ... as in the
# Example"), and this test's own queue.
WORKFLOWS = """
from dataclasses import dataclass

from celery_romancy import WorkflowContext

celery_app.conf.task_default_queue = os.environ["SHOP_QUEUE"]


@dataclass
class Order:
    order_id: str
    amount: float


@romancy.activity("readme_flask_charge")
def charge(order_id: str, amount: float) -> str:
    return f"charged {amount} for {order_id}"


@romancy.workflow("readme_flask_order")
def order_processing(ctx: WorkflowContext, order: Order) -> str:
    return charge.execute(ctx, order.order_id, order.amount)
"""


def readme_flask_files(readme: Path) -> dict[str, str]:
    """The files the README's Flask section shows (each starts with ``# shop/x.py``)."""
    text = readme.read_text()
    section = text[text.index("### Flask\n") : text.index("### Flower\n")]
    files: dict[str, str] = {}
    for block in re.findall(r"```python\n(.*?)```", section, re.DOTALL):
        parts = FILE_HEADER.split(block)  # ["", name, code, name, code, ...]
        for name, code in zip(parts[1::2], parts[2::2], strict=True):
            files[name] = code
    return files


def responding(url: str) -> Callable[[ServiceProcess], bool]:
    """Ready when the server answers at all (a 404 is an answer)."""

    def ready(_: ServiceProcess) -> bool:
        try:
            http("GET", url)
        except OSError:  # not listening yet
            return False
        return True

    return ready


def test_the_readme_flask_layout_records_where_its_worker_reads(
    pg_url: str, tmp_path: Path
) -> None:
    """The README's Flask files and commands, as processes: the web app and a worker
    that never calls ``create_app`` use the same history database, and the workflow the
    web app starts completes."""
    files = readme_flask_files(README)
    assert {"shop/workflows.py", "shop/extensions.py", "shop/app.py"} <= set(files)
    section = README.read_text().split("### Flask\n")[1].split("### Flower\n")[0]
    assert "celery -A shop.workflows worker" in section
    assert "flask --app shop.app:create_app run" in section
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text("")
    for name, code in files.items():
        extra = WORKFLOWS if name == "shop/workflows.py" else ""
        (tmp_path / name).write_text(code + extra)

    redis = redis_client()
    queue = f"romancy-readme-flask-{uuid.uuid4().hex[:10]}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CELERY", "ROMANCY"))},
        "CELERY_BROKER_URL": REDIS_URL,
        "ROMANCY_DATABASE_URL": pg_url,
        "SHOP_QUEUE": queue,
        "PYTHONPATH": str(tmp_path),
    }
    port = free_port()
    web = ServiceProcess(
        "readme-flask-web",
        [sys.executable, "-m", "flask", "--app", "shop.app:create_app", "run", "--port", str(port)],
        env,
        tmp_path,
        cwd=tmp_path,
    )
    name = f"readme-flask-{uuid.uuid4().hex[:6]}@localhost"
    worker = ServiceProcess(
        "readme-flask-worker",
        celery("shop.workflows", "worker", "-l", "INFO", "-c", "1", "-n", name),
        env,
        tmp_path,
        cwd=tmp_path,  # where a worker without the URL would put sqlite:///romancy.db
    )
    base = f"http://127.0.0.1:{port}"
    try:
        worker.start(log_says(" ready."))
        assert f"celery_romancy: workflow history in {pg_url}" in worker.log()
        web.start(responding(f"{base}/orders/none-yet"))
        status, body = http("POST", f"{base}/orders", {"order_id": "ORD-R1", "amount": 9.5})
        assert status == 202, body
        instance_id = body["instance_id"]

        def completed() -> bool:
            return bool(http("GET", f"{base}/orders/{instance_id}")[1]["status"] == "completed")

        wait_for(completed, 60, "the README's worker to finish the web app's workflow")
        assert http("GET", f"{base}/orders/{instance_id}")[1]["output"] == "charged 9.5 for ORD-R1"
        assert http("GET", f"{base}/orders/no-such-order")[0] == 404
        assert not (tmp_path / "romancy.db").exists()
    finally:
        web.stop()
        worker.stop()
        redis.delete(queue)


# -- the status blueprint -------------------------------------------------------------------


def test_the_shop_shows_its_sagas_on_the_dashboard_to_its_operators_only(
    shop: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOP_OPERATOR_TOKEN", "op-token")
    client = shop.create_app({"TESTING": True}).test_client()
    order_id = f"ORD-{uuid.uuid4().hex[:8]}"
    instance_id = client.post("/orders", json=order(order_id)).get_json()["instance_id"]
    assert shop.romancy.wait(instance_id, timeout=60).status == "completed"

    assert client.get("/romancy/").status_code == 401
    assert client.get("/romancy/", auth=("ann", "guess")).status_code == 401
    assert client.get(f"/romancy/api/instances/{instance_id}").status_code == 401
    listed = client.get("/romancy/", query_string={"id": instance_id}, auth=("ann", "op-token"))
    assert listed.status_code == 200
    assert f'data-instance-id="{instance_id}" data-status="completed"' in listed.get_data(
        as_text=True
    )
    shown = client.get(f"/romancy/api/instances/{instance_id}", auth=("ann", "op-token"))
    assert shown.get_json()["instance"]["status"] == "completed"
    # An action without the page's CSRF token is refused even to an operator.
    refused = client.post(f"/romancy/actions/cancel/{instance_id}", auth=("ann", "op-token"))
    assert refused.status_code == 403


def test_the_status_blueprint_answers_json_and_404(shop: ModuleType) -> None:
    app = shop.create_app({"TESTING": True})  # registers status_blueprint() at /sagas
    assert "romancy_status" in app.blueprints
    client = app.test_client()
    order_id = f"ORD-{uuid.uuid4().hex[:8]}"
    instance_id = client.post("/orders", json=order(order_id)).get_json()["instance_id"]

    def finished() -> bool:
        return bool(client.get(f"/sagas/{instance_id}").get_json()["finished"])

    wait_for(finished, 60, "the order saga to finish on the worker")
    response = client.get(f"/sagas/{instance_id}")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body == status_of(shop.romancy, instance_id)
    assert body["status"] == "completed"
    assert [(s["step_id"], s["outcome"]) for s in body["steps"]] == [
        ("reserve_inventory:1", "completed"),
        ("process_payment:1", "completed"),
        ("ship_order:1", "completed"),
    ]
    assert all(s["duration"] is not None and s["duration"] >= 0 for s in body["steps"])
    assert {c["status"] for c in body["compensations"]} == {"registered"}  # none ran
    assert body["current_steps"] == []

    missing = client.get("/sagas/no-such-id")
    assert missing.status_code == 404
    assert missing.get_json() == {"error": "no workflow instance 'no-such-id'"}
    impossible = client.get(f"/sagas/{'x' * 1000}")  # longer than any id can be
    assert impossible.status_code == 404
    assert impossible.get_json()["error"].startswith("no workflow instance 'xxx")
    assert client.post(f"/sagas/{instance_id}").status_code == 405  # it answers, never acts

    # Given its Romancy, it needs no FlaskRomancy; ids with '/' (child workflows') work.
    bare = Flask("bare_status")
    bare.register_blueprint(status_blueprint(shop.romancy), url_prefix="/status")
    nested = shop.romancy.start_workflow(
        "order_processing",
        shop.order_from_json(order(f"{order_id}-b")),
        instance_id=f"{order_id}/b",
    )
    shop.romancy.wait(nested, timeout=60)
    answered = bare.test_client().get(f"/status/{nested}")
    assert answered.status_code == 200
    assert answered.get_json()["instance_id"] == nested


# -- activities run in the Flask app's context -----------------------------------------------

CONTEXT_SHOP = '''
"""A Flask app that the worker's module creates, as in Flask's Celery guide."""
import os
from pathlib import Path

from celery import Celery
from flask import Flask, current_app, g

from celery_romancy import RetryPolicy, Romancy, TerminalError, WorkflowContext
from celery_romancy.contrib.flask import FlaskRomancy

celery_app = Celery("context_shop", set_as_current=False)
celery_app.conf.broker_url = os.environ["CELERY_BROKER_URL"]
celery_app.conf.romancy_database_url = os.environ["ROMANCY_DATABASE_URL"]
celery_app.conf.task_default_queue = os.environ["SHOP_QUEUE"]
romancy = Romancy(celery_app)
romancy_ext = FlaskRomancy(romancy)
LOG = Path(os.environ["SHOP_LOG"])


def note(line):
    with LOG.open("a") as log:
        log.write(line + "\\n")


@romancy.compensation("ctx_unreserve")
def ctx_unreserve(tag):
    note(f"undo:{tag}:{current_app.name}:{current_app.config['GREETING']}")


@romancy.activity("ctx_reserve", compensation=ctx_unreserve)
def ctx_reserve(tag):
    g.step = f"reserve:{tag}"
    return {"app": current_app.name, "greeting": current_app.config["GREETING"]}


@romancy.activity("ctx_refuse", retry=RetryPolicy(max_attempts=1))
def ctx_refuse(tag):
    raise TerminalError(f"refused {tag}")


@romancy.workflow("ctx_order")
def ctx_order(ctx: WorkflowContext, tag: str, refuse: bool) -> dict:
    seen = ctx_reserve.execute(ctx, tag)
    if refuse:
        ctx_refuse.execute(ctx, tag)
    return seen


def create_app():
    app = Flask("context_shop")
    app.config["GREETING"] = "hello from create_app"
    romancy_ext.init_app(app)

    @app.teardown_appcontext
    def closed(error):
        # Where Flask-SQLAlchemy ends its session: it must run after each step.
        if "step" in g:
            note(f"teardown:{g.step}")

    return app


flask_app = create_app()  # in the worker too: celery -A context_shop:celery_app
'''


def test_activities_run_in_the_flask_app_context_on_a_worker(pg_url: str, tmp_path: Path) -> None:
    (tmp_path / "context_shop.py").write_text(CONTEXT_SHOP)
    log = tmp_path / "steps.log"
    queue = f"romancy-flask-context-{uuid.uuid4().hex[:10]}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CELERY", "ROMANCY"))},
        "CELERY_BROKER_URL": REDIS_URL,
        "ROMANCY_DATABASE_URL": pg_url,
        "SHOP_QUEUE": queue,
        "SHOP_LOG": str(log),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
    }
    # The same module in this process, to start its workflows (its own Flask app too).
    with mock.patch.dict(os.environ, env):
        spec = importlib.util.spec_from_file_location("context_shop", tmp_path / "context_shop.py")
        assert spec is not None and spec.loader is not None
        shop = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(shop)
    name = f"flask-context-{uuid.uuid4().hex[:6]}@localhost"
    worker = ServiceProcess(
        "flask-context-worker",
        # Threads: each step's context is its own, beside another step's in the pool.
        celery(
            "context_shop:celery_app",
            "worker",
            "-l",
            "INFO",
            "-P",
            "threads",
            "-c",
            "2",
            "-n",
            name,
            "-Q",
            queue,
        ),
        env,
        tmp_path,
        cwd=tmp_path,
    )
    romancy = shop.romancy
    try:
        worker.start(log_says(" ready."))
        done = [romancy.start_workflow("ctx_order", f"A{i}", False) for i in range(2)]
        refused = romancy.start_workflow("ctx_order", "B", True)
        for instance_id in done:
            instance = romancy.wait(instance_id, timeout=60)
            assert instance.status == "completed", instance.error
            assert instance.output_data == {
                "app": "context_shop",
                "greeting": "hello from create_app",
            }
        instance = romancy.wait(refused, timeout=60)
        assert instance.status == "failed"
        assert instance.error is not None and instance.error["message"] == "refused B"
        # The compensation ran in the app's context too, and the context was torn down
        # after each step that used it.
        wait_for(lambda: "undo:B:context_shop:hello from create_app" in _lines(log), 30, "undo")
        assert sorted(line for line in _lines(log) if line.startswith("teardown:")) == [
            "teardown:reserve:A0",
            "teardown:reserve:A1",
            "teardown:reserve:B",
        ]
        assert "Signal handler" not in worker.log()  # how Celery logs a receiver that raised
    finally:
        worker.stop()
        redis_client().delete(queue)
        romancy.storage.dispose()


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []
