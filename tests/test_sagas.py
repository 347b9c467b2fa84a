"""Sagas: compensations in reverse order, retries, a crash mid-rollback, cancellation."""

from __future__ import annotations

import pytest

from celery_romancy import InstanceStateError

from .conftest import EVERY_DRIVER
from .harness import Harness
from .ledger import wait_for


def effects(h: Harness, trip_id: str) -> list[str]:
    """The ledger lines of one trip, in the order they happened."""
    return [e for e in h.ledger.events() if f":{trip_id}" in e]


@EVERY_DRIVER
def test_a_failed_step_undoes_the_succeeded_ones_newest_first(harness: Harness) -> None:
    instance_id = harness.romancy.start_workflow("trip", "T1", fail_car=True)
    with harness.worker():
        instance = harness.romancy.wait(instance_id, timeout=30)

    assert effects(harness, "T1") == [
        "book_flight:T1:12A",
        "book_hotel-start:T1",
        "book_hotel:T1:3",
        "book_car:T1",
        # book_car failed: it is not compensated. The rest, newest first, with the
        # arguments of the call they undo and (``result``) what it returned.
        "cancel_hotel-start:T1",
        "cancel_hotel:T1:3:HT-T1",
        "send_apology:T1:email",
        "cancel_flight:T1:FL-T1",
    ]
    assert instance.status == "failed"
    assert instance.error is not None
    assert instance.error["type"] == "celery_romancy.errors.TerminalError"
    assert instance.error["message"] == "no car for T1"
    assert instance.error["step"] == "book_car:1"
    records = harness.romancy.storage.get_compensations(instance_id)
    assert [(c.name, c.status) for c in records] == [
        ("cancel_hotel", "done"),
        ("send_apology", "done"),
        ("cancel_flight", "done"),
    ]


def test_a_successful_saga_runs_no_compensation(harness: Harness) -> None:
    instance_id = harness.romancy.start_workflow("trip", "T2")
    with harness.worker():
        instance = harness.romancy.wait(instance_id, timeout=30)
    assert instance.status == "completed"
    assert instance.output_data == {"flight": "FL-T2", "hotel": "HT-T2", "car": "CAR-T2"}
    assert not [e for e in effects(harness, "T2") if e.startswith(("cancel", "send_apology"))]
    assert {c.status for c in harness.romancy.storage.get_compensations(instance_id)} == {
        "registered"
    }


def test_a_rollback_interrupted_by_sigkill_resumes_and_undoes_each_step_once(
    harness: Harness,
) -> None:
    trip = "slowundo-1"
    instance_id = harness.romancy.start_workflow("trip", trip, fail_car=True)
    first = harness.worker_process().start()
    wait_for(
        lambda: harness.ledger.count(f"cancel_hotel-start:{trip}") == 1,
        60,
        "the rollback to reach cancel_hotel",
    )
    assert harness.romancy.get_instance(instance_id).status == "compensating"

    first.kill()
    harness.gate(f"undo-{trip}").open()
    harness.worker_process().start()
    instance = harness.romancy.wait(instance_id, timeout=90)

    assert instance.status == "failed"
    assert instance.error is not None and instance.error["step"] == "book_car:1"
    # cancel_hotel was interrupted once, so its body started twice; its effect, and
    # every other compensation's, happened once.
    assert harness.ledger.count(f"cancel_hotel-start:{trip}") == 2
    assert harness.ledger.count(f"cancel_hotel:{trip}:3:HT-{trip}") == 1
    assert harness.ledger.count(f"send_apology:{trip}:email") == 1
    assert harness.ledger.count(f"cancel_flight:{trip}:FL-{trip}") == 1
    assert [e for e in effects(harness, trip) if not e.startswith("cancel_hotel-start")][-3:] == [
        f"cancel_hotel:{trip}:3:HT-{trip}",
        f"send_apology:{trip}:email",
        f"cancel_flight:{trip}:FL-{trip}",
    ]


def test_a_failing_compensation_parks_the_instance_until_retried(harness: Harness) -> None:
    (harness.folder / "flight-api-down").touch()
    instance_id = harness.romancy.start_workflow("trip", "T3", fail_car=True)
    with harness.worker():
        parked = harness.romancy.wait(instance_id, timeout=30)

        assert parked.status == "compensation_failed"
        assert parked.error is not None
        assert parked.error["type"] == "celery_romancy.errors.TerminalError"
        assert parked.error["compensation_error"]["type"] == "builtins.ConnectionError"
        assert harness.ledger.count("cancel_flight-failed:T3") == 3  # its policy: 3 attempts
        attempts = [
            a
            for a in harness.romancy.storage.get_attempts(instance_id)
            if a.step_id.startswith("cancel_flight")
        ]
        assert [(a.attempt, a.retry_in) for a in attempts] == [(1, 0.05), (2, 0.1)]

        (harness.folder / "flight-api-down").unlink()  # the operator fixes the cause
        harness.romancy.retry_compensation(instance_id)
        finished = harness.romancy.wait(instance_id, timeout=30)

    assert finished.status == "failed"
    assert finished.error is not None and "compensation_error" not in finished.error
    assert finished.error["step"] == "book_car:1"
    assert harness.ledger.count("cancel_flight:T3:FL-T3") == 1
    assert harness.ledger.count("cancel_hotel:T3:3:HT-T3") == 1  # not undone twice
    with pytest.raises(InstanceStateError, match="not compensation_failed"):
        harness.romancy.retry_compensation(instance_id)


@pytest.mark.parametrize(
    ("key", "failures", "error", "status", "runs", "delays"),
    [
        ("recovers", 2, "flaky", "completed", 3, [0.05, 0.1]),
        ("exhausted", 9, "flaky", "failed", 4, [0.05, 0.1, 0.15]),  # capped at max_interval
        ("bad-request", 0, "bad-request", "failed", 1, []),  # non_retryable: never retried
    ],
)
def test_retry_policy_attempts_and_backoff_are_recorded(
    harness: Harness,
    key: str,
    failures: int,
    error: str,
    status: str,
    runs: int,
    delays: list[float],
) -> None:
    instance_id = harness.romancy.start_workflow("flaky_flow", key, failures, error)
    with harness.worker():
        instance = harness.romancy.wait(instance_id, timeout=30)

    assert instance.status == status
    assert harness.ledger.count(f"flaky:{key}") == runs
    attempts = harness.romancy.storage.get_attempts(instance_id)
    assert [a.retry_in for a in attempts] == delays
    assert [a.attempt for a in attempts] == list(range(1, len(delays) + 1))
    [event] = harness.romancy.get_history(instance_id)
    assert event.attempt == runs
    if status == "completed":
        assert instance.output_data == runs
    else:
        assert instance.error is not None
        assert instance.error["type"].endswith(
            "BadRequestError" if error == "bad-request" else "FlakyError"
        )


def test_cancel_stops_at_the_next_step_and_compensates(harness: Harness) -> None:
    trip = "held-C1"
    instance_id = harness.romancy.start_workflow("trip", trip)
    with harness.worker():
        wait_for(
            lambda: harness.ledger.count(f"book_hotel-start:{trip}") == 1,
            30,
            "the hotel step to start",
        )
        assert harness.romancy.cancel(instance_id, "customer changed plans") is True
        assert harness.romancy.cancel(instance_id, "again") is False  # a no-op
        harness.gate(f"hotel-{trip}").open()
        instance = harness.romancy.wait(instance_id, timeout=30)

    assert instance.status == "cancelled"
    assert instance.cancel_reason == "customer changed plans"
    assert harness.ledger.count(f"book_car:{trip}") == 0  # stopped at the boundary
    assert effects(harness, trip)[-4:] == [
        f"cancel_hotel-start:{trip}",
        f"cancel_hotel:{trip}:3:HT-{trip}",
        f"send_apology:{trip}:email",
        f"cancel_flight:{trip}:FL-{trip}",
    ]
    assert harness.romancy.cancel(instance_id, "late") is False  # cancelled twice: no-op


def test_cancel_of_a_queued_instance_ends_it_at_once(harness: Harness) -> None:
    instance_id = harness.romancy.start_workflow("trip", "C2")
    assert harness.romancy.cancel(instance_id, "never mind") is True
    instance = harness.romancy.get_instance(instance_id)
    assert instance.status == "cancelled"  # nothing ran, so nothing to undo
    with harness.worker():
        # The first step's message is still queued: a worker drops it as stale.
        wait_for(
            lambda: any(o[2] == "duplicate" for o in harness.outcomes),
            30,
            "the stale message to be dropped",
        )
    assert harness.ledger.count("book_flight:C2:12A") == 0
    assert harness.romancy.get_history(instance_id) == []


def test_cancel_of_a_finished_instance_is_an_error(harness: Harness) -> None:
    instance_id = harness.romancy.start_workflow("instant", 1)
    with pytest.raises(InstanceStateError, match="already ended completed"):
        harness.romancy.cancel(instance_id, "too late")
