"""Flask: the example shop's views (Flask test client, real worker process) and the
``init_app`` extension."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from celery import Celery
from flask import Flask

from celery_romancy import ConfigurationError, Romancy
from celery_romancy.contrib.flask import FlaskRomancy, current_romancy

from .example_stack import QUEUE, example_worker, import_example, order
from .ledger import wait_for
from .services import redis_client


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
