"""The example project (``example_project/``) run by the tests: its environment, its
in-process import (for the Django and Flask test clients) and its worker process.

The example is configured from the environment when imported, once per process: the
first test to import it decides its database (the session's PostgreSQL database) and
its queue (unique to this pytest process). The environment is only patched around the
import, so nothing leaks to the other tests' Celery apps.
"""

from __future__ import annotations

import importlib
import os
import uuid
from pathlib import Path
from types import ModuleType
from unittest import mock

import sqlalchemy as sa

from .processes import ROOT, ServiceProcess, celery, log_says
from .services import REDIS_URL

QUEUE = f"romancy-example-{uuid.uuid4().hex[:10]}"
SAMPLE_ORDER = {
    "customer_email": "customer@example.com",
    "shipping_address": "1-2-3 Shibuya, Shibuya-ku, Tokyo, Japan",
    "items": [
        {"item_id": "ITEM-001", "quantity": 2, "price": "29.99"},
        {"item_id": "ITEM-002", "quantity": 1, "price": "49.99"},
    ],
}


def order(order_id: str) -> dict[str, object]:
    return {"order_id": order_id, **SAMPLE_ORDER}


def example_env(database_url: str, queue: str = QUEUE) -> dict[str, str]:
    """What docker-compose.yml gives the application services, pointed at this machine."""
    pg = sa.make_url(database_url)
    return {
        "CELERY_BROKER_URL": REDIS_URL,
        "ROMANCY_DATABASE_URL": database_url,
        "ORDERS_QUEUE": queue,
        "POSTGRES_HOST": pg.host or "127.0.0.1",
        "POSTGRES_PORT": str(pg.port or 5432),
        "POSTGRES_DB": pg.database or "",
        "POSTGRES_USER": pg.username or "postgres",
        "POSTGRES_PASSWORD": pg.password or "",
        "DJANGO_SETTINGS_MODULE": "example_project.django_shop.settings",
        "FLOWER_UNAUTHENTICATED_API": "true",
    }


def import_example(database_url: str) -> ModuleType:
    """``example_project.celery_app``, imported in this process for ``database_url``."""
    env = example_env(database_url)
    with mock.patch.dict(os.environ, env):
        module = importlib.import_module("example_project.celery_app")
        import django

        django.setup()  # reads the example's settings from the same environment
    configured = module.romancy.settings.database_url
    assert configured == database_url, f"example already imported for {configured}"
    return module


def example_worker(database_url: str, folder: Path, name: str) -> ServiceProcess:
    """A real ``celery worker`` for the example app, with task events (``-E``) for Flower."""
    argv = celery(
        "example_project.celery_app",
        "worker",
        "-l",
        "INFO",
        "-E",
        "-c",
        "2",
        "-n",
        f"{name}-{uuid.uuid4().hex[:6]}@localhost",
        "--without-gossip",
        "--without-mingle",
    )
    env = {**os.environ, **example_env(database_url), "PYTHONPATH": str(ROOT)}
    return ServiceProcess(name, argv, env, folder).start(log_says(" ready."))
