"""Parallel steps: charge while reserving, then one label per item, on the embedded default.

    python example_project/fan_out.py

Each branch is its own Celery task (run here by an in-process worker with 4 threads);
each result is recorded before anything depends on it; the join is the commit that
records the last branch. No service to start.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

from celery_romancy import Romancy, WorkflowContext
from celery_romancy.embedded import embedded_celery, in_process_worker

folder = tempfile.mkdtemp(prefix="romancy-fan-out-")
app = embedded_celery("fan_out", folder)
romancy = Romancy(app)


@dataclass
class Order:
    order_id: str
    amount: float
    items: list[str]


@romancy.compensation("refund")
def refund(order_id: str, result: str) -> None:
    print(f"  refund {result}", flush=True)


@romancy.activity("charge", compensation=refund)
def charge(order_id: str, amount: float) -> str:
    time.sleep(0.2)
    return f"receipt-{order_id}"


@romancy.activity("reserve")
def reserve(order_id: str) -> str:
    time.sleep(0.2)
    return f"hold-{order_id}"


@romancy.activity("print_label")
def print_label(item: str) -> str:
    time.sleep(0.2)
    return f"label:{item}"


@romancy.workflow("fulfil_order")
def fulfil_order(ctx: WorkflowContext, order: Order) -> dict[str, object]:
    receipt, hold = ctx.gather(charge.s(order.order_id, order.amount), reserve.s(order.order_id))
    labels = ctx.map(print_label, order.items, max_concurrency=10)
    return {"receipt": receipt, "hold": hold, "labels": labels}


def main() -> None:
    order = Order("ORD-7", 42.0, ["mug", "tee", "cap", "pin"])
    with in_process_worker(app, concurrency=4):
        instance_id = romancy.start_workflow(fulfil_order, order)
        result = romancy.result(instance_id, timeout=60)
    print(f"receipt: {result['receipt']}")
    print(f"hold: {result['hold']}")
    print(f"labels: {', '.join(result['labels'])}")
    for event in romancy.get_history(instance_id):
        print(f"  recorded {event.step_id}")


if __name__ == "__main__":
    main()
