"""Bad input is refused at the call with a clear error, and nothing is written.

Wrong argument types (at a start, an ``execute`` and a ``register_compensation``), an
instance id reused with other arguments, ids and names no column can hold.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from celery_romancy import (
    InvalidArgumentsError,
    PayloadTooLargeError,
    RetryPolicy,
    SerializationError,
    UnknownInstanceError,
    WorkflowAlreadyStartedError,
    WorkflowContext,
)
from celery_romancy.definitions import (
    ActivityDefinition,
    CompensationDefinition,
    WorkflowDefinition,
)
from celery_romancy.replay import Completed, Failed, Waiting, replay
from celery_romancy.storage import HistoryEvent

from .flows import Currency, Customer, Item, Order
from .harness import Harness

NO_RETRY = RetryPolicy(max_attempts=1)
INVALID_ARGUMENTS = "celery_romancy.errors.InvalidArgumentsError"
CUSTOMER = Customer(name="Ada", email="ada@example.com", since=datetime(2020, 1, 1, tzinfo=UTC))
PLACED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def nothing_written(harness: Harness) -> bool:
    return harness.romancy.find_instances() == [] and harness.queued() == 0


# -- argument types at the start ------------------------------------------------------------


def test_a_start_with_an_argument_of_the_wrong_type_is_refused_and_writes_nothing(
    harness: Harness,
) -> None:
    romancy = harness.romancy
    meta = {"carrier": "DHL", "express": False}
    with pytest.raises(
        InvalidArgumentsError,
        match=r"^typed_order\(\): order: expected tests\.flows\.Order, got str 'not-an-order'$",
    ):
        romancy.start_workflow("typed_order", "not-an-order", meta, CUSTOMER)
    wrong_quantity = Order(
        "BI-1", [Item("mug", 1, Decimal("2")), Item("tee", "one", Decimal("3"))], PLACED
    )  # type: ignore[arg-type]
    with pytest.raises(
        InvalidArgumentsError,
        match=r"^typed_order\(\): order\.items\[1\]\.quantity: expected int, got str 'one'$",
    ):
        romancy.start_workflow("typed_order", wrong_quantity, meta, CUSTOMER)
    with pytest.raises(InvalidArgumentsError, match=r"meta: expected .*missing key 'express'"):
        romancy.start_workflow(
            "typed_order", Order("BI-2", [], PLACED), {"carrier": "DHL"}, CUSTOMER
        )
    with pytest.raises(InvalidArgumentsError, match=r"^instant\(\): value: expected int, got str"):
        romancy.prepare_start("instant", "3")  # the check is in the snapshot Django starts from
    assert nothing_written(harness)


def test_a_start_with_arguments_of_the_declared_types_still_runs(harness: Harness) -> None:
    order = Order("BI-3", [Item("mug", 2, Decimal("2.50"))], PLACED, Currency.JPY)
    instance_id = harness.romancy.start_workflow(
        "typed_order", order, {"carrier": "UPS", "express": True}, CUSTOMER
    )
    with harness.worker():
        assert harness.romancy.wait(instance_id, timeout=30).status == "completed"


# -- argument types at an execute inside a workflow ---------------------------------------------


def register_bad_charge(harness: Harness) -> None:
    romancy, ledger = harness.romancy, harness.ledger

    @romancy.compensation("bi_release")
    def bi_release(order_id: str) -> None:
        ledger.record(f"bi_release:{order_id}")

    @romancy.activity("bi_reserve", retry=NO_RETRY, compensation=bi_release)
    def bi_reserve(order_id: str) -> str:
        ledger.record(f"bi_reserve:{order_id}")
        return f"R-{order_id}"

    @romancy.activity("bi_charge", retry=NO_RETRY)
    def bi_charge(order_id: str, amount: float) -> float:
        ledger.record(f"bi_charge:{order_id}")
        return amount

    @romancy.workflow("bi_bad_charge")
    def bi_bad_charge(ctx: WorkflowContext, order_id: str) -> float:
        bi_reserve.execute(ctx, order_id)
        return bi_charge.execute(ctx, order_id, "lots")  # type: ignore[arg-type]


def test_an_execute_with_a_wrong_type_fails_the_workflow_and_sends_no_step(
    harness: Harness,
) -> None:
    register_bad_charge(harness)
    instance_id = harness.romancy.start_workflow("bi_bad_charge", "BI-4")
    with harness.worker():
        instance = harness.romancy.wait(instance_id, timeout=30)

    assert instance.status == "failed"
    assert instance.error is not None
    assert instance.error["type"] == INVALID_ARGUMENTS
    assert instance.error["message"] == "bi_charge(): amount: expected float, got str 'lots'"
    steps = [e.step_id for e in harness.romancy.get_history(instance_id) if e.kind == "activity"]
    assert steps == ["bi_reserve:1"]
    assert harness.ledger.events() == ["bi_reserve:BI-4", "bi_release:BI-4"]


# -- the same checks in replay, without a database ---------------------------------------------


def _charge(order_id: str, amount: float) -> float:
    raise AssertionError("activities do not run during replay")


def _step() -> int:
    raise AssertionError("activities do not run during replay")


def _release(order_id: str, amount: float) -> None:
    raise AssertionError("compensations do not run during replay")


charge = ActivityDefinition("charge", _charge, compensation=None, retry=NO_RETRY, queue=None)
step = ActivityDefinition("step", _step, compensation=None, retry=NO_RETRY, queue=None)
release = CompensationDefinition("release", _release, NO_RETRY, None)


def _registers_badly(ctx: WorkflowContext) -> None:
    ctx.register_compensation(release, "o-1", amount="12")  # type: ignore[arg-type]


def _catches_a_bad_call(ctx: WorkflowContext) -> int:
    with contextlib.suppress(InvalidArgumentsError):
        charge.execute(ctx, "o-1", "lots")  # type: ignore[arg-type]
    result: int = step.execute(ctx)
    return result


def test_register_compensation_with_a_wrong_type_fails_and_records_nothing() -> None:
    outcome = replay(WorkflowDefinition("w", _registers_badly), "bi-5", {}, [])

    assert isinstance(outcome, Failed)
    assert outcome.error["type"] == INVALID_ARGUMENTS
    assert outcome.error["message"] == "release(): amount: expected float, got str '12'"


def test_a_refused_call_takes_no_position_so_replay_stays_deterministic() -> None:
    workflow = WorkflowDefinition("w", _catches_a_bad_call)

    first = replay(workflow, "bi-6", {}, [])
    assert isinstance(first, Waiting)
    assert (first.commands[0].step_id, first.commands[0].seq) == ("step:1", 0)
    recorded = HistoryEvent(seq=0, step_id="step:1", kind="activity", name="step", result=7)
    assert replay(workflow, "bi-6", {}, [recorded]) == Completed(7)


def _waits_for(event_type: str, correlation_id: str | None = None) -> Any:
    def body(ctx: WorkflowContext) -> Any:
        return ctx.wait_event(event_type, correlation_id=correlation_id)

    return WorkflowDefinition("w", body)


def _publishes(event_type: str) -> Any:
    def body(ctx: WorkflowContext) -> None:
        ctx.publish_event(event_type, {"n": 1})

    return WorkflowDefinition("w", body)


@pytest.mark.parametrize(
    ("workflow", "named"),
    [
        (_waits_for("t" * 201), "event_type must be 1 to 200 characters long, not 201"),
        (_waits_for("paid\x00"), "event_type must not contain control characters"),
        (_waits_for("paid", "c" * 201), "correlation_id must be 1 to 200 characters"),
        (_publishes("p" * 201), "event_type must be 1 to 200 characters long, not 201"),
        (_publishes("line\nbreak"), "event_type must not contain control characters"),
    ],
)
def test_event_types_and_correlation_ids_no_column_holds_fail_the_workflow(
    workflow: WorkflowDefinition[Any, Any], named: str
) -> None:
    outcome = replay(workflow, "bi-7", {}, [])

    assert isinstance(outcome, Failed)
    assert outcome.error["type"] == INVALID_ARGUMENTS
    assert named in outcome.error["message"]


# -- the same instance id --------------------------------------------------------------------------


def test_the_same_instance_id_with_other_arguments_is_refused(harness: Harness) -> None:
    romancy = harness.romancy
    assert romancy.start_workflow("order_saga", "I-1", instance_id="order-7") == "order-7"
    assert romancy.start_workflow("order_saga", "I-1", instance_id="order-7") == "order-7"

    with pytest.raises(WorkflowAlreadyStartedError, match="other arguments") as refused:
        romancy.start_workflow("order_saga", "I-2", instance_id="order-7")
    assert refused.value.instance_id == "order-7"
    with pytest.raises(
        WorkflowAlreadyStartedError, match="'order-7' already belongs to workflow 'order_saga'"
    ):
        romancy.start_workflow("held_saga", "I-1", instance_id="order-7")

    assert [i.instance_id for i in romancy.find_instances()] == ["order-7"]
    assert romancy.get_instance("order-7").input_data == {"order_id": "I-1"}
    assert harness.queued() == 1


def test_the_same_instance_id_with_equal_typed_arguments_is_idempotent(harness: Harness) -> None:
    order = Order("BI-8", [Item("mug", 2, Decimal("2.50"))], PLACED, note="gift")
    meta = {"carrier": "UPS", "express": True}
    first = harness.romancy.start_workflow("typed_order", order, meta, CUSTOMER, instance_id="t-8")
    again = harness.romancy.start_workflow("typed_order", order, meta, CUSTOMER, instance_id="t-8")

    assert first == again == "t-8"
    assert harness.queued() == 1


# -- ids, names and text no column can hold -------------------------------------------------


@pytest.mark.parametrize(
    ("instance_id", "message"),
    [
        ("a\x00b", "instance_id must not contain control characters: '\\\\x00' at index 1"),
        ("tab\tid", "instance_id must not contain control characters"),
        ("x" * 101, "instance_id must be 1 to 100 characters long, not 101"),
        ("", "instance_id must be 1 to 100 characters long, not 0"),
        (42, "instance_id must be a string, not int"),
    ],
)
def test_an_instance_id_no_column_holds_is_refused_at_the_start(
    harness: Harness, instance_id: Any, message: str
) -> None:
    with pytest.raises(InvalidArgumentsError, match=message):
        harness.romancy.start_workflow("order_saga", "I-9", instance_id=instance_id)
    assert nothing_written(harness)


def test_a_string_argument_holding_nul_is_refused_naming_its_path(harness: Harness) -> None:
    with pytest.raises(SerializationError, match=r"order_saga\(\): cannot encode order_id: .*x00"):
        harness.romancy.start_workflow("order_saga", "I-\x0010")
    assert nothing_written(harness)


@pytest.mark.parametrize("impossible", ["a\x00b", "x" * 300, "\ud800"])
def test_looking_up_an_impossible_id_answers_unknown_instance(
    harness: Harness, impossible: str
) -> None:
    romancy = harness.romancy
    lookups = (romancy.get_instance, romancy.get_history, romancy.wait, romancy.resume)
    for lookup in lookups:
        with pytest.raises(UnknownInstanceError, match="no workflow instance"):
            lookup(impossible)
    with pytest.raises(UnknownInstanceError):
        romancy.cancel(impossible, "why")


def test_a_cancel_reason_holding_nul_is_refused_and_not_stored(harness: Harness) -> None:
    instance_id = harness.romancy.start_workflow("order_saga", "I-11")
    with pytest.raises(InvalidArgumentsError, match="reason must not contain '\\\\x00'"):
        harness.romancy.cancel(instance_id, "fraud\x00suspected")
    assert harness.romancy.get_instance(instance_id).cancel_reason is None


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("w" * 201, "must be 1 to 200 characters long"),
        ("bad\x00name", "must not contain control characters"),
    ],
)
def test_a_name_no_column_holds_is_refused_at_registration(
    harness: Harness, name: str, message: str
) -> None:
    romancy = harness.romancy
    with pytest.raises(InvalidArgumentsError, match=f"a workflow name {message}"):
        romancy.workflow(name)(lambda ctx: None)
    with pytest.raises(InvalidArgumentsError, match=f"an activity name {message}"):
        romancy.activity(name)(lambda: None)
    with pytest.raises(InvalidArgumentsError, match=f"a compensation name {message}"):
        romancy.compensation(name)(lambda: None)
    assert name not in romancy.registry.workflows
    assert name not in romancy.app.tasks


def test_a_workflow_input_over_max_payload_bytes_is_refused_and_writes_nothing(
    harness: Harness,
) -> None:
    limit = harness.romancy.settings.max_payload_bytes
    with pytest.raises(PayloadTooLargeError, match=r"the workflow input is \d+ bytes as JSON"):
        harness.romancy.start_workflow("order_saga", "x" * limit)
    assert nothing_written(harness)
    harness.romancy.start_workflow("order_saga", "x" * (limit // 2))  # under it: fine
