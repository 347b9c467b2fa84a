"""Release 1 of a small shop's order workflow (``example_project/upgrades.py`` deploys
it, then release 2 over it): reserve, wait for approval, charge."""

from __future__ import annotations

import os
import tempfile

from celery_romancy import Romancy, WorkflowContext
from celery_romancy.embedded import embedded_celery

# Both releases use one history database and broker, as two deploys of one shop would.
folder = os.environ.setdefault("UPGRADES_FOLDER", tempfile.mkdtemp(prefix="romancy-upgrades-"))
app = embedded_celery("shop", folder)
romancy = Romancy(app)


@romancy.activity("reserve")
def reserve(order_id: str) -> str:
    return f"R-{order_id}"


@romancy.activity("charge")
def charge(order_id: str, fraud_score: int | None = None) -> str:
    checked = "without a fraud check" if fraud_score is None else f"fraud score {fraud_score}"
    return f"charged {order_id}, {checked}"


@romancy.workflow("ship_order", version="1")
def ship_order(ctx: WorkflowContext, order_id: str) -> str:
    reserve.execute(ctx, order_id)
    ctx.wait_event("approved")
    return charge.execute(ctx, order_id)
