"""The app the production-install check runs from a fresh virtualenv (see
production_install.py): the README's production setup, Redis broker and PostgreSQL
history, configured from the environment.

    celery -A production_app worker          # the worker
    python production_app.py                 # starts one workflow, prints its result
"""

from __future__ import annotations

import os

from celery import Celery

from celery_romancy import Romancy, WorkflowContext

app = Celery("production_check", broker=os.environ["CELERY_BROKER_URL"])
app.conf.update(
    romancy_database_url=os.environ["ROMANCY_DATABASE_URL"],
    task_default_queue=os.environ["PRODUCTION_CHECK_QUEUE"],
    broker_connection_retry_on_startup=True,
)
romancy = Romancy(app)


@romancy.activity("production_check_double")
def double(number: int) -> int:
    return 2 * number


@romancy.workflow("production_check")
def production_check(ctx: WorkflowContext, number: int) -> int:
    return double.execute(ctx, double.execute(ctx, number))


if __name__ == "__main__":
    instance_id = romancy.start_workflow(production_check, 21)
    print(romancy.result(instance_id, timeout=float(os.environ.get("CHECK_TIMEOUT", "60"))))
