"""The workflows the engine tests run, built for one database, broker and ledger.

``build`` is used both in-process and by ``tests/worker_app.py`` for ``celery worker``
subprocesses, so the same code runs in either kind of worker.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypedDict

import sqlalchemy as sa
from celery import Celery
from pydantic import BaseModel

from celery_romancy import (
    RetryPolicy,
    Romancy,
    TerminalError,
    WorkflowContext,
    current_activity,
)

from .child_flows import register_children
from .gather_flows import register_gathers
from .ledger import Gate, Ledger
from .loop_flows import register_loops
from .saga_flows import register_sagas
from .wait_flows import register_waits

NO_RETRY = RetryPolicy(max_attempts=1)


class OutOfStockError(Exception):
    def __init__(self, sku: str, wanted: int) -> None:
        super().__init__(sku, wanted)
        self.sku = sku
        self.wanted = wanted


class Currency(enum.Enum):
    EUR = "EUR"
    JPY = "JPY"


@dataclass
class Item:
    sku: str
    quantity: int
    price: Decimal


@dataclass
class Order:
    order_id: str
    items: list[Item]
    placed_at: datetime
    currency: Currency = Currency.EUR
    note: str | None = None


class ShippingMeta(TypedDict):
    carrier: str
    express: bool


class Customer(BaseModel):
    name: str
    email: str
    since: datetime


@dataclass
class Receipt:
    order_id: str
    total: Decimal
    currency: Currency
    customer: Customer
    carrier: str
    lines: list[Item] = field(default_factory=list)


def build(
    database_url: str, broker_url: str, folder: Path, queue: str, **conf: Any
) -> tuple[Celery, Romancy]:
    app = Celery("romancy_tests", broker=broker_url)
    app.conf.update(
        task_default_queue=queue,
        # Each test's beat jobs on a queue of their own (the shared default
        # romancy.maintenance would let one test's worker take another's jobs).
        romancy_maintenance_queue=f"{queue}.maintenance",
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
    )
    app.conf.update(**conf)
    romancy = Romancy(app, database_url=database_url)
    ledger = Ledger(folder / "ledger.log")

    @romancy.activity("reserve", retry=NO_RETRY)
    def reserve(order_id: str) -> str:
        ledger.record(f"reserve:{order_id}")
        return f"R-{order_id}"

    @romancy.activity("charge", retry=NO_RETRY)
    def charge(order_id: str, amount: float) -> float:
        ledger.record(f"charge:{order_id}")
        return amount

    @romancy.activity("ship", retry=NO_RETRY)
    def ship(order_id: str) -> str:
        ledger.record(f"ship:{order_id}")
        return f"TRACK-{order_id}"

    @romancy.activity("held", retry=NO_RETRY)
    def held(order_id: str) -> str:
        ledger.record(f"held-start:{order_id}")
        Gate(folder, order_id).wait()
        ledger.record(f"held-done:{order_id}")
        return "released"

    @romancy.activity("pick", retry=NO_RETRY)
    def pick(sku: str, wanted: int) -> int:
        ledger.record(f"pick:{sku}")
        if sku.startswith("missing"):
            raise OutOfStockError(sku, wanted)
        return wanted

    @romancy.activity("backorder", retry=NO_RETRY)
    def backorder(sku: str) -> str:
        ledger.record(f"backorder:{sku}")
        return f"backordered:{sku}"

    @romancy.activity("refuse", retry=RetryPolicy(max_attempts=3, initial_interval=0.01))
    def refuse(order_id: str) -> None:
        ledger.record(f"refuse:{order_id}")
        raise TerminalError(f"order {order_id} refused")

    @romancy.activity("price", retry=NO_RETRY)
    def price(order: Order, customer: Customer) -> Decimal:
        ledger.record(
            f"price-types:{type(order).__name__}:{type(order.items[0]).__name__}:"
            f"{type(order.items[0].price).__name__}:{type(order.placed_at).__name__}:"
            f"{type(order.currency).__name__}:{type(customer).__name__}"
        )
        return sum((i.price * i.quantity for i in order.items), Decimal("0"))

    @romancy.workflow("order_saga")
    def order_saga(ctx: WorkflowContext, order_id: str) -> dict[str, Any]:
        reservation = reserve.execute(ctx, order_id)
        charged = charge.execute(ctx, order_id, 109.97)
        tracking = ship.execute(ctx, order_id)
        return {"reservation": reservation, "charged": charged, "tracking": tracking}

    @romancy.workflow("held_saga")
    def held_saga(ctx: WorkflowContext, order_id: str) -> str:
        reserve.execute(ctx, order_id)
        held.execute(ctx, order_id)
        return ship.execute(ctx, order_id)

    @romancy.workflow("catching")
    def catching(ctx: WorkflowContext, sku: str) -> str:
        try:
            outcome = f"picked:{pick.execute(ctx, sku, 2)}"
        except OutOfStockError as missing:
            # The same branch must be taken on the first run and on every replay.
            outcome = backorder.execute(ctx, f"{missing.sku}x{missing.wanted}")
        ship.execute(ctx, sku)
        return outcome

    @romancy.workflow("refusing")
    def refusing(ctx: WorkflowContext, order_id: str) -> str:
        refuse.execute(ctx, order_id)
        return "unreachable"

    version_file = folder / "workflow-version"

    @romancy.workflow("versioned")
    def versioned(ctx: WorkflowContext, order_id: str) -> str:
        reserve.execute(ctx, order_id)
        # Reading a file in a workflow is exactly the bug this test simulates: a deploy
        # that changes which step comes second while an instance is in flight.
        if version_file.exists() and version_file.read_text() == "2":
            charge.execute(ctx, order_id, 1.0)
        else:
            held.execute(ctx, order_id)
        return ship.execute(ctx, order_id)

    @romancy.workflow("typed_order")
    def typed_order(
        ctx: WorkflowContext, order: Order, meta: ShippingMeta, customer: Customer
    ) -> Receipt:
        total = price.execute(ctx, order, customer)
        ship.execute(ctx, order.order_id)
        return Receipt(
            order.order_id, total, order.currency, customer, meta["carrier"], order.items
        )

    register_sagas(romancy, folder)
    register_waits(romancy, folder)
    register_gathers(romancy, folder)
    register_children(romancy, folder)
    register_loops(romancy, folder)

    @romancy.activity("record_sale", retry=NO_RETRY)
    def record_sale(order_id: str) -> int:
        # Written through the recording transaction: commits with the step, or not at all.
        session = current_activity().session
        session.execute(sa.text("INSERT INTO sales (order_id) VALUES (:o)"), {"o": order_id})
        ledger.record(f"sale-written:{order_id}")
        if order_id.startswith("held"):
            Gate(folder, f"sale-{order_id}").wait()
        return 1

    @romancy.workflow("sale")
    def sale(ctx: WorkflowContext, order_id: str) -> str:
        record_sale.execute(ctx, order_id)
        return ship.execute(ctx, order_id)

    @romancy.activity("crashy", retry=NO_RETRY)
    def crashy(order_id: str) -> str:
        ledger.record(f"crashy:{order_id}")
        if (folder / "crash-workers").exists():
            os._exit(1)  # the worker process dies mid-step, every time
        return "survived"

    @romancy.workflow("poisoned")
    def poisoned(ctx: WorkflowContext, order_id: str) -> str:
        reserve.execute(ctx, order_id)
        return crashy.execute(ctx, order_id)

    @romancy.workflow("instant")
    def instant(ctx: WorkflowContext, value: int) -> int:
        return value * 2

    return app, romancy
