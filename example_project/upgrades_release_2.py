"""Release 2 of the shop's order workflow: a fraud check before the reservation, behind
``ctx.patched``, so that orders release 1 started finish the way they began."""

from __future__ import annotations

import os
import tempfile

from celery_romancy import Romancy, WorkflowContext
from celery_romancy.embedded import embedded_celery

folder = os.environ.setdefault("UPGRADES_FOLDER", tempfile.mkdtemp(prefix="romancy-upgrades-"))
app = embedded_celery("shop", folder)
romancy = Romancy(app)


@romancy.activity("reserve")
def reserve(order_id: str) -> str:
    return f"R-{order_id}"


@romancy.activity("check_fraud")
def check_fraud(order_id: str) -> int:
    return len(order_id) * 2


@romancy.activity("charge")
def charge(order_id: str, fraud_score: int | None = None) -> str:
    checked = "without a fraud check" if fraud_score is None else f"fraud score {fraud_score}"
    return f"charged {order_id}, {checked}"


@romancy.workflow("ship_order", version="2")
def ship_order(ctx: WorkflowContext, order_id: str) -> str:
    score = None
    if ctx.patched("fraud-check"):  # False for orders that got past here under release 1
        score = check_fraud.execute(ctx, order_id)
    reserve.execute(ctx, order_id)
    ctx.wait_event("approved")
    return charge.execute(ctx, order_id, score)
