"""The app the scheduled-workflow tests run in ``celery beat`` and ``celery worker``
subprocesses: one workflow on a fast interval schedule (settings from env).

Every run of ``romancy.start_scheduled`` and of the workflow's activity is appended to
a ledger, so a test sees each beat's sends and each run's effect.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from celery import Celery, signals

from celery_romancy import Romancy, WorkflowContext, current_activity
from celery_romancy.schedules import START_TASK

from .ledger import Ledger

QUEUE = os.environ["ROMANCY_TEST_QUEUE"]
ledger = Ledger(Path(os.environ["ROMANCY_TEST_DIR"]) / "ledger.log")

app = Celery("romancy_schedule_tests", broker=os.environ["ROMANCY_TEST_BROKER"])
app.conf.update(
    task_default_queue=QUEUE,
    romancy_maintenance_queue=f"{QUEUE}.maintenance",
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)
romancy = Romancy(app, database_url=os.environ["ROMANCY_TEST_DB"])


@romancy.activity("report")
def report(region: str) -> str:
    ledger.record(f"report:{current_activity().instance_id}")
    return f"report for {region}"


@romancy.workflow("nightly_report")
def nightly_report(ctx: WorkflowContext, region: str) -> str:
    return report.execute(ctx, region)


romancy.schedule("ticker", nightly_report, float(os.environ["ROMANCY_TEST_EVERY"]), "eu")


def record_start(sender: Any = None, kwargs: Any = None, retval: Any = None, **_: Any) -> None:
    # One line per start message a worker ran: which beat's moment, which instance.
    if sender is not None and sender.name == START_TASK and isinstance(retval, dict):
        ledger.record("start:" + json.dumps({**retval, "sent_at": (kwargs or {}).get("sent_at")}))


signals.task_postrun.connect(record_start, weak=False)
