"""Loop workflows that continue as new, for the continue-as-new tests.

Each round waits for a ``tick`` event, adds it with an activity (whose compensation
writes to the ledger too), then continues as new with the running total.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from celery_romancy import RetryPolicy, Romancy, TerminalError, WorkflowContext

from .ledger import Ledger

NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass
class Tally:
    round: int
    total: int


def register_loops(romancy: Romancy, folder: Path) -> None:
    ledger = Ledger(folder / "ledger.log")

    @romancy.compensation("l_subtract", retry=NO_RETRY)
    def l_subtract(round: int) -> None:
        ledger.record(f"subtract:{round}")

    @romancy.activity("l_add", compensation=l_subtract, retry=NO_RETRY)
    def l_add(round: int, total: int, tick: int) -> int:
        ledger.record(f"add:{round}")
        return total + tick

    @romancy.workflow("l_counter")
    def l_counter(ctx: WorkflowContext, state: Tally, rounds: int) -> Tally:
        """``rounds`` rounds, each one run with a history of two rows."""
        tick = ctx.wait_event("tick", data_type=int)
        total = l_add.execute(ctx, state.round, state.total, tick)
        if state.round + 1 == rounds:
            return Tally(state.round + 1, total)
        try:
            ctx.continue_as_new(Tally(state.round + 1, total), rounds)
        except Exception:  # noqa: BLE001 - it cannot swallow the hand-over
            ledger.record("swallowed")
        raise AssertionError("unreachable: continue_as_new does not return")

    @romancy.workflow("l_bad_next")
    def l_bad_next(ctx: WorkflowContext, count: int) -> int:
        l_add.execute(ctx, count, 0, 1)
        ctx.continue_as_new("three")  # not an int: refused at the call
        return count

    @romancy.workflow("l_child_loop")
    def l_child_loop(ctx: WorkflowContext, count: int, until: int) -> int:
        """A child that counts to ``until``, one run per step, each step undoable."""
        l_add.execute(ctx, count, 0, 1)
        if count == until:
            return count
        if until < 0:  # an endless child: each round waits for a tick first
            ctx.wait_event("tick")
        ctx.continue_as_new(count + 1, until)

    @romancy.workflow("l_parent")
    def l_parent(ctx: WorkflowContext, until: int, fail: bool = False) -> int:
        result: int = ctx.execute_child(l_child_loop, 0, until)
        if fail:
            raise TerminalError(f"the parent fails after its child counted to {result}")
        return result
