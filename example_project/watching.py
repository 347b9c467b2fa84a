"""Watching sagas: signals, business keys and the status summary, on a failing order.

    python example_project/watching.py

One order on the embedded default (no service to start): its charge fails once and is
retried, then the shipping fails for good, so the saga rolls back and ends ``failed``.
A receiver of ``celery_romancy.signals`` prints what happened as it happened; the order
is then found by its business key, and its status summary printed.
"""

from __future__ import annotations

import json
import tempfile
import threading

from celery_romancy import RetryPolicy, Romancy, TerminalError, WorkflowContext, signals
from celery_romancy.contrib.status import status_of
from celery_romancy.embedded import embedded_celery, in_process_worker

folder = tempfile.mkdtemp(prefix="romancy-watching-")
app = embedded_celery("watching", folder)
romancy = Romancy(app)
print_lock = threading.Lock()  # receivers run on the worker's threads
charges: list[str] = []


def say(line: str) -> None:
    with print_lock:
        print(line, flush=True)


@signals.step_failed.connect
def on_step_failed(sender, instance_id, step_id, attempt, error, will_retry, **_):
    after = "will retry" if will_retry else "for good"
    say(f"step_failed: {step_id} attempt {attempt} {after}: {error['message']}")


@signals.workflow_failed.connect
def on_workflow_failed(sender, instance_id, workflow, error, **_):
    say(f"workflow_failed: {workflow} {instance_id}: {error['message']}")


@romancy.compensation("refund")
def refund(order_id: str) -> None:
    say(f"refund: {order_id}")


@romancy.activity("charge", compensation=refund, retry=RetryPolicy(initial_interval=0.1))
def charge(order_id: str) -> str:
    charges.append(order_id)
    if len(charges) == 1:
        raise ConnectionError("payment gateway timed out")  # retried
    return f"PAY-{order_id}"


@romancy.activity("ship")
def ship(order_id: str) -> str:
    raise TerminalError(f"no courier for {order_id}")  # fails for good


@romancy.workflow("order")
def order(ctx: WorkflowContext, order_id: str) -> str:
    ctx.set_search_attributes(stage="charging")
    charge.execute(ctx, order_id)
    ctx.set_search_attributes(stage="shipping")
    return ship.execute(ctx, order_id)


def main() -> None:
    with in_process_worker(app):
        romancy.start_workflow(order, "ORD-4", search={"order_id": "ORD-4"})
        [found] = romancy.find_instances(search={"order_id": "ORD-4"})
        romancy.wait(found.instance_id, timeout=30)
    say(f"found by its key: {found.workflow_name} {romancy.search_attributes(found.instance_id)}")
    status = status_of(romancy, found.instance_id)
    summary = {key: status[key] for key in ("status", "error")}
    say(json.dumps(summary, indent=2))
    say(f"steps: {[(step['step_id'], step['outcome']) for step in status['steps']]}")


if __name__ == "__main__":
    main()
