"""Child workflows and nested sagas on real workers, SQLite and PostgreSQL.

A child is an instance of its own, started by its parent's commit and tied to it: its
end wakes the parent, the parent's rollback undoes it, the parent's close cancels it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from celery_romancy import ChildWorkflowError, Romancy, WorkflowInstance, transition
from celery_romancy import children as child_runtime
from celery_romancy.dispatch import Dispatch
from celery_romancy.states import StepKind

from .child_flows import Payment, Receipt, Verdict
from .harness import Harness
from .ledger import wait_for


def tree(romancy: Romancy, root: str) -> dict[str, WorkflowInstance]:
    return {i.instance_id: i for i in romancy.find_instances(root=root)}


def status_of(romancy: Romancy, instance_id: str) -> str:
    return romancy.get_instance(instance_id).status


def test_parent_child_grandchild_complete_each_started_once_under_duplicate_delivery(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    romancy = harness.romancy
    sent: list[Dispatch] = []
    publish = transition.publish

    def publish_twice(app: Any, dispatch: Dispatch) -> bool:
        # The broker hands every step message out twice.
        sent.append(dispatch)
        return publish(app, dispatch) and publish(app, dispatch)

    monkeypatch.setattr(transition, "publish", publish_twice)
    root = romancy.start_workflow("c_order", "O-1", ["a", "b"], instance_id="tree-1")

    with harness.worker():
        receipt = romancy.result(root, timeout=60)
        wait_for(lambda: "duplicate" in [str(o[2]) for o in harness.outcomes], 30, "a dup")

    assert receipt == Receipt(
        "O-1",
        Payment("O-1", 20.0, Verdict("O-1", 7)),
        ["refunded:a", "refunded:b", "refunded:O-1-late"],
    )
    assert type(receipt.payment.verdict) is Verdict  # typed through two levels
    payment, fraud = "tree-1/child:c_payment:1", "tree-1/child:c_payment:1/child:c_fraud:1"
    refunds = [f"tree-1/child:c_refund:{n}" for n in (1, 2, 3)]
    instances = tree(romancy, root)
    assert set(instances) == {root, payment, fraud, *refunds}
    assert {i.status for i in instances.values()} == {"completed"}
    assert instances[fraud].parent_instance_id == payment
    assert instances[fraud].root_instance_id == root
    assert [i.instance_id for i in romancy.find_instances(parent=payment)] == [fraud]
    # Every message went out twice, and yet each body ran and was recorded once.
    assert len(sent) == 6  # score, charge, three refunds, note
    for effect in ("score:O-1", "charge:O-1", "note:O-1", "refund-item:a", "refund-item:b"):
        assert harness.ledger.count(effect) == 1, effect
    assert harness.ledger.count("refund-item:O-1-late") == 1
    for instance_id in instances:
        steps = [e.step_id for e in romancy.get_history(instance_id)]
        assert len(steps) == len(set(steps))
    parent_history = {e.step_id: e for e in romancy.get_history(root)}
    assert parent_history["child:c_payment:1"].result["instance_id"] == payment
    assert romancy.storage.get_steps(root) == []


@pytest.mark.parametrize("catch", [True, False])
def test_a_child_that_fails_raises_child_workflow_error_with_its_cause(
    harness: Harness, catch: bool
) -> None:
    romancy = harness.romancy
    parent = romancy.start_workflow("c_catching", f"declined-{catch}", catch)

    with harness.worker():
        instance = romancy.wait(parent, timeout=60)

    child = f"{parent}/child:c_payment:1"
    assert status_of(romancy, child) == "failed"
    cause = "tests.child_flows.CardDeclinedError"
    message = f"card declined for declined-{catch} (insufficient-funds)"
    if catch:
        assert instance.status == "completed"
        assert romancy.result(parent) == f"failed:{cause}:{message}"
        assert harness.ledger.count(f"undo-reserve:declined-{catch}") == 0
    else:
        assert instance.status == "failed"
        assert instance.error is not None
        assert instance.error["type"] == "celery_romancy.errors.ChildWorkflowError"
        recorded = romancy.get_history(parent)[-1]
        error = ChildWorkflowError(**recorded.error["state"])  # type: ignore[index]
        assert (error.instance_id, error.status) == (child, "failed")
        assert error.error is not None and error.error["type"] == cause
        assert error.error["message"] == message
        # Rolled back: the parent's own step is undone once.
        assert harness.ledger.count(f"undo-reserve:declined-{catch}") == 1


def test_a_parent_rollback_undoes_its_completed_children_in_order(harness: Harness) -> None:
    romancy = harness.romancy
    parent = romancy.start_workflow("c_two_children", "t")

    with harness.worker():
        instance = romancy.wait(parent, timeout=60)
        first, second = f"{parent}/child:c_leaf:1", f"{parent}/child:c_leaf:2"
        wait_for(
            lambda: {status_of(romancy, first), status_of(romancy, second)} == {"compensated"},
            30,
            "both children compensated",
        )

    assert instance.status == "failed"
    undone = [line for line in harness.ledger.events() if line.startswith("undo:")]
    # Newest first, each child's own compensations at the child's place in the order.
    assert undone == [
        "undo:t.k2.b",
        "undo:t.k2.a",
        "undo:t.p2",
        "undo:t.k1.b",
        "undo:t.k1.a",
        "undo:t.p1",
    ]
    compensations = romancy.storage.get_compensations(parent)
    assert {(c.step_id, c.kind, c.status) for c in compensations if c.kind == "child"} == {
        ("child:c_leaf:1", "child", "done"),
        ("child:c_leaf:2", "child", "done"),
    }
    for child in (first, second):
        assert [c.status for c in romancy.storage.get_compensations(child)] == ["done", "done"]
        assert romancy.get_instance(child).output_data is not None  # its result is kept


def test_a_child_whose_undo_fails_parks_its_parent_until_an_operator_retries(
    harness: Harness,
) -> None:
    romancy = harness.romancy
    parent = romancy.start_workflow("c_undo_fails", "uf")
    child = f"{parent}/child:c_fragile_leaf:1"

    with harness.worker():
        parked = romancy.wait(parent, timeout=30)
        assert parked.status == "compensation_failed"
        assert status_of(romancy, child) == "compensation_failed"
        assert parked.error is not None
        assert parked.error["message"] == "uf.boom failed"  # the saga's own error stays
        cause = parked.error["compensation_error"]
        assert cause["type"] == "celery_romancy.errors.ChildWorkflowError"
        assert child in cause["message"] and "cannot undo uf yet" in cause["message"]
        assert harness.ledger.count("undo:uf.p") == 0  # the rollback stopped at the child

        harness.gate("fixed-uf").open()
        romancy.retry_compensation(parent)  # retries the child's own rollback
        ended = romancy.wait(parent, timeout=30)

    assert ended.status == "failed"
    assert ended.error is not None and "compensation_error" not in ended.error
    assert status_of(romancy, child) == "compensated"
    assert harness.ledger.count("undo-fragile:uf") == 1
    assert harness.ledger.count("undo:uf.p") == 1


def _wait_for_status(romancy: Romancy, instance_id: str, status: str) -> None:
    wait_for(
        lambda: (
            romancy.storage.get_instance(instance_id) is not None
            and status_of(romancy, instance_id) == status
        ),
        30,
        f"{instance_id} to be {status}",
    )


def test_cancelling_a_parent_cancels_its_waiting_child_which_compensates_first(
    harness: Harness,
) -> None:
    romancy = harness.romancy
    parent = romancy.start_workflow("c_waits_on_child", "cx", "cancel")
    child = f"{parent}/child:c_waiter:1"

    with harness.worker():
        _wait_for_status(romancy, child, "waiting_for_event")
        assert romancy.cancel(parent, "customer changed their mind")
        parent_end = romancy.wait(parent, timeout=30)

    assert parent_end.status == "cancelled"
    assert parent_end.error is None  # the cancel is the cause, not the child it cancelled
    assert status_of(romancy, child) == "cancelled"
    assert romancy.get_instance(child).cancel_reason == f"parent {parent} closed"
    [recorded] = [e for e in romancy.get_history(parent) if e.kind == "child"]
    assert recorded.error is not None
    assert recorded.error["state"]["cancel_reason"] == f"parent {parent} closed"
    undone = [line for line in harness.ledger.events() if line.startswith("undo:")]
    assert undone == ["undo:cx.w", "undo:cx.p"]  # the child's first: it is newer


def test_an_abandoned_child_runs_on_after_its_parent_is_cancelled(harness: Harness) -> None:
    romancy = harness.romancy
    parent = romancy.start_workflow("c_waits_on_child", "ab", "abandon")
    child = f"{parent}/child:c_waiter:1"

    with harness.worker():
        _wait_for_status(romancy, child, "waiting_for_event")
        romancy.cancel(parent)
        assert romancy.wait(parent, timeout=30).status == "cancelled"
        assert status_of(romancy, child) == "waiting_for_event"
        romancy.send_event("c_go", {"ok": True}, correlation_id="ab")
        assert romancy.result(child, timeout=30) == "done:ab"

    assert romancy.get_instance(child).parent_close == "abandon"
    assert harness.ledger.count("undo:ab.w") == 0
    assert harness.ledger.count("undo:ab.p") == 1


def test_a_parent_that_fails_cancels_its_running_child_and_waits_before_rolling_back(
    harness: Harness,
) -> None:
    romancy = harness.romancy
    parent = romancy.start_workflow("c_fails_beside_child", "fb")
    child = f"{parent}/child:c_waiter:1"

    with harness.worker():
        _wait_for_status(romancy, child, "waiting_for_event")
        harness.gate("fb").open()  # now the parent's step fails
        parent_end = romancy.wait(parent, timeout=30)

    assert parent_end.status == "failed"
    assert parent_end.error is not None and parent_end.error["message"] == "fb failed"
    assert status_of(romancy, child) == "cancelled"
    undone = [line for line in harness.ledger.events() if line.startswith("undo:")]
    assert undone == ["undo:fb.w", "undo:fb.p"]  # the child compensated before the parent


@pytest.mark.parametrize("parent_close", ["cancel", "abandon"])
def test_a_parent_that_completes_closes_its_running_child_as_told(
    harness: Harness, parent_close: str
) -> None:
    romancy = harness.romancy
    tag = f"ff-{parent_close}"
    parent = romancy.start_workflow("c_fire_and_forget", tag, parent_close)

    with harness.worker():
        child = romancy.result(parent, timeout=30)
        if parent_close == "cancel":
            assert romancy.wait(child, timeout=30).status == "cancelled"
        else:
            _wait_for_status(romancy, child, "waiting_for_event")
            romancy.send_event("c_go", None, correlation_id=tag)
            assert romancy.result(child, timeout=30) == f"done:{tag}"

    assert romancy.get_instance(parent).status == "completed"
    assert romancy.storage.get_steps(parent) == []


@pytest.mark.parametrize(
    ("how", "error_type"),
    [
        ("unknown", "celery_romancy.errors.UnknownWorkflowError"),
        ("unencodable", "celery_romancy.errors.SerializationError"),
    ],
)
def test_bad_child_input_fails_the_parent_at_the_call_and_starts_nothing(
    harness: Harness, how: str, error_type: str
) -> None:
    romancy = harness.romancy
    parent = romancy.start_workflow("c_bad_child", how)

    with harness.worker():
        instance = romancy.wait(parent, timeout=30)

    assert instance.status == "failed"
    assert instance.error is not None and instance.error["type"] == error_type
    assert romancy.find_instances(parent=parent) == []
    assert harness.ledger.count(f"undo:bad-{how}.p") == 1  # the parent rolled back


def test_a_child_id_another_instance_has_fails_the_start_in_the_parent(
    harness: Harness,
) -> None:
    romancy = harness.romancy
    taken = romancy.start_workflow("c_refund", "theirs", instance_id="taken-1")
    parent = romancy.start_workflow("c_taken_id", "taken-1")

    with harness.worker():
        assert romancy.result(parent, timeout=30) == "WorkflowAlreadyStartedError"
        assert romancy.result(taken, timeout=30) == "refunded:theirs"

    assert romancy.get_instance(taken).parent_instance_id is None
    assert harness.ledger.count("refund-item:mine") == 0


# -- recovery: the process died right after the commit -------------------------------------


def _lose(monkeypatch: pytest.MonkeyPatch, name: str) -> Callable[[], None]:
    """Make ``children.<name>`` fail as if its process died after the commit before it;
    returns a function that heals it."""
    original = getattr(child_runtime, name)

    def lost(*_: Any, **__: Any) -> None:
        raise ConnectionError(f"{name} lost")

    monkeypatch.setattr(child_runtime, name, lost)
    return lambda: monkeypatch.setattr(child_runtime, name, original)


def _recover_until(romancy: Romancy, done: Callable[[], bool], what: str) -> None:
    reconciled = []

    def recovered() -> bool:
        reconciled.append(romancy.recover().children_reconciled)
        return done()

    wait_for(recovered, 30, what)
    assert sum(reconciled) >= 1  # the sweep, nothing else, passed it on


@pytest.fixture
def quick(database_url: str, tmp_path: Any) -> Any:
    h = Harness(database_url, tmp_path, romancy_dispatch_timeout=0.5, romancy_lease_timeout=2)
    yield h
    h.close()


def test_recovery_wakes_a_parent_whose_childs_end_was_lost(
    quick: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    romancy = quick.romancy
    heal = _lose(monkeypatch, "notify_parent")
    parent = romancy.start_workflow("c_payment", "lost-wake", 3.0)
    child = f"{parent}/child:c_fraud:1"

    with quick.worker():
        _wait_for_status(romancy, child, "completed")
        [step] = romancy.storage.get_steps(parent)
        assert step.kind is StepKind.CHILD  # the parent still waits: nobody woke it
        assert status_of(romancy, parent) == "running"  # its first step was the child
        heal()
        _recover_until(romancy, lambda: status_of(romancy, parent) == "completed", "recovery")

    assert romancy.result(parent) == Payment("lost-wake", 3.0, Verdict("lost-wake", 7))


def test_recovery_cancels_a_child_whose_parents_cancel_was_lost(
    quick: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    romancy = quick.romancy
    parent = romancy.start_workflow("c_waits_on_child", "lc", "cancel")
    child = f"{parent}/child:c_waiter:1"

    with quick.worker():
        _wait_for_status(romancy, child, "waiting_for_event")
        heal = _lose(monkeypatch, "cancel_child")
        romancy.cancel(parent)
        assert romancy.get_instance(child).cancel_reason is None  # the cancel was lost
        heal()
        _recover_until(romancy, lambda: status_of(romancy, parent) == "cancelled", "recovery")

    assert status_of(romancy, child) == "cancelled"
    assert quick.ledger.count("undo:lc.w") == 1


def test_recovery_begins_the_undo_of_a_child_when_the_kick_was_lost(
    quick: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    romancy = quick.romancy
    heal = _lose(monkeypatch, "begin_undo")
    parent = romancy.start_workflow("c_two_children", "lu")
    second = f"{parent}/child:c_leaf:2"

    with quick.worker():
        wait_for(
            lambda: any(s.kind is StepKind.UNDO_CHILD for s in romancy.storage.get_steps(parent)),
            30,
            "the parent to wait for its child's undo",
        )
        assert status_of(romancy, second) == "completed"  # nobody began it
        heal()
        _recover_until(romancy, lambda: status_of(romancy, parent) == "failed", "recovery")

    assert status_of(romancy, second) == "compensated"
    assert status_of(romancy, f"{parent}/child:c_leaf:1") == "compensated"
    assert quick.ledger.count("undo:lu.k2.b") == 1
