"""The workflows the CLI tests operate: the engine tests' ones, plus one that waits for
an event. Built in-process and by ``tests/cli_app.py`` for ``celery -A tests.cli_app``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery

from celery_romancy import Romancy, WorkflowContext

from .flows import build


def build_cli(
    database_url: str, broker_url: str, folder: Path, queue: str, **conf: Any
) -> tuple[Celery, Romancy]:
    app, romancy = build(database_url, broker_url, folder, queue, **conf)

    @romancy.activity("open_invoice")
    def open_invoice(order_id: str) -> str:
        return f"INV-{order_id}"

    @romancy.workflow("awaiting_payment")
    def awaiting_payment(
        ctx: WorkflowContext, order_id: str, by_correlation: bool = False
    ) -> dict[str, Any]:
        invoice = open_invoice.execute(ctx, order_id)
        payment = ctx.wait_event("payment", correlation_id=order_id if by_correlation else None)
        return {"invoice": invoice, "payment": payment}

    return app, romancy
