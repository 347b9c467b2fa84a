"""celery_romancy.signals on real workers, SQLite and PostgreSQL: each sent once per
transition, after its commit, in the process that committed it; a receiver that raises
is logged and breaks nothing."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import pytest

from celery_romancy import Romancy, signals

from .harness import Harness
from .ledger import wait_for
from .test_failures import worker_logging_to

WORKFLOW_SIGNALS = {
    "workflow_started": signals.workflow_started,
    "workflow_completed": signals.workflow_completed,
    "workflow_failed": signals.workflow_failed,
    "workflow_cancelled": signals.workflow_cancelled,
    "compensation_failed": signals.compensation_failed,
}
STEP_SIGNALS = {"step_failed": signals.step_failed, "step_recorded": signals.step_recorded}


@dataclass
class Sent:
    """One signal as a receiver got it, with the instance's status read at that moment."""

    name: str
    arguments: dict[str, Any]
    status_then: str | None
    thread: str


@dataclass
class Heard:
    romancy: Romancy
    sent: list[Sent] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def of(self, name: str, instance_id: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [
                s.arguments
                for s in self.sent
                if s.name == name and instance_id in (None, s.arguments["instance_id"])
            ]

    def names(self, instance_id: str) -> list[str]:
        with self.lock:
            return [s.name for s in self.sent if s.arguments["instance_id"] == instance_id]

    def status_at(self, name: str, instance_id: str) -> list[str | None]:
        with self.lock:
            return [
                s.status_then
                for s in self.sent
                if s.name == name and s.arguments["instance_id"] == instance_id
            ]


@pytest.fixture
def heard(harness: Harness) -> Iterator[Heard]:
    """Every romancy signal the harness's Romancy sends, in this process."""
    result = Heard(harness.romancy)
    connected = []
    for name, signal in {**WORKFLOW_SIGNALS, **STEP_SIGNALS}.items():

        def receiver(sender: Any, signal: Any = None, _name: str = name, **kwargs: Any) -> None:
            assert sender is harness.romancy
            instance = sender.storage.get_instance(kwargs["instance_id"])
            with result.lock:
                result.sent.append(
                    Sent(
                        _name,
                        kwargs,
                        instance.status if instance else None,
                        threading.current_thread().name,
                    )
                )

        signal.connect(receiver, sender=harness.romancy, weak=False)
        connected.append((signal, receiver))
    yield result
    for signal, receiver in connected:
        signal.disconnect(receiver, sender=harness.romancy)


def test_a_started_workflow_is_announced_once_by_the_process_that_started_it(
    harness: Harness, heard: Heard
) -> None:
    instance_id = harness.romancy.start_workflow("order_saga", "S-0", instance_id="sig-S-0")
    # Sent by the process that committed the start, before any worker ran.
    assert heard.of("workflow_started") == [{"instance_id": instance_id, "workflow": "order_saga"}]
    assert heard.status_at("workflow_started", instance_id) == ["pending"]
    with heard.lock:
        assert [s.thread for s in heard.sent] == [threading.current_thread().name]
    # Starting the same id again creates nothing: nothing is announced.
    assert harness.romancy.start_workflow("order_saga", "S-0", instance_id="sig-S-0") == instance_id
    assert len(heard.of("workflow_started")) == 1


def test_a_completed_saga_is_announced_once_with_each_step_recorded(
    harness: Harness, heard: Heard
) -> None:
    instance_id = harness.romancy.start_workflow("order_saga", "S-1")
    with harness.worker():
        instance = harness.romancy.wait(instance_id, timeout=30)
        wait_for(lambda: heard.of("workflow_completed", instance_id), 10, "completed")

    assert instance.status == "completed"
    [completed] = heard.of("workflow_completed", instance_id)
    assert completed == {
        "instance_id": instance_id,
        "workflow": "order_saga",
        "output": {"reservation": "R-S-1", "charged": 109.97, "tracking": "TRACK-S-1"},
    }
    # After the commit: the receiver already reads the instance completed.
    assert heard.status_at("workflow_completed", instance_id) == ["completed"]
    recorded = heard.of("step_recorded", instance_id)
    assert [(r["step_id"], r["kind"], r["name"], r["attempt"], r["outcome"]) for r in recorded] == [
        ("reserve:1", "activity", "reserve", 1, "completed"),
        ("charge:1", "activity", "charge", 1, "completed"),
        ("ship:1", "activity", "ship", 1, "completed"),
    ]
    for step in recorded:
        assert step["started_at"].tzinfo is not None
        assert step["started_at"].utcoffset() == UTC.utcoffset(None)
        assert step["started_at"] <= step["finished_at"]
    # The in-process worker's threads sent the step signals, not the test's thread.
    with heard.lock:
        threads = {s.thread for s in heard.sent if s.name == "step_recorded"}
    assert threading.current_thread().name not in threads
    assert not heard.of("step_failed") and not heard.of("workflow_failed")


def test_retried_attempts_send_step_failed_with_will_retry(harness: Harness, heard: Heard) -> None:
    instance_id = harness.romancy.start_workflow("flaky_flow", "K-1", 2)
    with harness.worker():
        assert harness.romancy.result(instance_id, timeout=30) == 3

    failed = heard.of("step_failed", instance_id)
    assert [(f["step_id"], f["attempt"], f["will_retry"]) for f in failed] == [
        ("flaky:1", 1, True),
        ("flaky:1", 2, True),
    ]
    assert failed[0]["error"]["type"] == "tests.saga_flows.FlakyError"
    assert failed[0]["error"]["message"] == "attempt 1 of K-1 failed"
    assert "FlakyError" in failed[0]["error"]["traceback"]
    outcomes = [(r["attempt"], r["outcome"]) for r in heard.of("step_recorded", instance_id)]
    assert outcomes == [(1, "retrying"), (2, "retrying"), (3, "completed")]
    assert harness.ledger.count("flaky:K-1") == 3
    assert len(heard.of("workflow_completed", instance_id)) == 1


def test_a_failed_saga_sends_step_failed_then_workflow_failed_after_its_rollback(
    harness: Harness, heard: Heard
) -> None:
    instance_id = harness.romancy.start_workflow("trip", "T-1", fail_car=True)
    with harness.worker():
        harness.romancy.wait(instance_id, timeout=30)
        wait_for(lambda: heard.of("workflow_failed", instance_id), 10, "workflow_failed")

    [step] = heard.of("step_failed", instance_id)
    assert (step["step_id"], step["attempt"], step["will_retry"]) == ("book_car:1", 1, False)
    assert step["error"]["type"] == "celery_romancy.errors.TerminalError"
    [failed] = heard.of("workflow_failed", instance_id)
    assert failed["status"] == "failed"
    assert failed["error"]["message"] == "no car for T-1"
    assert failed["error"]["step"] == "book_car:1"
    # Sent once the rollback is done: every compensation had run.
    assert heard.status_at("workflow_failed", instance_id) == ["failed"]
    names = heard.names(instance_id)
    assert names.index("step_failed") < names.index("workflow_failed")
    undone = [
        (r["step_id"], r["kind"], r["outcome"])
        for r in heard.of("step_recorded", instance_id)
        if r["kind"] == "compensation"
    ]
    assert undone == [
        ("cancel_hotel:undo:book_hotel:1", "compensation", "completed"),
        ("send_apology:undo:register:send_apology:1", "compensation", "completed"),
        ("cancel_flight:undo:book_flight:1", "compensation", "completed"),
    ]
    assert not heard.of("compensation_failed") and not heard.of("workflow_completed")


def test_a_rollback_parked_in_compensation_failed_sends_both_signals_once(
    harness: Harness, heard: Heard
) -> None:
    (harness.folder / "flight-api-down").touch()
    instance_id = harness.romancy.start_workflow("trip", "T-2", fail_car=True)
    with harness.worker():
        harness.romancy.wait(instance_id, timeout=30)
        wait_for(lambda: heard.of("compensation_failed", instance_id), 10, "the signal")

    [parked] = heard.of("compensation_failed", instance_id)
    assert parked["step_id"] == "book_flight:1"
    assert parked["error"]["type"] == "builtins.ConnectionError"
    assert parked["error"]["message"] == "flight API unreachable"
    [failed] = heard.of("workflow_failed", instance_id)
    assert failed["status"] == "compensation_failed"
    assert failed["error"]["compensation_error"] == parked["error"]
    assert heard.status_at("compensation_failed", instance_id) == ["compensation_failed"]
    undo_attempts = [
        (f["step_id"], f["attempt"], f["will_retry"])
        for f in heard.of("step_failed", instance_id)
        if f["step_id"].startswith("cancel_flight")
    ]
    step_id = "cancel_flight:undo:book_flight:1"
    assert undo_attempts == [(step_id, 1, True), (step_id, 2, True), (step_id, 3, False)]
    assert harness.ledger.count("cancel_flight-failed:T-2") == 3

    # An operator fixes it: the rollback ends, failed, with one more workflow_failed.
    (harness.folder / "flight-api-down").unlink()
    harness.romancy.retry_compensation(instance_id)
    with harness.worker():
        assert harness.romancy.wait(instance_id, timeout=30).status == "failed"
        wait_for(lambda: len(heard.of("workflow_failed", instance_id)) == 2, 10, "failed")
    assert [f["status"] for f in heard.of("workflow_failed", instance_id)] == [
        "compensation_failed",
        "failed",
    ]
    assert len(heard.of("compensation_failed", instance_id)) == 1


def test_a_cancel_with_no_step_in_flight_is_announced_by_the_cancelling_process(
    harness: Harness, heard: Heard
) -> None:
    instance_id = harness.romancy.start_workflow("order_saga", "C-1")
    # No worker: the first step is queued, held by nobody, so the cancel ends it at once.
    harness.romancy.cancel(instance_id, reason="customer changed their mind")

    assert heard.of("workflow_cancelled", instance_id) == [
        {
            "instance_id": instance_id,
            "workflow": "order_saga",
            "reason": "customer changed their mind",
        }
    ]
    assert heard.status_at("workflow_cancelled", instance_id) == ["cancelled"]
    with heard.lock:  # in the test's own thread: no worker ran
        threads = {s.thread for s in heard.sent if s.name == "workflow_cancelled"}
    assert threads == {threading.current_thread().name}


def test_a_cancel_during_a_step_is_announced_once_after_the_rollback(
    harness: Harness, heard: Heard
) -> None:
    instance_id = harness.romancy.start_workflow("held_saga", "C-2")
    with harness.worker():
        wait_for(lambda: harness.ledger.count("held-start:C-2") == 1, 30, "the held step")
        harness.romancy.cancel(instance_id, reason="stop")
        assert not heard.of("workflow_cancelled", instance_id)  # held: not cancelled yet
        harness.gate("C-2").open()
        assert harness.romancy.wait(instance_id, timeout=30).status == "cancelled"
        wait_for(lambda: heard.of("workflow_cancelled", instance_id), 10, "cancelled")
    assert [c["reason"] for c in heard.of("workflow_cancelled", instance_id)] == ["stop"]


def test_children_are_announced_started_and_completed_once_each(
    harness: Harness, heard: Heard
) -> None:
    romancy = harness.romancy
    root = romancy.start_workflow("c_order", "O-1", ["a", "b"], instance_id="sig-tree")
    with harness.worker():
        assert romancy.wait(root, timeout=60).status == "completed"
        wait_for(lambda: heard.of("workflow_completed", root), 10, "the root's end")

    children = {i.instance_id for i in romancy.find_instances(root=root)} - {root}
    assert len(children) == 5  # a payment with its fraud check, three refunds
    started = [s["instance_id"] for s in heard.of("workflow_started") if s["instance_id"] != root]
    assert sorted(started) == sorted(children)  # each once
    # Each started by its parent's commit, in the process and thread that committed it:
    # the payment by the root's start (this test's thread), a refund by a worker.
    with heard.lock:
        started_in = {
            s.arguments["instance_id"]: s.thread for s in heard.sent if s.name == "workflow_started"
        }
    assert started_in["sig-tree/child:c_payment:1"] == threading.current_thread().name
    assert started_in["sig-tree/child:c_refund:1"] != threading.current_thread().name
    completed = [s["instance_id"] for s in heard.of("workflow_completed")]
    assert sorted(completed) == sorted([root, *children])
    # A child's end is announced before the parent it wakes: the root's comes last.
    assert completed[-1] == root
    # The parent's wait for each child is a recorded step like any other.
    waits = [r for r in heard.of("step_recorded", root) if r["kind"] == "child"]
    assert sorted(r["step_id"] for r in waits) == [
        "child:c_payment:1",
        "child:c_refund:1",
        "child:c_refund:2",
        "child:c_refund:3",
    ]
    assert {r["outcome"] for r in waits} == {"completed"}


def test_timers_and_event_waits_are_recorded_steps(harness: Harness, heard: Heard) -> None:
    instance_id = harness.romancy.start_workflow("napper", "N-1", 0.2)
    with harness.worker():
        assert harness.romancy.wait(instance_id, timeout=30).status == "completed"
    [timer] = [r for r in heard.of("step_recorded", instance_id) if r["kind"] == "timer"]
    assert timer["outcome"] == "completed"
    assert timer["started_at"] is not None and timer["started_at"] <= timer["finished_at"]
    assert (timer["finished_at"] - timer["started_at"]).total_seconds() >= 0.2


def test_a_receiver_that_raises_is_logged_and_breaks_nothing(
    harness: Harness, heard: Heard, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("metrics backend down")

    def logged() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "metrics backend down" in r.getMessage()]

    for signal in (signals.step_recorded, signals.workflow_completed):
        signal.connect(broken, sender=harness.romancy, weak=False)
    try:
        with caplog.at_level(logging.ERROR):
            instance_id = harness.romancy.start_workflow("order_saga", "B-1")
            with worker_logging_to(harness, caplog):
                instance = harness.romancy.wait(instance_id, timeout=30)
                wait_for(lambda: heard.of("workflow_completed", instance_id), 10, "completed")
                # The broken receiver of workflow_completed runs after the one that
                # heard it: wait for its log record before the capture ends.
                wait_for(lambda: len(logged()) >= 3 + 1, 10, "the broken receivers' errors")
    finally:
        for signal in (signals.step_recorded, signals.workflow_completed):
            signal.disconnect(broken, sender=harness.romancy)

    assert instance.status == "completed"
    assert harness.ledger.count("ship:B-1") == 1  # each step ran once, nothing redelivered
    # The other receivers got every signal all the same.
    assert len(heard.of("step_recorded", instance_id)) == 3
    raised = logged()
    assert len(raised) == 3 + 1  # each step's step_recorded, the workflow_completed
    assert all(r.exc_info is not None for r in raised)
