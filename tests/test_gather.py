"""Parallel steps: ``ctx.gather`` / ``ctx.map`` on real workers, SQLite and PostgreSQL.

Each branch is its own Celery task with its own step record; the join is the commit
that records the last branch, decided by the instance's version check.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import signals

from celery_romancy.storage import CommitResult

from .gather_flows import Label
from .harness import Harness
from .ledger import wait_for


def spans(harness: Harness, prefix: str) -> dict[str, list[float]]:
    """Each label body's [start, end] times, from the ledger."""
    found: dict[str, list[float]] = {}
    for line in harness.ledger.events():
        kind, _, rest = line.partition(":")
        if kind in ("label-start", "label-end") and rest.startswith(prefix):
            item, _, at = rest.rpartition(":")
            found.setdefault(item, []).append(float(at))
    return found


def most_at_once(intervals: list[list[float]]) -> int:
    moments = sorted(
        [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals]
    )  # an end sorts before a start at the same instant
    running = peak = 0
    for _, change in moments:
        running += change
        peak = max(peak, running)
    return peak


def step_ids(harness: Harness, instance_id: str) -> list[str]:
    return [e.step_id for e in harness.romancy.get_history(instance_id)]


def test_sixteen_branches_run_at_the_same_time_and_come_back_in_order(harness: Harness) -> None:
    for _ in range(2):  # both ready before the fan-out, so both take branches
        harness.worker_process(concurrency=2).start()
    instance_id = harness.romancy.start_workflow("label_all", "par", 16, None)

    labels = harness.romancy.result(instance_id, timeout=90)

    assert labels == [Label(f"par-{i}", i) for i in range(16)]  # argument order, typed
    assert all(type(label) is Label for label in labels)
    bodies = spans(harness, "par-")
    assert len(bodies) == 16 and all(len(times) == 2 for times in bodies.values())
    assert most_at_once(list(bodies.values())) >= 3
    history = harness.romancy.get_history(instance_id)
    # Branch i takes the i-th step id of its activity, whatever order they finished in.
    branch_steps = sorted((e.seq, e.step_id) for e in history if e.name == "print_label")
    assert branch_steps == [(i + 1, f"print_label:{i + 1}") for i in range(16)]
    assert [e.step_id for e in history if e.name != "print_label"] == ["gather:1", "pack:1"]
    assert harness.ledger.count("pack:" + ",".join(f"par-{i}" for i in range(16))) == 1


def test_max_concurrency_bounds_the_branches_running_at_once(harness: Harness) -> None:
    for _ in range(2):  # four slots in all: only max_concurrency holds them back
        harness.worker_process(concurrency=2).start()
    instance_id = harness.romancy.start_workflow("label_all", "lim", 8, 2)

    labels = harness.romancy.result(instance_id, timeout=90)

    assert [label.number for label in labels] == list(range(8))
    bodies = spans(harness, "lim-")
    assert len(bodies) == 8
    assert most_at_once(list(bodies.values())) <= 2


def test_an_empty_map_returns_no_results_without_a_step(harness: Harness) -> None:
    instance_id = harness.romancy.start_workflow("label_all", "none", 0, None)
    with harness.worker():
        assert harness.romancy.result(instance_id, timeout=30) == []
    assert step_ids(harness, instance_id) == ["pack:1"]


def test_a_failed_branch_lets_its_siblings_finish_then_the_saga_rolls_back(
    harness: Harness,
) -> None:
    instance_id = harness.romancy.start_workflow("fulfil", "F1", "uncaught")
    with harness.worker():
        wait_for(lambda: harness.ledger.count("reserve-start:F1") == 1, 30, "reserve to start")
        wait_for(lambda: "g_jam:1" in step_ids(harness, instance_id), 30, "the jam to be recorded")
        # The failure is recorded, but a sibling still runs: nothing is decided yet.
        assert harness.romancy.get_instance(instance_id).status == "running"
        assert not any(e.startswith("undo-") for e in harness.ledger.events())
        harness.gate("reserve-F1").open()
        instance = harness.romancy.wait(instance_id, timeout=30)

    assert instance.status == "failed"
    assert instance.error is not None
    assert instance.error["type"].endswith("LabelPrinterJamError")
    assert instance.error["step"] == "g_jam:1"
    undo = [e for e in harness.ledger.events() if e.startswith("undo-")]
    # Every succeeded step once, newest record first: the held reserve finished last.
    assert undo[0] == "undo-reserve:F1"
    assert sorted(undo[:2]) == ["undo-charge:F1:receipt-F1", "undo-reserve:F1"]
    assert undo[2:] == ["undo-prepare:F1"]
    assert harness.ledger.count("after:F1") == 0


def test_the_first_failure_reaches_the_body_with_its_type(harness: Harness) -> None:
    harness.gate("reserve-F2").open()
    instance_id = harness.romancy.start_workflow("fulfil", "F2", "catch")
    with harness.worker():
        assert harness.romancy.result(instance_id, timeout=30) == "after:caught tray 2"
    assert harness.ledger.count("reserve:F2") == 1  # the sibling finished
    assert not any(e.startswith("undo-") for e in harness.ledger.events())


def test_return_exceptions_puts_each_failure_in_its_place(harness: Harness) -> None:
    harness.gate("reserve-F3").open()
    instance_id = harness.romancy.start_workflow("fulfil", "F3", "return_exceptions")
    with harness.worker():
        result = harness.romancy.result(instance_id, timeout=30)
    assert result == "after:receipt-F3,LabelPrinterJamError,hold-F3"


def test_two_branches_recorded_at_the_same_moment_advance_the_workflow_once(
    harness: Harness,
) -> None:
    store = harness.romancy.storage
    commit = store.commit
    barrier = threading.Barrier(2, timeout=20)
    results: list[CommitResult] = []

    def commit_together(snapshot: Any, write: Any, claim: Any = None, conn: Any = None) -> Any:
        # Both branch commits start only when both are ready, from the same version.
        first_try = claim is not None and claim.command.step_id not in {r[0] for r in seen}
        if first_try and claim.command.name == "g_pair" and write.events:
            seen.append((claim.command.step_id, snapshot.instance.version))
            barrier.wait()
        result = commit(snapshot, write, claim, conn)
        if claim is not None and claim.command.name == "g_pair":
            results.append(result)
        return result

    seen: list[tuple[str, int]] = []
    store.commit = commit_together  # type: ignore[method-assign]
    try:
        instance_id = harness.romancy.start_workflow("pair", "P1")
        with harness.worker():
            assert harness.romancy.result(instance_id, timeout=30) == "after:left+right"
    finally:
        del store.commit

    assert len({version for _, version in seen}) == 1  # both planned from one version
    assert sorted(results) == sorted(
        [CommitResult.COMMITTED, CommitResult.MOVED, CommitResult.COMMITTED]
    )
    assert harness.ledger.count("after:P1") == 1
    assert step_ids(harness, instance_id).count("g_after:1") == 1


def test_branches_share_a_celery_group_and_the_step_that_fanned_out_is_their_parent(
    harness: Harness,
) -> None:
    seen: dict[str, tuple[Any, Any, Any]] = {}

    def on_prerun(sender: Any = None, task_id: Any = None, task: Any = None, **_: Any) -> None:
        if sender is not None and sender.app is harness.app:
            seen[task_id] = (task.name, task.request.group, task.request.parent_id)

    signals.task_prerun.connect(on_prerun, weak=False)
    try:
        instance_id = harness.romancy.start_workflow("label_all", "grp", 3, None)
        with harness.worker():
            harness.romancy.wait(instance_id, timeout=30)
    finally:
        signals.task_prerun.disconnect(on_prerun)
    branches = [v for v in seen.values() if v[0] == "print_label"]
    assert len(branches) == 3
    assert {group for _, group, _ in branches} == {f"{instance_id}:gather:1"}
    # The workflow's start fanned out (no parent); pack's parent is the last branch.
    packs = [v for v in seen.values() if v[0] == "pack"]
    assert len(packs) == 1 and packs[0][2] in seen and seen[packs[0][2]][0] == "print_label"


def test_cancel_during_a_fan_out_sends_nothing_new_and_rolls_back_what_finished(
    harness: Harness,
) -> None:
    instance_id = harness.romancy.start_workflow("held_fan_out", "C1", 4, 2)
    with harness.worker():
        wait_for(
            lambda: sum(e.startswith("held-start:C1/") for e in harness.ledger.events()) == 2,
            30,
            "two branches to start",
        )
        assert harness.romancy.cancel(instance_id, "customer left") is True
        harness.gate("C1").open()
        instance = harness.romancy.wait(instance_id, timeout=30)

    assert instance.status == "cancelled"
    started = sorted(e for e in harness.ledger.events() if e.startswith("held-start:C1/"))
    assert started == ["held-start:C1/0", "held-start:C1/1"]  # the other two never sent
    undone = sorted(e for e in harness.ledger.events() if e.startswith("unlabel:C1/"))
    assert undone == ["unlabel:C1/0", "unlabel:C1/1"]
    assert harness.ledger.count("after:C1") == 0


def test_a_worker_killed_with_eight_branches_in_flight_loses_and_repeats_nothing(
    harness: Harness,
) -> None:
    instance_id = harness.romancy.start_workflow("held_fan_out", "K1", 8, None)
    first = harness.worker_process(concurrency=4).start()
    wait_for(
        lambda: sum(e.startswith("held-start:K1/") for e in harness.ledger.events()) == 4,
        60,
        "four branches to be running",
    )
    first.kill()  # SIGKILL: four bodies interrupted, four messages never started
    interrupted = {
        e.split(":", 1)[1] for e in harness.ledger.events() if e.startswith("held-start:K1/")
    }
    harness.gate("K1").open()
    harness.worker_process(concurrency=4).start()

    instance = harness.romancy.wait(instance_id, timeout=120)

    assert instance.status == "completed"
    assert instance.output_data == "after:8"
    steps = step_ids(harness, instance_id)
    assert sorted(s for s in steps if s.startswith("g_held_label")) == sorted(
        f"g_held_label:{i}" for i in range(1, 9)
    )  # every branch recorded exactly once
    assert steps.count("g_after:1") == 1 and harness.ledger.count("after:K1") == 1
    for i in range(8):
        item = f"K1/{i}"
        assert harness.ledger.count(f"held-done:{item}") == 1
        # Only an interrupted body ran again.
        assert harness.ledger.count(f"held-start:{item}") == (2 if item in interrupted else 1)
    assert harness.romancy.storage.get_steps(instance_id) == []
