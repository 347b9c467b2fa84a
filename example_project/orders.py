"""The order-processing saga: reserve inventory -> process payment -> ship order.

    python example_project/orders.py                     # completes
    SHIPPING_FAILS=1 python example_project/orders.py    # refund, then release, then error

Runs on the embedded default (no service to start). With CELERY_BROKER_URL and
ROMANCY_DATABASE_URL set, the same module is a Celery app for ``celery -A orders worker``.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass
from decimal import Decimal

from celery import Celery

from celery_romancy import RetryPolicy, Romancy, TerminalError, WorkflowContext
from celery_romancy.embedded import embedded_celery, in_process_worker

if os.environ.get("CELERY_BROKER_URL"):
    app = Celery("orders", broker=os.environ["CELERY_BROKER_URL"])
    app.conf.romancy_database_url = os.environ.get("ROMANCY_DATABASE_URL")
else:
    app = embedded_celery("orders", tempfile.mkdtemp(prefix="romancy-orders-"))
romancy = Romancy(app)


@dataclass
class OrderItem:
    item_id: str
    quantity: int
    price: Decimal


@dataclass
class OrderInput:
    order_id: str
    customer_email: str
    items: list[OrderItem]
    shipping_address: str


@dataclass
class OrderResult:
    order_id: str
    status: str
    total: Decimal
    tracking_number: str


class ShippingError(TerminalError):
    """The carrier refused the parcel; retrying will not help."""


def say(line: str) -> None:
    print(line, flush=True)


@romancy.compensation("cancel_inventory_reservation")
def cancel_inventory_reservation(order_id: str, result: str) -> None:
    say(f"cancel_inventory_reservation: released reservation {result} for {order_id}")


@romancy.compensation("refund_payment")
def refund_payment(order_id: str, amount: Decimal) -> None:
    say(f"refund_payment: refunded ${amount} for {order_id}")


@romancy.activity("reserve_inventory", compensation=cancel_inventory_reservation)
def reserve_inventory(order_id: str, items: list[OrderItem]) -> str:
    lines = ", ".join(f"{i.quantity} x {i.item_id}" for i in items)
    say(f"reserve_inventory: reserved {lines} for {order_id}")
    return f"RES-{order_id}"


@romancy.activity("process_payment", compensation=refund_payment, retry=RetryPolicy(max_attempts=5))
def process_payment(order_id: str, amount: Decimal, customer_email: str) -> str:
    say(f"process_payment: charged ${amount} to {customer_email} for {order_id}")
    return f"PAY-{order_id}"


@romancy.activity("ship_order")
def ship_order(order_id: str, address: str) -> str:
    if os.environ.get("SHIPPING_FAILS"):
        raise ShippingError(f"carrier refused the parcel for {order_id} to {address}")
    say(f"ship_order: shipped {order_id} to {address}")
    return f"TRACK-{order_id}"


@romancy.workflow("order_processing")
def order_processing(ctx: WorkflowContext, order: OrderInput) -> OrderResult:
    total = sum((item.price * item.quantity for item in order.items), Decimal("0"))
    reserve_inventory.execute(ctx, order.order_id, order.items)
    process_payment.execute(ctx, order.order_id, total, order.customer_email)
    tracking = ship_order.execute(ctx, order.order_id, order.shipping_address)
    return OrderResult(order.order_id, "completed", total, tracking)


SAMPLE_ORDER = OrderInput(
    order_id="ORD-12345",
    customer_email="customer@example.com",
    items=[OrderItem("ITEM-001", 2, Decimal("29.99")), OrderItem("ITEM-002", 1, Decimal("49.99"))],
    shipping_address="1-2-3 Shibuya, Shibuya-ku, Tokyo, Japan",
)


def main() -> int:
    # The id chosen here so that it is printed before the worker's first line.
    instance_id = uuid.uuid4().hex
    say(f"starting order_processing, instance id: {instance_id}")
    with in_process_worker(app):
        romancy.start_workflow(order_processing, SAMPLE_ORDER, instance_id=instance_id)
        instance = romancy.wait(instance_id, timeout=60)
    say(f"status: {instance.status}")
    if instance.status == "completed":
        result = romancy.result(instance_id)
        say(f"total: ${result.total}")
        say(f"tracking: {result.tracking_number}")
        return 0
    error = instance.error or {}
    say(f"error: {error.get('type')}: {error.get('message')} (step {error.get('step')})")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
