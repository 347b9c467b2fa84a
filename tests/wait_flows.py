"""Workflows that wait: timers, external events, and outbox publishing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from celery_romancy import (
    EventTimeoutError,
    RetryPolicy,
    Romancy,
    WorkflowContext,
    current_activity,
)

from .ledger import Gate, Ledger

NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass
class Payment:
    order_id: str
    amount: float


def register_waits(romancy: Romancy, folder: Path) -> None:
    ledger = Ledger(folder / "ledger.log")

    @romancy.compensation("release_hold", retry=NO_RETRY)
    def release_hold(order_id: str) -> None:
        ledger.record(f"release_hold:{order_id}")

    @romancy.activity("hold_stock", compensation=release_hold, retry=NO_RETRY)
    def hold_stock(order_id: str) -> str:
        ledger.record(f"hold_stock:{order_id}")
        if order_id.startswith("gated"):
            Gate(folder, order_id).wait()
        return f"H-{order_id}"

    @romancy.activity("note", retry=NO_RETRY)
    def note(text: str) -> str:
        ledger.record(f"note:{text}")
        current_activity().publish_event("order.noted", {"text": text})
        return text

    @romancy.workflow("napper")
    def napper(ctx: WorkflowContext, order_id: str, seconds: float) -> str:
        note.execute(ctx, f"before-{order_id}")
        ctx.sleep(seconds)
        return note.execute(ctx, f"after-{order_id}")

    @romancy.workflow("await_payment")
    def await_payment(
        ctx: WorkflowContext, order_id: str, timeout: float | None = None, on_timeout: str = "raise"
    ) -> str:
        hold_stock.execute(ctx, order_id)
        try:
            payment: Payment = ctx.wait_event(
                "payment.received", timeout=timeout, correlation_id=order_id, data_type=Payment
            )
        except EventTimeoutError:
            if on_timeout == "raise":
                raise  # the saga rolls back: release_hold runs
            return note.execute(ctx, f"expired-{order_id}")
        assert isinstance(payment, Payment)
        return note.execute(ctx, f"paid-{payment.order_id}-{payment.amount}")

    @romancy.workflow("publisher")
    def publisher(ctx: WorkflowContext, order_id: str) -> str:
        ctx.publish_event("order.started", {"order_id": order_id})
        note.execute(ctx, f"one-{order_id}")
        note.execute(ctx, f"two-{order_id}")
        ctx.publish_event("order.finished", {"order_id": order_id})
        return "done"

    @romancy.workflow("await_first")
    def await_first(ctx: WorkflowContext, key: str) -> str:
        signal = ctx.wait_event("go", correlation_id=key)
        return note.execute(ctx, f"go-{key}-{signal}")
