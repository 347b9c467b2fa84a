"""The Celery app that the worker, beat and Flower run, and that both web apps use.

    celery -A example_project.celery_app worker -l INFO -E
    celery -A example_project.celery_app beat -l INFO
    celery -A example_project.celery_app flower
    celery -A example_project.celery_app romancy list
    celery -A example_project.celery_app romancy dashboard   # http://127.0.0.1:5557/

Configured from the environment, the same in every process (see docker-compose.yml):
CELERY_BROKER_URL, ROMANCY_DATABASE_URL, and optionally ORDERS_QUEUE. The order saga
(``orders.py``) registers its steps, each a Celery task, on this app when imported.
"""

from __future__ import annotations

import os

for _name in ("CELERY_BROKER_URL", "ROMANCY_DATABASE_URL"):
    if not os.environ.get(_name):
        raise RuntimeError(f"example_project.celery_app needs {_name} (see docker-compose.yml)")

from example_project.orders import app, romancy  # noqa: E402 - needs the environment checked

app.conf.update(
    task_default_queue=os.environ.get("ORDERS_QUEUE", "orders"),
    # One step message at a time per worker process: steps can be long.
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    # A step whose worker died comes back after 10 minutes (keep it above the
    # longest step); kombu looks for such messages every 5 s.
    broker_transport_options={
        "visibility_timeout": 600,
        "unacked_restore_interval": 5,
        "unacked_restore_throttle": 1,
    },
    # Events for Flower (the same as ``worker -E``).
    worker_send_task_events=True,
    task_send_sent_event=True,
)

__all__ = ["app", "romancy"]
