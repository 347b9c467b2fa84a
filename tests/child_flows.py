"""Parent, child and grandchild workflows for the child-workflow tests.

Every activity and compensation writes a ledger line, so tests can count what ran and
in which order across the instances of one tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from celery_romancy import (
    ChildWorkflowError,
    RetryPolicy,
    Romancy,
    TerminalError,
    WorkflowContext,
)

from .ledger import Gate, Ledger

NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass
class Verdict:
    order_id: str
    score: int


@dataclass
class Payment:
    order_id: str
    amount: float
    verdict: Verdict


@dataclass
class Receipt:
    order_id: str
    payment: Payment
    refunds: list[str]


class CardDeclinedError(TerminalError):
    def __init__(self, order_id: str, code: str) -> None:
        super().__init__(f"card declined for {order_id} ({code})")
        self.order_id = order_id
        self.code = code


def register_children(romancy: Romancy, folder: Path) -> None:
    ledger = Ledger(folder / "ledger.log")

    # -- parent -> child -> grandchild, typed results --------------------------------

    @romancy.activity("c_score", retry=NO_RETRY)
    def c_score(order_id: str) -> int:
        ledger.record(f"score:{order_id}")
        return 7

    @romancy.workflow("c_fraud")
    def c_fraud(ctx: WorkflowContext, order_id: str) -> Verdict:
        return Verdict(order_id, c_score.execute(ctx, order_id))

    @romancy.activity("c_charge", retry=NO_RETRY)
    def c_charge(order_id: str, amount: float) -> float:
        ledger.record(f"charge:{order_id}")
        if order_id.startswith("declined"):
            raise CardDeclinedError(order_id, "insufficient-funds")
        return amount

    @romancy.workflow("c_payment")
    def c_payment(ctx: WorkflowContext, order_id: str, amount: float) -> Payment:
        verdict = ctx.execute_child(c_fraud, order_id)
        return Payment(order_id, c_charge.execute(ctx, order_id, amount), verdict)

    @romancy.activity("c_refund_item", retry=NO_RETRY)
    def c_refund_item(item: str) -> str:
        ledger.record(f"refund-item:{item}")
        return f"refunded:{item}"

    @romancy.workflow("c_refund")
    def c_refund(ctx: WorkflowContext, item: str) -> str:
        return c_refund_item.execute(ctx, item)

    @romancy.activity("c_note", retry=NO_RETRY)
    def c_note(order_id: str) -> str:
        ledger.record(f"note:{order_id}")
        return f"noted:{order_id}"

    @romancy.workflow("c_order")
    def c_order(ctx: WorkflowContext, order_id: str, returns: list[str]) -> Receipt:
        payment = ctx.execute_child(c_payment, order_id, 20.0)
        handle = ctx.start_child(c_refund, f"{order_id}-late")
        refunds = ctx.gather(*(c_refund.s(item) for item in returns), c_note.s(order_id))
        return Receipt(order_id, payment, [*refunds[:-1], handle.result()])

    # -- a child that fails: caught, or rolling the parent back ---------------------------

    @romancy.compensation("c_unreserve", retry=NO_RETRY)
    def c_unreserve(order_id: str) -> None:
        ledger.record(f"undo-reserve:{order_id}")

    @romancy.activity("c_reserve", compensation=c_unreserve, retry=NO_RETRY)
    def c_reserve(order_id: str) -> str:
        ledger.record(f"reserve:{order_id}")
        return f"R-{order_id}"

    @romancy.workflow("c_catching")
    def c_catching(ctx: WorkflowContext, order_id: str, catch: bool) -> str:
        c_reserve.execute(ctx, order_id)
        try:
            ctx.execute_child(c_payment, order_id, 5.0)
        except ChildWorkflowError as error:
            if not catch:
                raise
            cause = error.error or {}
            return f"{error.status}:{cause.get('type')}:{cause.get('message')}"
        return "paid"

    # -- rollback after two completed children ------------------------------------------

    @romancy.compensation("c_undo_step", retry=NO_RETRY)
    def c_undo_step(name: str) -> None:
        ledger.record(f"undo:{name}")

    @romancy.activity("c_step", compensation=c_undo_step, retry=NO_RETRY)
    def c_step(name: str) -> str:
        ledger.record(f"do:{name}")
        if name.endswith("boom"):
            raise TerminalError(f"{name} failed")
        return name

    @romancy.workflow("c_leaf")
    def c_leaf(ctx: WorkflowContext, name: str) -> str:
        c_step.execute(ctx, f"{name}.a")
        return c_step.execute(ctx, f"{name}.b")

    @romancy.workflow("c_two_children")
    def c_two_children(ctx: WorkflowContext, tag: str) -> str:
        c_step.execute(ctx, f"{tag}.p1")
        ctx.execute_child(c_leaf, f"{tag}.k1")
        c_step.execute(ctx, f"{tag}.p2")
        ctx.execute_child(c_leaf, f"{tag}.k2")
        c_step.execute(ctx, f"{tag}.boom")
        return "unreachable"

    # -- cancelling a parent whose child waits for an event -------------------------------

    @romancy.workflow("c_waiter")
    def c_waiter(ctx: WorkflowContext, tag: str) -> str:
        c_step.execute(ctx, f"{tag}.w")
        ctx.wait_event("c_go", correlation_id=tag)
        return f"done:{tag}"

    @romancy.workflow("c_waits_on_child")
    def c_waits_on_child(ctx: WorkflowContext, tag: str, parent_close: str) -> str:
        c_step.execute(ctx, f"{tag}.p")
        return ctx.execute_child(c_waiter, tag, parent_close=parent_close)

    @romancy.activity("c_gated_boom", retry=NO_RETRY)
    def c_gated_boom(name: str) -> None:
        Gate(folder, name).wait()
        ledger.record(f"boom:{name}")
        raise TerminalError(f"{name} failed")

    @romancy.workflow("c_fails_beside_child")
    def c_fails_beside_child(ctx: WorkflowContext, tag: str) -> str:
        c_step.execute(ctx, f"{tag}.p")
        ctx.start_child(c_waiter, tag)
        c_gated_boom.execute(ctx, tag)
        return "unreachable"

    @romancy.workflow("c_fire_and_forget")
    def c_fire_and_forget(ctx: WorkflowContext, tag: str, parent_close: str) -> str:
        handle = ctx.start_child(c_waiter, tag, parent_close=parent_close)
        c_step.execute(ctx, f"{tag}.p")
        return handle.instance_id

    # -- a child whose undo fails until an operator fixes the cause -----------------------

    @romancy.compensation("c_fragile_undo", retry=NO_RETRY)
    def c_fragile_undo(name: str) -> None:
        if not Gate(folder, f"fixed-{name}").path.exists():
            raise RuntimeError(f"cannot undo {name} yet")
        ledger.record(f"undo-fragile:{name}")

    @romancy.activity("c_fragile", compensation=c_fragile_undo, retry=NO_RETRY)
    def c_fragile(name: str) -> str:
        ledger.record(f"fragile:{name}")
        return name

    @romancy.workflow("c_fragile_leaf")
    def c_fragile_leaf(ctx: WorkflowContext, name: str) -> str:
        return c_fragile.execute(ctx, name)

    @romancy.workflow("c_undo_fails")
    def c_undo_fails(ctx: WorkflowContext, tag: str) -> str:
        c_step.execute(ctx, f"{tag}.p")
        ctx.execute_child(c_fragile_leaf, tag)
        c_step.execute(ctx, f"{tag}.boom")
        return "unreachable"

    # -- a cancel that comes while the last step runs -----------------------------------

    @romancy.activity("c_gated", retry=NO_RETRY)
    def c_gated(name: str) -> str:
        ledger.record(f"gated-start:{name}")
        Gate(folder, name).wait()
        return f"gated:{name}"

    @romancy.workflow("c_last_step_gated")
    def c_last_step_gated(ctx: WorkflowContext, tag: str) -> str:
        c_step.execute(ctx, f"{tag}.first")
        return c_gated.execute(ctx, tag)

    # -- bad input at the call ----------------------------------------------------------

    @romancy.workflow("c_bad_child")
    def c_bad_child(ctx: WorkflowContext, how: str) -> str:
        c_step.execute(ctx, f"bad-{how}.p")
        if how == "unknown":
            return ctx.execute_child("no_such_workflow", "x")  # type: ignore[no-any-return]
        return ctx.execute_child(c_refund, object())  # type: ignore[arg-type]

    @romancy.workflow("c_taken_id")
    def c_taken_id(ctx: WorkflowContext, child_id: str) -> str:
        try:
            return ctx.execute_child(c_refund, "mine", instance_id=child_id)
        except Exception as error:  # noqa: BLE001 - the test reads what was raised
            return f"{type(error).__name__}"
