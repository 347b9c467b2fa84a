"""A cancel that arrives while the last step runs: the workflow completes, and says so."""

from __future__ import annotations

from .harness import Harness
from .ledger import wait_for


def test_a_cancel_during_the_last_step_is_recorded_as_too_late(harness: Harness) -> None:
    romancy = harness.romancy
    instance_id = romancy.start_workflow("c_last_step_gated", "late")

    with harness.worker():
        wait_for(lambda: harness.ledger.count("gated-start:late") == 1, 30, "the last step")
        assert romancy.cancel(instance_id, "customer changed their mind")
        harness.gate("late").open()
        done = romancy.wait(instance_id, timeout=30)

    assert done.status == "completed" and romancy.result(instance_id) == "gated:late"
    assert done.cancel_reason == (
        "customer changed their mind (too late: the workflow completed first)"
    )
    assert harness.ledger.count("undo:late.first") == 0  # nothing was rolled back
