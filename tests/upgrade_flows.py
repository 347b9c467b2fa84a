"""One order workflow in three releases of its code, for the rolling-deploy tests.

Release "1" reserves, waits for approval, then charges. Release "2" adds a fraud check
before the reservation, behind ``ctx.patched("fraud-check")``, and charges with its
score. Release "2-unpatched" is the same change made without the patch: only the new
path. Each release is a worker of its own (``tests/upgrade_worker.py``); every release
registers every activity, as a deploy that ships activities before the workflow code
that calls them does. Each activity writes a ledger line.
"""

from __future__ import annotations

from pathlib import Path

from celery import Celery

from celery_romancy import RetryPolicy, Romancy, WorkflowContext

from .ledger import Ledger

NO_RETRY = RetryPolicy(max_attempts=1)
WORKFLOW = "upgrade_order"
RELEASES = ("1", "2", "2-unpatched")


def build_release(
    release: str, database_url: str, broker_url: str, folder: Path, queue: str
) -> tuple[Celery, Romancy]:
    """The app of one release: the same activities, that release's workflow code."""
    app = Celery(f"upgrade_{release}", broker=broker_url)
    app.conf.update(
        task_default_queue=queue,
        romancy_maintenance_queue=f"{queue}.maintenance",
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
    )
    romancy = Romancy(app, database_url=database_url)
    ledger = Ledger(folder / "ledger.log")

    @romancy.activity("upgrade_reserve", retry=NO_RETRY)
    def reserve(order_id: str) -> str:
        ledger.record(f"reserve:{order_id}")
        return f"R-{order_id}"

    @romancy.activity("upgrade_check_fraud", retry=NO_RETRY)
    def check_fraud(order_id: str) -> int:
        ledger.record(f"check_fraud:{order_id}")
        return 7

    @romancy.activity("upgrade_charge", retry=NO_RETRY)
    def charge(order_id: str) -> str:
        ledger.record(f"charge:{order_id}")
        return "charged"

    @romancy.activity("upgrade_charge_scored", retry=NO_RETRY)
    def charge_scored(order_id: str, score: int) -> str:
        ledger.record(f"charge_scored:{order_id}:{score}")
        return f"charged with score {score}"

    if release == "1":

        @romancy.workflow(WORKFLOW, version="1")
        def order_v1(ctx: WorkflowContext, order_id: str) -> str:
            reserve.execute(ctx, order_id)
            ctx.wait_event("approved")
            return charge.execute(ctx, order_id)

    elif release == "2":

        @romancy.workflow(WORKFLOW, version="2")
        def order_v2(ctx: WorkflowContext, order_id: str) -> str:
            if ctx.patched("fraud-check"):
                score = check_fraud.execute(ctx, order_id)
                reserve.execute(ctx, order_id)
                ctx.wait_event("approved")
                return charge_scored.execute(ctx, order_id, score)
            reserve.execute(ctx, order_id)  # instances started before: the old path
            ctx.wait_event("approved")
            return charge.execute(ctx, order_id)

    elif release == "2-unpatched":

        @romancy.workflow(WORKFLOW, version="2")
        def order_v2_unpatched(ctx: WorkflowContext, order_id: str) -> str:
            score = check_fraud.execute(ctx, order_id)
            reserve.execute(ctx, order_id)
            ctx.wait_event("approved")
            return charge_scored.execute(ctx, order_id, score)

    else:
        raise ValueError(f"no release {release!r}: one of {RELEASES}")
    return app, romancy
