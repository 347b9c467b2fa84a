"""Fan-out workflows for the parallel-step tests (``ctx.gather`` / ``ctx.map``).

Branch bodies write their start and end times to the ledger, so tests can measure how
many ran at once; gates hold a branch open while a test acts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from celery_romancy import RetryPolicy, Romancy, TerminalError, WorkflowContext

from .ledger import Gate, Ledger

NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass
class Label:
    item: str
    number: int


class LabelPrinterJamError(TerminalError):
    """A terminal failure of one branch, with attributes of its own."""

    def __init__(self, item: str, tray: int) -> None:
        super().__init__(f"printer jammed on {item} (tray {tray})")
        self.item = item
        self.tray = tray


def register_gathers(romancy: Romancy, folder: Path) -> None:
    ledger = Ledger(folder / "ledger.log")

    @romancy.activity("print_label", retry=NO_RETRY)
    def print_label(item: str) -> Label:
        ledger.record(f"label-start:{item}:{time.time()}")
        if item.startswith("held"):
            Gate(folder, item.split("-")[1]).wait()
        else:
            time.sleep(0.3)
        ledger.record(f"label-end:{item}:{time.time()}")
        return Label(item, int(item.rsplit("-", 1)[1]))

    @romancy.activity("pack", retry=NO_RETRY)
    def pack(labels: list[Label]) -> str:
        ledger.record(f"pack:{','.join(label.item for label in labels)}")
        return f"packed {len(labels)}"

    @romancy.workflow("label_all")
    def label_all(ctx: WorkflowContext, tag: str, count: int, limit: int | None) -> list[Label]:
        items = [f"{tag}-{i}" for i in range(count)]
        labels = ctx.map(print_label, items, max_concurrency=limit)
        pack.execute(ctx, labels)
        return labels

    # -- a saga whose parallel part fails ---------------------------------------------

    @romancy.compensation("g_unprepare", retry=NO_RETRY)
    def g_unprepare(order_id: str) -> None:
        ledger.record(f"undo-prepare:{order_id}")

    @romancy.compensation("g_refund", retry=NO_RETRY)
    def g_refund(order_id: str, result: str) -> None:
        ledger.record(f"undo-charge:{order_id}:{result}")

    @romancy.compensation("g_release", retry=NO_RETRY)
    def g_release(order_id: str) -> None:
        ledger.record(f"undo-reserve:{order_id}")

    @romancy.activity("g_prepare", compensation=g_unprepare, retry=NO_RETRY)
    def g_prepare(order_id: str) -> None:
        ledger.record(f"prepare:{order_id}")

    @romancy.activity("g_charge", compensation=g_refund, retry=NO_RETRY)
    def g_charge(order_id: str) -> str:
        ledger.record(f"charge:{order_id}")
        return f"receipt-{order_id}"

    @romancy.activity("g_reserve", compensation=g_release, retry=NO_RETRY)
    def g_reserve(order_id: str) -> str:
        ledger.record(f"reserve-start:{order_id}")
        Gate(folder, f"reserve-{order_id}").wait()
        ledger.record(f"reserve:{order_id}")
        return f"hold-{order_id}"

    # Retries would be allowed: TerminalError fails it at once all the same.
    @romancy.activity("g_jam", compensation=g_release, retry=RetryPolicy(max_attempts=5))
    def g_jam(order_id: str) -> str:
        ledger.record(f"jam:{order_id}")
        raise LabelPrinterJamError(order_id, 2)

    @romancy.activity("g_after", retry=NO_RETRY)
    def g_after(order_id: str) -> str:
        ledger.record(f"after:{order_id}")
        return "after"

    @romancy.workflow("fulfil")
    def fulfil(ctx: WorkflowContext, order_id: str, mode: str) -> str:
        g_prepare.execute(ctx, order_id)
        branches = (g_charge.s(order_id), g_jam.s(order_id), g_reserve.s(order_id))
        if mode == "return_exceptions":
            results = ctx.gather(*branches, return_exceptions=True)
            kinds = [type(r).__name__ if isinstance(r, Exception) else r for r in results]
            jam = results[1]
            assert isinstance(jam, LabelPrinterJamError) and jam.tray == 2
            return g_after.execute(ctx, order_id) + ":" + ",".join(kinds)
        if mode == "catch":
            try:
                ctx.gather(*branches)
            except LabelPrinterJamError as jam:
                return g_after.execute(ctx, order_id) + f":caught tray {jam.tray}"
        ctx.gather(*branches)
        return "unreachable"

    # -- two branches recorded at once, then one step after the join --------------------

    @romancy.activity("g_pair", retry=NO_RETRY)
    def g_pair(order_id: str, side: str) -> str:
        ledger.record(f"pair:{order_id}:{side}")
        return side

    @romancy.workflow("pair")
    def pair(ctx: WorkflowContext, order_id: str) -> str:
        left, right = ctx.gather(g_pair.s(order_id, "left"), g_pair.s(order_id, "right"))
        return g_after.execute(ctx, order_id) + f":{left}+{right}"

    # -- a fan-out that can be cancelled, or killed, mid-flight --------------------------

    @romancy.compensation("g_unlabel", retry=NO_RETRY)
    def g_unlabel(item: str) -> None:
        ledger.record(f"unlabel:{item}")

    @romancy.activity("g_held_label", compensation=g_unlabel, retry=NO_RETRY)
    def g_held_label(item: str) -> str:
        ledger.record(f"held-start:{item}")
        Gate(folder, item.split("/")[0]).wait()
        ledger.record(f"held-done:{item}")
        return item

    @romancy.workflow("held_fan_out")
    def held_fan_out(ctx: WorkflowContext, tag: str, count: int, limit: int | None) -> str:
        items = [f"{tag}/{i}" for i in range(count)]
        labels = ctx.map(g_held_label, items, max_concurrency=limit)
        return g_after.execute(ctx, tag) + f":{len(labels)}"
