"""Replay without Celery or a database: workflow code against hand-written history."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

from celery_romancy.commands import ActivityCommand
from celery_romancy.context import WorkflowContext
from celery_romancy.definitions import ActivityDefinition, WorkflowDefinition
from celery_romancy.errors import (
    ActivityError,
    InvalidArgumentsError,
    NonDeterminismError,
    SerializationError,
)
from celery_romancy.failures import describe_error, rebuild_error
from celery_romancy.replay import Completed, Diverged, Failed, Waiting, replay, replay_recording
from celery_romancy.retry import RetryPolicy
from celery_romancy.states import StepKind
from celery_romancy.storage import HistoryEvent

# -- activities (never run here: replay only decides, the engine runs) ----------------------


@dataclass
class Quote:
    sku: str
    price: Decimal


class PaymentDeclinedError(Exception):
    """A custom error type, importable from this module, with more than one argument."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(reason, code)
        self.reason = reason
        self.code = code


def activity(name: str, fn: Any, queue: str | None = None) -> ActivityDefinition[Any, Any]:
    return ActivityDefinition(name, fn, compensation=None, retry=RetryPolicy(), queue=queue)


def _quote(sku: str, quantity: int = 1) -> Quote:
    raise AssertionError("activities do not run during replay")


def _charge(order_id: str, amount: Decimal, email: str) -> str:
    raise AssertionError("activities do not run during replay")


def _notify(message: str) -> None:
    raise AssertionError("activities do not run during replay")


def _step() -> int:
    raise AssertionError("activities do not run during replay")


quote = activity("quote", _quote)
charge = activity("charge", _charge, queue="payments")
notify = activity("notify", _notify)
a = activity("a", _step)
b = activity("b", _step)


def done(seq: int, step_id: str, result: Any = None) -> HistoryEvent:
    name = step_id.split(":")[0]
    return HistoryEvent(seq=seq, step_id=step_id, kind="activity", name=name, result=result)


def failed(seq: int, step_id: str, error: dict[str, Any]) -> HistoryEvent:
    name = step_id.split(":")[0]
    return HistoryEvent(seq=seq, step_id=step_id, kind="activity", name=name, error=error)


# -- workflows -------------------------------------------------------------------------------


@dataclass
class Order:
    order_id: str
    sku: str
    email: str


@dataclass
class Receipt:
    order_id: str
    total: Decimal
    payment: str


def _checkout(ctx: WorkflowContext, order: Order, quantity: int) -> Receipt:
    first = quote.execute(ctx, order.sku, quantity)
    # The recorded result comes back as the declared dataclass, with a Decimal inside.
    assert isinstance(first, Quote), type(first)
    assert isinstance(first.price, Decimal), type(first.price)
    second = quote.execute(ctx, order.sku, quantity=2)
    total = first.price * quantity + second.price
    payment = charge.execute(ctx, order.order_id, total, order.email)
    return Receipt(order.order_id, total, payment)


checkout = WorkflowDefinition("checkout", _checkout)
ORDER_INPUT = {
    "order": {"order_id": "o-1", "sku": "sku-9", "email": "c@example.com"},
    "quantity": 3,
}


def test_empty_history_asks_for_the_first_step() -> None:
    outcome = replay(checkout, "inst-1", ORDER_INPUT, [])

    assert outcome == Waiting(
        (
            ActivityCommand(
                kind="activity",
                name="quote",
                step_id="quote:1",
                seq=0,
                arguments={"sku": "sku-9", "quantity": 3},
                queue=None,
                attempt=1,
            ),
        )
    )


def test_recorded_results_come_back_typed_and_the_next_step_follows_them() -> None:
    history = [done(0, "quote:1", {"sku": "sku-9", "price": "2.50"})]

    outcome = replay(checkout, "inst-1", ORDER_INPUT, history)

    # Same activity, second call: the second step id of that name, at the next position.
    assert isinstance(outcome, Waiting)
    assert outcome.commands[0].step_id == "quote:2"
    assert outcome.commands[0].seq == len(history) == 1
    assert outcome.commands[0].arguments == {"sku": "sku-9", "quantity": 2}

    history.append(done(1, "quote:2", {"sku": "sku-9", "price": "1.25"}))
    outcome = replay(checkout, "inst-1", ORDER_INPUT, history)

    assert isinstance(outcome, Waiting)
    assert outcome.commands[0].name == "charge"
    assert outcome.commands[0].step_id == "charge:1"
    assert outcome.commands[0].seq == len(history) == 2
    assert outcome.commands[0].queue == "payments"
    # 2.50 * 3 + 1.25, computed from typed Decimals, stored as JSON.
    assert outcome.commands[0].arguments == {
        "order_id": "o-1",
        "amount": "8.75",
        "email": "c@example.com",
    }


def test_all_steps_recorded_completes_with_the_json_output() -> None:
    history = [
        done(0, "quote:1", {"sku": "sku-9", "price": "2.50"}),
        done(1, "quote:2", {"sku": "sku-9", "price": "1.25"}),
        done(2, "charge:1", "pay-77"),
    ]

    outcome = replay(checkout, "inst-1", ORDER_INPUT, history)

    assert outcome == Completed({"order_id": "o-1", "total": "8.75", "payment": "pay-77"})


# -- recorded errors ---------------------------------------------------------------------------

seen_errors: list[BaseException] = []


def _charge_or_notify(ctx: WorkflowContext, order_id: str) -> str:
    try:
        return charge.execute(ctx, order_id, Decimal("5"), "c@example.com")
    except PaymentDeclinedError as exc:
        seen_errors.append(exc)
        notify.execute(ctx, f"declined: {exc.reason}")
        return "declined"


def _charge_only(ctx: WorkflowContext, order_id: str) -> str:
    return charge.execute(ctx, order_id, Decimal("5"), "c@example.com")


charge_or_notify = WorkflowDefinition("charge_or_notify", _charge_or_notify)
charge_only = WorkflowDefinition("charge_only", _charge_only)
DECLINED = describe_error(PaymentDeclinedError("card expired", 51), "charge:1")


@pytest.fixture(autouse=True)
def _clear_seen_errors() -> None:
    seen_errors.clear()


def test_recorded_error_is_reraised_with_its_type_and_args_and_can_be_caught() -> None:
    assert DECLINED["type"] == f"{__name__}.PaymentDeclinedError"

    history = [failed(0, "charge:1", DECLINED)]

    outcome = replay(charge_or_notify, "inst-2", {"order_id": "o-2"}, history)

    [error] = seen_errors
    assert type(error) is PaymentDeclinedError
    assert error.args == ("card expired", 51)
    assert (error.reason, error.code) == ("card expired", 51)
    # The same branch as the first run took: the fallback activity is next.
    assert outcome == Waiting(
        (
            ActivityCommand(
                kind="activity",
                name="notify",
                step_id="notify:1",
                seq=1,
                arguments={"message": "declined: card expired"},
            ),
        )
    )
    finished = replay(
        charge_or_notify,
        "inst-2",
        {"order_id": "o-2"},
        [failed(0, "charge:1", DECLINED), done(1, "notify:1")],
    )
    assert finished == Completed("declined")


def test_recorded_error_not_caught_fails_with_the_recorded_record() -> None:
    outcome = replay(charge_only, "inst-3", {"order_id": "o-3"}, [failed(0, "charge:1", DECLINED)])

    assert isinstance(outcome, Failed)
    assert outcome.error == DECLINED
    assert outcome.error["type"] == f"{__name__}.PaymentDeclinedError"
    assert outcome.error["message"] == str(PaymentDeclinedError("card expired", 51))
    assert outcome.error["step"] == "charge:1"


def _fails_in_body(ctx: WorkflowContext) -> int:
    value: int = a.execute(ctx)
    raise ValueError(f"bad value {value}")


def test_error_raised_by_the_body_itself_fails_naming_the_last_step() -> None:
    outcome = replay(WorkflowDefinition("body", _fails_in_body), "inst-4", {}, [done(0, "a:1", 7)])

    assert isinstance(outcome, Failed)
    assert outcome.error["type"] == "builtins.ValueError"
    assert outcome.error["message"] == "bad value 7"
    assert outcome.error["step"] == "a:1"


# -- nondeterminism ------------------------------------------------------------------------------


def _calls_b(ctx: WorkflowContext) -> int:
    result: int = b.execute(ctx)
    return result


def _swallows(ctx: WorkflowContext) -> str:
    try:
        b.execute(ctx)
    except Exception:  # noqa: BLE001 - the point: user code swallowing everything
        return "swallowed"
    return "not reached"


def _calls_a_once(ctx: WorkflowContext) -> int:
    result: int = a.execute(ctx)
    return result


def test_a_different_call_at_a_recorded_position_diverges() -> None:
    history = [done(0, "a:1", 1)]

    outcome = replay(WorkflowDefinition("w", _calls_b), "inst-nd-1", {}, history)

    assert isinstance(outcome, Diverged)
    assert isinstance(outcome.error, NonDeterminismError)
    message = str(outcome.error)
    assert "inst-nd-1" in message
    assert "#0" in message
    assert "'a:1'" in message
    assert "'b:1'" in message
    assert (outcome.error.position, outcome.error.recorded, outcome.error.called) == (
        0,
        "a:1",
        "b:1",
    )


def test_swallowing_the_nondeterminism_error_still_diverges() -> None:
    outcome = replay(WorkflowDefinition("w", _swallows), "inst-nd-2", {}, [done(0, "a:1", 1)])

    assert isinstance(outcome, Diverged)
    assert (outcome.error.position, outcome.error.recorded, outcome.error.called) == (
        0,
        "a:1",
        "b:1",
    )


def test_finishing_before_the_end_of_history_diverges() -> None:
    history = [done(0, "a:1", 1), done(1, "b:1", 2)]

    outcome = replay(WorkflowDefinition("w", _calls_a_once), "inst-nd-3", {}, history)

    assert isinstance(outcome, Diverged)
    assert outcome.error.position == 1
    assert outcome.error.recorded == "b:1"
    assert "inst-nd-3" in str(outcome.error)
    assert "'b:1'" in str(outcome.error)


# -- bad calls inside the workflow ----------------------------------------------------------------


def _wrong_arity(ctx: WorkflowContext) -> str:
    result: str = charge.execute(ctx, "o-5")  # type: ignore[call-arg]
    return result


def _unserialisable(ctx: WorkflowContext) -> None:
    notify.execute(ctx, object())


def test_wrong_argument_count_fails_with_invalid_arguments() -> None:
    outcome = replay(WorkflowDefinition("w", _wrong_arity), "inst-5", {}, [])

    assert isinstance(outcome, Failed)
    assert outcome.error["type"] == (
        f"{InvalidArgumentsError.__module__}.{InvalidArgumentsError.__qualname__}"
    )
    assert "amount" in outcome.error["message"]


def test_unserialisable_argument_fails_with_serialization_error() -> None:
    outcome = replay(WorkflowDefinition("w", _unserialisable), "inst-6", {}, [])

    assert isinstance(outcome, Failed)
    assert outcome.error["type"] == (
        f"{SerializationError.__module__}.{SerializationError.__qualname__}"
    )
    assert "message" in outcome.error["message"]


# -- rebuilding recorded errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    "type_name",
    ["no_such_package_xyz.errors.GoneError", f"{__name__}.NoSuchError", "GoneError"],
)
def test_rebuild_error_of_an_unimportable_type_is_an_activity_error(type_name: str) -> None:
    error = rebuild_error({"type": type_name, "message": "it broke", "args": ["it broke"]})

    assert type(error) is ActivityError
    assert error.type_name == type_name
    assert error.message == "it broke"
    assert type_name in str(error)
    assert "it broke" in str(error)


def test_rebuild_error_of_an_importable_type_restores_it() -> None:
    error = rebuild_error(DECLINED)

    assert type(error) is PaymentDeclinedError
    assert error.args == ("card expired", 51)


# -- gather: which branches run, in what order results come back --------------------------


def _label(item: str) -> str:
    raise AssertionError("activities do not run during replay")


label = activity("label", _label)
MARKER = HistoryEvent(0, "gather:1", "gather", "gather", result=["label", "label", "label"])


def _labels(ctx: WorkflowContext, limit: int | None) -> list[str]:
    return ctx.map(label, ["x", "y", "z"], max_concurrency=limit)


labels = WorkflowDefinition("labels", _labels)


def sent(outcome: Any) -> list[str]:
    assert isinstance(outcome, Waiting), outcome
    return [command.step_id for command in outcome.commands]


def test_a_gather_sends_every_branch_with_its_own_step_id_and_one_group() -> None:
    replayed = replay_recording(labels, "g-1", {"limit": None}, [])
    outcome, recorded = replayed.outcome, replayed.events
    assert sent(outcome) == ["label:1", "label:2", "label:3"]
    assert isinstance(outcome, Waiting)
    assert [c.seq for c in outcome.commands] == [1, 2, 3]
    assert [c.arguments for c in outcome.commands] == [{"item": i} for i in "xyz"]
    assert {c.group_id for c in outcome.commands} == {"g-1:gather:1"}
    assert [(e.step_id, e.result) for e in recorded] == [("gather:1", ["label"] * 3)]


def test_max_concurrency_sends_the_first_free_branches_in_argument_order() -> None:
    assert sent(replay(labels, "g-2", {"limit": 2}, [MARKER])) == ["label:1", "label:2"]
    # label:2 finished first: label:3 takes its slot; label:1 is still on its way.
    history = [MARKER, done(2, "label:2", "y")]
    assert sent(replay(labels, "g-2", {"limit": 2}, history, {"label:1"})) == [
        "label:1",
        "label:3",
    ]


def test_results_come_back_in_argument_order_whatever_order_they_were_recorded_in() -> None:
    history = [MARKER, done(3, "label:3", "Z"), done(1, "label:1", "X"), done(2, "label:2", "Y")]
    assert replay(labels, "g-3", {"limit": None}, history) == Completed(["X", "Y", "Z"])


def test_a_failed_branch_waits_for_those_in_flight_then_raises_the_first_failure() -> None:
    error = describe_error(PaymentDeclinedError("card expired", 51), "label:2")
    history = [MARKER, failed(2, "label:2", error)]
    # label:1 and label:3 still run: nothing new is sent, nothing is decided.
    assert sent(replay(labels, "g-4", {"limit": None}, history, {"label:1", "label:3"})) == []
    history += [done(1, "label:1", "X"), done(3, "label:3", "Z")]
    outcome = replay(labels, "g-4", {"limit": None}, history)
    assert isinstance(outcome, Failed)
    assert outcome.error["type"].endswith("PaymentDeclinedError")


def test_a_failed_branch_stops_the_branches_not_yet_sent() -> None:
    error = describe_error(PaymentDeclinedError("card expired", 51), "label:1")
    history = [MARKER, failed(1, "label:1", error)]
    # With max_concurrency=1, label:2 and label:3 were never sent: the gather raises.
    outcome = replay(labels, "g-5", {"limit": 1}, history)
    assert isinstance(outcome, Failed)


def test_an_empty_gather_returns_no_results_without_a_step() -> None:
    def _nothing(ctx: WorkflowContext) -> list[Any]:
        return ctx.gather() + ctx.map(label, [])

    replayed = replay_recording(WorkflowDefinition("none", _nothing), "g-6", {}, [])
    outcome, recorded = replayed.outcome, replayed.events
    assert outcome == Completed([])
    assert recorded == []


def test_changing_the_branches_of_a_recorded_gather_is_nondeterminism() -> None:
    def _four(ctx: WorkflowContext) -> list[str]:
        return ctx.map(label, ["w", "x", "y", "z"])

    history = [MARKER, done(1, "label:1", "X")]
    outcome = replay(WorkflowDefinition("labels", _four), "g-7", {}, history)
    assert isinstance(outcome, Diverged)
    assert "gather of ['label', 'label', 'label']" in str(outcome.error)

    def _other(ctx: WorkflowContext) -> list[Any]:
        return ctx.gather(label.s("x"), a.s(), label.s("z"))

    outcome = replay(WorkflowDefinition("labels", _other), "g-7", {}, history)
    assert isinstance(outcome, Diverged)


# -- child workflows: started with the next commit, their end recorded at their place ------


def _child_body(ctx: WorkflowContext, amount: Decimal) -> Quote:
    raise AssertionError("a child's body does not run in its parent's replay")


child = WorkflowDefinition("child_pay", _child_body)


def _parent(ctx: WorkflowContext, mode: str) -> Any:
    if mode == "wait":
        return ctx.execute_child(child, Decimal("9.50"))
    handle = ctx.start_child(child, Decimal("1"), parent_close="abandon")
    quote = ctx.execute(quoted, "sku-1")
    return [handle.instance_id, quote.price, handle.result().price]


quoted = activity("quote", _quote)
parent = WorkflowDefinition("parent", _parent)


def _registry() -> Any:
    from celery_romancy.registry import Registry

    registry = Registry()
    for definition in (child, parent, quoted):
        registry.add(definition)
    return registry


def child_done(seq: int, step_id: str, instance_id: str, output: Any) -> HistoryEvent:
    result = {"instance_id": instance_id, "output": output}
    return HistoryEvent(seq, step_id, "child", "child_pay", result=result)


def test_execute_child_starts_the_child_with_a_derived_id_and_waits() -> None:
    replayed = replay_recording(parent, "p-1", {"mode": "wait"}, [], (), _registry())
    assert replayed.outcome == Waiting(())  # nothing to send: the child's end wakes it
    [start] = replayed.started
    assert (start.step_id, start.seq, start.name) == ("child:child_pay:1", 0, "child_pay")
    assert start.arguments == {
        "instance_id": "p-1/child:child_pay:1",
        "parent_close": "cancel",
        "input": {"amount": "9.50"},
    }
    # Replayed while the child runs: not started again.
    again = replay_recording(
        parent, "p-1", {"mode": "wait"}, [], {"child:child_pay:1"}, _registry()
    )
    assert again.outcome == Waiting(()) and again.started == []


def test_a_recorded_child_returns_its_typed_output_or_raises_child_workflow_error() -> None:
    output = {"sku": "s", "price": "9.50"}
    history = [child_done(0, "child:child_pay:1", "p-2/child:child_pay:1", output)]
    assert replay(parent, "p-2", {"mode": "wait"}, history) == Completed(
        {"sku": "s", "price": "9.50"}
    )
    from celery_romancy.errors import ChildWorkflowError

    cause = describe_error(PaymentDeclinedError("no funds", 51), "charge:1")
    error = ChildWorkflowError("p-2/child:child_pay:1", "child_pay", "failed", cause)
    failed_child = HistoryEvent(
        0, "child:child_pay:1", "child", "child_pay", error=describe_error(error)
    )
    outcome = replay(parent, "p-2", {"mode": "wait"}, [failed_child])
    assert isinstance(outcome, Failed)
    rebuilt = rebuild_error(outcome.error)
    assert isinstance(rebuilt, ChildWorkflowError)
    assert rebuilt.status == "failed" and rebuilt.error is not None
    assert rebuilt.error["type"] == f"{__name__}.PaymentDeclinedError"


def test_start_child_goes_on_and_its_result_can_arrive_after_later_steps() -> None:
    replayed = replay_recording(parent, "p-3", {"mode": "start"}, [], (), _registry())
    # The child starts and the next step is sent in the same commit.
    assert [c.step_id for c in replayed.started] == ["child:child_pay:1"]
    assert sent(replayed.outcome) == ["quote:1"]
    # The quote is recorded first; the child still runs: wait for it, start nothing.
    quote = done(1, "quote:1", {"sku": "sku-1", "price": "3"})
    later = replay_recording(
        parent, "p-3", {"mode": "start"}, [quote], {"child:child_pay:1"}, _registry()
    )
    assert later.outcome == Waiting(()) and later.started == []
    # Recorded at its own position (0), after the quote (1).
    ended = child_done(0, "child:child_pay:1", "p-3/child:child_pay:1", {"sku": "c", "price": "1"})
    assert replay(parent, "p-3", {"mode": "start"}, [quote, ended]) == Completed(
        ["p-3/child:child_pay:1", "3", "1"]
    )


def test_another_child_at_a_recorded_position_is_nondeterminism() -> None:
    other = WorkflowDefinition("other_child", _child_body)

    def _changed(ctx: WorkflowContext) -> Any:
        return ctx.execute_child(other, Decimal("1"))

    history = [child_done(0, "child:child_pay:1", "x/child:child_pay:1", {})]
    outcome = replay(WorkflowDefinition("parent", _changed), "p-4", {}, history)
    assert isinstance(outcome, Diverged)


def test_bad_child_input_fails_the_parent_at_the_call_without_a_start() -> None:
    def _bad(ctx: WorkflowContext, how: str) -> Any:
        if how == "unknown":
            return ctx.execute_child("nobody", 1)
        if how == "policy":
            return ctx.start_child(child, Decimal("1"), parent_close="linger")
        return ctx.execute_child(child, "not a decimal")

    bad = WorkflowDefinition("bad", _bad)
    for how, error_type in [
        ("unknown", "UnknownWorkflowError"),
        ("policy", "InvalidArgumentsError"),
        ("type", "InvalidArgumentsError"),
    ]:
        replayed = replay_recording(bad, "p-5", {"how": how}, [], (), _registry())
        assert isinstance(replayed.outcome, Failed), how
        assert replayed.outcome.error["type"].endswith(error_type), how
        assert replayed.started == []


def test_a_child_signature_in_a_gather_can_choose_its_id_and_parent_close() -> None:
    def _gathered(ctx: WorkflowContext) -> Any:
        return ctx.gather(
            child.s(Decimal("1")).set(instance_id="refund-A", parent_close="abandon"),
            child.s(Decimal("2")),
        )

    replayed = replay_recording(WorkflowDefinition("g", _gathered), "p-6", {}, [], (), _registry())
    assert isinstance(replayed.outcome, Waiting)
    assert [
        (c.kind, c.arguments["instance_id"], c.arguments["parent_close"])
        for c in replayed.outcome.commands
    ] == [
        (StepKind.CHILD, "refund-A", "abandon"),
        (StepKind.CHILD, "p-6/child:child_pay:2", "cancel"),
    ]
    assert {c.group_id for c in replayed.outcome.commands} == {"p-6:gather:1"}
