"""Child workflows (nested sagas): an order saga with a payment child and a shipping child.

    python example_project/children.py

Three orders on the embedded default (no service to start): one completes; one fails
after both children completed, so its rollback undoes them (each child ends
``compensated``); one has its card declined, so the payment child fails and the parent
catches ``ChildWorkflowError``. Each tree is printed with its statuses.
"""

from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass

from celery_romancy import ChildWorkflowError, Romancy, TerminalError, WorkflowContext
from celery_romancy.embedded import embedded_celery, in_process_worker

folder = tempfile.mkdtemp(prefix="romancy-children-")
app = embedded_celery("children", folder)
romancy = Romancy(app)


@dataclass
class Order:
    order_id: str
    amount: float
    address: str


# Steps of different instances run at the same time on the worker's threads: one line
# at a time, or two lines would mix.
print_lock = threading.Lock()


def say(line: str) -> None:
    with print_lock:
        print(line, flush=True)


@romancy.compensation("refund_card")
def refund_card(order_id: str, amount: float) -> None:
    say(f"  refund_card: refunded {amount:.2f} for {order_id}")


@romancy.activity("charge_card", compensation=refund_card)
def charge_card(order_id: str, amount: float) -> str:
    if amount > 500:
        raise TerminalError(f"card declined for {order_id}")
    say(f"  charge_card: charged {amount:.2f} for {order_id}")
    return f"PAY-{order_id}"


@romancy.workflow("payment")
def payment(ctx: WorkflowContext, order_id: str, amount: float) -> str:
    return charge_card.execute(ctx, order_id, amount)


@romancy.compensation("cancel_courier")
def cancel_courier(order_id: str, result: str) -> None:
    say(f"  cancel_courier: cancelled {result}")


@romancy.activity("book_courier", compensation=cancel_courier)
def book_courier(order_id: str, address: str) -> str:
    say(f"  book_courier: booked for {order_id} to {address}")
    return f"TRACK-{order_id}"


@romancy.workflow("shipping")
def shipping(ctx: WorkflowContext, order_id: str, address: str) -> str:
    return book_courier.execute(ctx, order_id, address)  # compensation: cancel_courier


@romancy.activity("email_customer")
def email_customer(order_id: str) -> None:
    say(f"  email_customer: order {order_id} is on its way")


@romancy.activity("issue_invoice")
def issue_invoice(order_id: str, receipt: str, tracking: str) -> str:
    if order_id == "ORD-2":  # the demo's failing order
        raise TerminalError(f"no invoice address for {order_id}")
    return f"INV-{order_id}"


@romancy.workflow("place_order")
def place_order(ctx: WorkflowContext, order: Order) -> str:
    try:
        receipt = ctx.execute_child(payment, order.order_id, order.amount)  # start and wait
    except ChildWorkflowError as failed:  # it failed or was cancelled, and undid its own steps
        return f"not paid: {failed.error['message'] if failed.error else failed.status}"
    shipment = ctx.start_child(shipping, order.order_id, order.address)  # start, go on
    email_customer.execute(ctx, order.order_id)  # runs while the shipping child runs
    tracking = shipment.result()  # wait for it
    return issue_invoice.execute(ctx, order.order_id, receipt, tracking)  # fails for ORD-2


def print_tree(instance_id: str, depth: int = 0) -> None:
    instance = romancy.get_instance(instance_id)
    say(f"{'  ' * depth}{instance.instance_id} ({instance.workflow_name}): {instance.status}")
    children = romancy.find_instances(parent=instance_id)  # newest first
    for child in sorted(children, key=lambda child: (child.created_at, child.instance_id)):
        print_tree(child.instance_id, depth + 1)


def main() -> None:
    orders = [
        Order("ORD-1", 42.0, "1-2-3 Shibuya, Tokyo"),
        Order("ORD-2", 42.0, "4-5-6 Umeda, Osaka"),
        Order("ORD-3", 900.0, "7-8-9 Tenjin, Fukuoka"),
    ]
    with in_process_worker(app, concurrency=4):
        for each in orders:
            say(f"{each.order_id}:")
            instance_id = romancy.start_workflow(
                place_order, each, instance_id=f"order-{each.order_id}"
            )
            instance = romancy.wait(instance_id, timeout=60)
            if instance.status == "completed":
                say(f"  result: {romancy.result(instance_id)}")
            else:
                error = instance.error or {}
                say(f"  error: {error.get('type')}: {error.get('message')}")
            print_tree(instance_id, depth=1)


if __name__ == "__main__":
    main()
