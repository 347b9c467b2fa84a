"""The core engine on real services: Redis broker, real workers, SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from celery_romancy import (
    InvalidArgumentsError,
    RomancyError,
    SerializationError,
    UnknownInstanceError,
    UnknownWorkflowError,
)
from celery_romancy.replay import Completed, replay

from .chaos_services import RedisServer
from .conftest import EVERY_DRIVER
from .flows import Currency, Customer, Item, Order, Receipt
from .harness import Harness
from .ledger import wait_for


def step_ids(h: Harness, instance_id: str) -> list[str]:
    return [e.step_id for e in h.romancy.get_history(instance_id)]


@EVERY_DRIVER
def test_three_step_workflow_completes_on_a_celery_worker_process(harness: Harness) -> None:
    instance_id = harness.romancy.start_workflow("order_saga", "A-1")
    harness.worker_process().start()

    instance = harness.romancy.wait(instance_id, timeout=60)

    assert instance.status == "completed"
    assert instance.output_data == {
        "reservation": "R-A-1",
        "charged": 109.97,
        "tracking": "TRACK-A-1",
    }
    assert step_ids(harness, instance_id) == ["reserve:1", "charge:1", "ship:1"]
    assert [harness.ledger.count(f"{s}:A-1") for s in ("reserve", "charge", "ship")] == [1, 1, 1]


def test_statuses_move_from_pending_through_running_to_completed(harness: Harness) -> None:
    instance_id = harness.romancy.start_workflow("held_saga", "S-1")
    assert harness.romancy.get_instance(instance_id).status == "pending"
    assert harness.queued() == 1

    with harness.worker():
        wait_for(lambda: harness.ledger.count("held-start:S-1") == 1, 30, "the held step")
        held = harness.romancy.get_instance(instance_id)
        assert held.status == "running"
        [step] = harness.romancy.storage.get_steps(instance_id)
        assert step.step_id == "held:1" and step.lease_owner is not None
        harness.gate("S-1").open()
        done = harness.romancy.wait(instance_id, timeout=30)

    assert done.status == "completed"
    assert done.output_data == "TRACK-S-1"
    assert harness.romancy.storage.get_steps(instance_id) == []


def test_recorded_steps_do_not_run_again_when_a_killed_workflow_resumes(harness: Harness) -> None:
    instance_id = harness.romancy.start_workflow("held_saga", "K-1")
    first = harness.worker_process().start()
    wait_for(lambda: harness.ledger.count("held-start:K-1") == 1, 60, "the held step to start")

    first.kill()  # SIGKILL mid-step: reserve is recorded, held is not
    assert step_ids(harness, instance_id) == ["reserve:1"]
    harness.gate("K-1").open()
    harness.worker_process().start()

    instance = harness.romancy.wait(instance_id, timeout=90)
    assert instance.status == "completed"
    assert harness.ledger.count("reserve:K-1") == 1  # recorded: replayed, not re-run
    assert harness.ledger.count("held-start:K-1") == 2  # interrupted once, so run twice
    assert harness.ledger.count("held-done:K-1") == 1
    assert harness.ledger.count("ship:K-1") == 1
    assert step_ids(harness, instance_id) == ["reserve:1", "held:1", "ship:1"]


@EVERY_DRIVER
def test_a_duplicate_delivery_is_neither_executed_nor_recorded_twice(harness: Harness) -> None:
    instance_id = harness.romancy.start_workflow("order_saga", "D-1")
    [step] = harness.romancy.storage.get_steps(instance_id)
    token = step.token

    def reserve_outcomes() -> list[str]:
        return [str(o[2]) for o in harness.outcomes if o[0] == "reserve"]

    # The broker hands the first step's message out twice.
    harness.app.send_task("reserve", args=(instance_id, token), queue=harness.queue)
    assert harness.queued() == 2

    with harness.worker():
        harness.romancy.wait(instance_id, timeout=30)
        # And once more, long after the step was recorded.
        harness.app.send_task("reserve", args=(instance_id, token), queue=harness.queue)
        # A copy that arrives while the first is in flight is put back until the lease
        # ends ("Retry in ..."); every copy ends as a dropped duplicate.
        wait_for(
            lambda: reserve_outcomes().count("duplicate") == 2, 30, "both copies to be dropped"
        )

    assert reserve_outcomes().count("recorded") == 1
    assert set(reserve_outcomes()) <= {"recorded", "duplicate"} | {
        o for o in reserve_outcomes() if o.startswith("Retry in")
    }
    assert harness.ledger.count("reserve:D-1") == 1
    assert step_ids(harness, instance_id) == ["reserve:1", "charge:1", "ship:1"]
    assert harness.romancy.get_instance(instance_id).status == "completed"


@pytest.mark.parametrize(
    ("sku", "expected"), [("sku-1", "picked:2"), ("missing-1", "backordered:missing-1x2")]
)
def test_a_caught_activity_error_keeps_its_type_on_replay(
    harness: Harness, sku: str, expected: str
) -> None:
    instance_id = harness.romancy.start_workflow("catching", sku)
    with harness.worker():
        instance = harness.romancy.wait(instance_id, timeout=30)

    assert instance.status == "completed"
    assert instance.output_data == expected
    history = harness.romancy.get_history(instance_id)
    if sku.startswith("missing"):
        # The error was recorded, then the `ship` step replayed through the except branch.
        assert history[0].error is not None
        assert history[0].error["type"] == "tests.flows.OutOfStockError"
        assert [e.step_id for e in history] == ["pick:1", "backorder:1", "ship:1"]
        assert harness.ledger.count(f"backorder:{sku}x2") == 1
    assert harness.ledger.count(f"pick:{sku}") == 1
    assert harness.ledger.count(f"ship:{sku}") == 1
    # Replaying the full history again takes the same path to the same result.
    definition = harness.romancy.registry.workflow("catching")
    assert replay(definition, instance_id, instance.input_data, history) == Completed(expected)


def test_a_terminal_error_fails_the_workflow_without_retries(harness: Harness) -> None:
    instance_id = harness.romancy.start_workflow("refusing", "T-1")
    with harness.worker():
        instance = harness.romancy.wait(instance_id, timeout=30)

    assert instance.status == "failed"
    assert instance.error is not None
    assert instance.error["type"] == "celery_romancy.errors.TerminalError"
    assert instance.error["message"] == "order T-1 refused"
    assert instance.error["step"] == "refuse:1"
    assert harness.ledger.count("refuse:T-1") == 1


def test_nondeterminism_is_detected_and_parks_the_instance(harness: Harness) -> None:
    instance_id = harness.romancy.start_workflow("versioned", "N-1")
    with harness.worker():
        wait_for(lambda: harness.ledger.count("held-start:N-1") == 1, 30, "the held step")
        # A deploy changes the second step while the instance is in flight.
        (harness.folder / "workflow-version").write_text("2")
        harness.gate("N-1").open()
        instance = harness.romancy.wait(instance_id, timeout=30)

    assert instance.status == "failed"
    assert instance.error is not None
    assert instance.error["type"] == "celery_romancy.errors.NonDeterminismError"
    message = instance.error["message"]
    assert instance_id in message
    assert "step #1" in message
    assert "'held:1'" in message and "'charge:1'" in message
    assert harness.ledger.count("charge:N-1") == 0
    assert harness.ledger.count("ship:N-1") == 0
    assert step_ids(harness, instance_id) == ["reserve:1", "held:1"]


def test_starting_the_same_instance_id_twice_runs_it_once(harness: Harness) -> None:
    first = harness.romancy.start_workflow("order_saga", "I-1", instance_id="order-42")
    second = harness.romancy.start_workflow("order_saga", "I-1", instance_id="order-42")

    assert first == second == "order-42"
    assert len(harness.romancy.find_instances()) == 1
    assert harness.queued() == 1
    with harness.worker():
        assert harness.romancy.wait("order-42", timeout=30).status == "completed"
    assert harness.ledger.count("reserve:I-1") == 1
    with pytest.raises(RomancyError, match="already belongs to workflow 'order_saga'"):
        harness.romancy.start_workflow("held_saga", "I-1", instance_id="order-42")


def test_a_redis_result_backend_gets_no_subscription_per_started_workflow(
    database_url: str, tmp_path: Path
) -> None:
    # Celery makes a publisher outside a worker SUBSCRIBE to the result channel of each
    # task it sends (and UNSUBSCRIBE when the AsyncResult is collected) unless the send
    # says the result is ignored. Steps store no result: a web process starting
    # workflows must not pay two pub/sub commands per start for nothing. The Redis
    # server is this test's own: its SUBSCRIBE count is no other process's.
    server = RedisServer(tmp_path).start()
    h = Harness(database_url, tmp_path, broker_url=server.url, result_backend=server.url)
    try:

        def subscribes() -> int:
            stats = h.redis.info("commandstats").get("cmdstat_subscribe", {})
            return int(stats.get("calls", 0))

        before = subscribes()
        started = [h.romancy.start_workflow("order_saga", f"P-{n}") for n in range(3)]
        assert h.queued() == 3
        # The control: a plain task sent the same way, on the same pub/sub connection,
        # after the starts. Its result is held, or collecting it would unsubscribe.
        control = h.app.send_task("not.a.step", queue=h.queue)
        wait_for(lambda: subscribes() > before, 10, "the control's SUBSCRIBE")
        assert subscribes() == before + 1
        with h.worker():
            for instance_id in started:
                assert h.romancy.wait(instance_id, timeout=30).status == "completed"
        assert subscribes() == before + 1
        del control
    finally:
        h.app.backend.result_consumer.stop()
        h.close()
        server.stop()


def test_bad_input_fails_at_the_call_and_writes_nothing(harness: Harness) -> None:
    romancy = harness.romancy
    with pytest.raises(UnknownWorkflowError, match="unknown workflow 'no_such_flow'"):
        romancy.start_workflow("no_such_flow", "x")
    with pytest.raises(SerializationError, match="order_id: unsupported type object"):
        romancy.start_workflow("order_saga", object())
    with pytest.raises(InvalidArgumentsError, match="too many positional arguments"):
        romancy.start_workflow("order_saga", "a", "b")
    with pytest.raises(InvalidArgumentsError, match="missing a required argument: 'order_id'"):
        romancy.start_workflow("order_saga")
    with pytest.raises(InvalidArgumentsError, match="unexpected keyword argument 'color'"):
        romancy.start_workflow("order_saga", "a", color="red")
    with pytest.raises(InvalidArgumentsError, match="instance_id"):
        romancy.start_workflow("order_saga", "a", instance_id="")

    assert romancy.find_instances() == []
    assert harness.queued() == 0
    for call in (romancy.get_instance, romancy.get_history, romancy.wait):
        with pytest.raises(UnknownInstanceError, match="no workflow instance 'nope'"):
            call("nope")


def test_typed_inputs_and_outputs_round_trip(harness: Harness) -> None:
    order = Order(
        "TY-1",
        [Item("mug", 2, Decimal("29.99")), Item("tee", 1, Decimal("49.99"))],
        datetime(2026, 11, 21, 9, 30, tzinfo=UTC),
        Currency.JPY,
    )
    customer = Customer(
        name="Aiko", email="aiko@example.com", since=datetime(2020, 1, 2, tzinfo=UTC)
    )
    instance_id = harness.romancy.start_workflow(
        "typed_order", order, {"carrier": "yamato", "express": True}, customer
    )
    with harness.worker():
        receipt = harness.romancy.result(instance_id, timeout=30)

    assert receipt == Receipt(
        "TY-1", Decimal("109.97"), Currency.JPY, customer, "yamato", order.items
    )
    assert type(receipt.total) is Decimal and type(receipt.customer) is Customer
    assert harness.ledger.count("price-types:Order:Item:Decimal:datetime:Currency:Customer") == 1
    stored = harness.romancy.get_instance(instance_id)
    assert isinstance(stored.output_data, dict)  # storage keeps the JSON form
    assert stored.output_data["total"] == "109.97"
    assert stored.input_data["order"]["items"][0] == {"sku": "mug", "quantity": 2, "price": "29.99"}


def test_a_workflow_without_steps_completes_at_start(harness: Harness) -> None:
    instance_id = harness.romancy.start_workflow("instant", 21)
    instance = harness.romancy.get_instance(instance_id)
    assert instance.status == "completed"
    assert instance.output_data == 42
    assert harness.queued() == 0
