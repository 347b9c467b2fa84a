"""Retention: finished workflows deleted once old, counted first with a dry run.

    python example_project/retention.py

Two orders on the embedded default (no service to start): one completes, one fails
and is rolled back. A purge with the usual retention finds nothing yet (they have just
ended); one that takes everything that has ended deletes both, with their history.
"""

from __future__ import annotations

import tempfile
from datetime import timedelta

from celery_romancy import Romancy, TerminalError, WorkflowContext
from celery_romancy.embedded import embedded_celery, in_process_worker

folder = tempfile.mkdtemp(prefix="romancy-retention-")
app = embedded_celery("retention", folder)
romancy = Romancy(app)


@romancy.compensation("refund")
def refund(order_id: str) -> None:
    print(f"refund: {order_id}", flush=True)


@romancy.activity("charge", compensation=refund)
def charge(order_id: str) -> str:
    return f"PAY-{order_id}"


@romancy.activity("ship")
def ship(order_id: str) -> str:
    if order_id == "ORD-2":
        raise TerminalError(f"no courier for {order_id}")
    return f"TRACK-{order_id}"


@romancy.workflow("order")
def order(ctx: WorkflowContext, order_id: str) -> str:
    charge.execute(ctx, order_id)
    return ship.execute(ctx, order_id)


def show(report) -> None:
    verb = "would purge" if report.dry_run else "purged"
    print(
        f"{verb} {report.instances} instances {report.statuses}, "
        f"{report.rows['romancy_history']} history rows",
        flush=True,
    )


def main() -> None:
    with in_process_worker(app):
        ended = [romancy.start_workflow(order, f"ORD-{n}") for n in (1, 2)]
        for instance_id in ended:
            romancy.wait(instance_id, timeout=30)

    # What a purge would delete, counted; nothing is deleted.
    report = romancy.purge(older_than=timedelta(days=7), dry_run=True)
    # The completed and failed instances that ended more than 30 days ago, with their
    # history, attempts, compensations, consumed events and relayed outbox rows.
    romancy.purge(older_than=timedelta(days=30), status=["completed", "failed"])

    show(report)
    show(romancy.purge(older_than=timedelta(milliseconds=1), dry_run=True))
    show(romancy.purge(older_than=timedelta(milliseconds=1)))
    print(f"left: {len(romancy.find_instances())} instances", flush=True)


if __name__ == "__main__":
    main()
