"""Business keys: find the saga of order ORD-4, on real workers, SQLite and PostgreSQL.

Keys given to ``start_workflow(search=...)`` are stored with the instance; those a
workflow sets with ``ctx.set_search_attributes`` are recorded once in its history and
stored with its next commit; ``find_instances(search=...)`` needs every pair to match.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from celery_romancy import InvalidArgumentsError, Romancy, UnknownInstanceError, WorkflowContext
from celery_romancy.storage import schema

from .harness import Harness


def found(romancy: Romancy, **search: str) -> list[str]:
    return [i.instance_id for i in romancy.find_instances(search=search)]


def search_rows(romancy: Romancy) -> int:
    """Rows in the search table, of every instance."""
    with romancy.storage.connect() as conn:
        count: int = conn.execute(
            sa.select(sa.func.count()).select_from(schema.search)
        ).scalar_one()
    return count


def register_searchable_order(romancy: Romancy) -> None:
    """A saga that names itself by its order, its reservation and how far it got."""
    reserve = romancy.registry.activity("reserve")
    ship = romancy.registry.activity("ship")

    @romancy.workflow("searchable_order")
    def searchable_order(ctx: WorkflowContext, order_id: str) -> str:
        ctx.set_search_attributes(order_id=order_id)  # before any step: with the start
        reservation: str = reserve.execute(ctx, order_id)
        # Stored with the commit that records ``reserve``. A replay that stored it
        # again would store "replay" (replays pass here with history beyond this call).
        ctx.set_search_attributes(
            {"reservation": reservation, "stage": "reserved"},
            stored_by="replay" if ctx.is_replaying else "first run",
        )
        ship.execute(ctx, order_id)
        ctx.set_search_attributes(stage="shipped")  # replaces "reserved"
        return reservation


def test_the_saga_of_an_order_is_found_by_a_key_given_at_its_start(harness: Harness) -> None:
    romancy = harness.romancy
    ord_4 = romancy.start_workflow(
        "order_saga", "ORD-4", search={"order_id": "ORD-4", "customer": "C-1"}
    )
    ord_5 = romancy.start_workflow(
        "order_saga", "ORD-5", search={"order_id": "ORD-5", "customer": "C-1"}
    )
    # Stored with the start, before any worker ran a step.
    assert found(romancy, order_id="ORD-4") == [ord_4]
    assert romancy.get_instance(ord_4).status == "pending"

    harness.worker_process().start()
    assert romancy.wait(ord_4, timeout=60).status == "completed"
    assert romancy.wait(ord_5, timeout=60).status == "completed"

    assert found(romancy, order_id="ORD-4") == [ord_4]
    assert found(romancy, order_id="ORD-4", customer="C-1") == [ord_4]
    assert found(romancy, customer="C-1") == [ord_5, ord_4]  # newest first
    assert found(romancy, order_id="ORD-4", customer="C-2") == []
    assert [i.instance_id for i in romancy.find_instances("completed", search={})] == [
        ord_5,
        ord_4,
    ]
    assert romancy.search_attributes(ord_4) == {"order_id": "ORD-4", "customer": "C-1"}
    assert romancy.search_attributes(ord_5) == {"order_id": "ORD-5", "customer": "C-1"}
    # Keys given at the start are no step of the saga: its history is its steps.
    assert [e.step_id for e in romancy.get_history(ord_4)] == ["reserve:1", "charge:1", "ship:1"]


def test_a_second_start_of_the_same_id_keeps_the_keys_of_the_first(harness: Harness) -> None:
    romancy = harness.romancy
    first = romancy.start_workflow(
        "order_saga", "ORD-4", instance_id="order-4", search={"order_id": "ORD-4"}
    )
    again = romancy.start_workflow(
        "order_saga", "ORD-4", instance_id="order-4", search={"order_id": "ORD-X", "more": "y"}
    )
    assert first == again == "order-4"
    assert romancy.search_attributes("order-4") == {"order_id": "ORD-4"}
    assert found(romancy, order_id="ORD-X") == []


def test_the_saga_of_an_order_is_found_by_keys_the_workflow_set(harness: Harness) -> None:
    romancy = harness.romancy
    register_searchable_order(romancy)
    ord_4 = romancy.start_workflow("searchable_order", "ORD-4", search={"channel": "web"})
    # The body set order_id before its first step: stored with the start.
    assert romancy.search_attributes(ord_4) == {"channel": "web", "order_id": "ORD-4"}
    ord_5 = romancy.start_workflow("searchable_order", "ORD-5")

    with harness.worker():
        assert romancy.wait(ord_4, timeout=60).status == "completed"
        assert romancy.wait(ord_5, timeout=60).status == "completed"

    assert found(romancy, order_id="ORD-4") == [ord_4]
    assert found(romancy, reservation="R-ORD-4", stage="shipped") == [ord_4]
    assert found(romancy, stage="reserved") == []  # replaced by "shipped"
    assert found(romancy, stage="shipped") == [ord_5, ord_4]
    assert romancy.search_attributes(ord_4) == {
        "channel": "web",
        "order_id": "ORD-4",
        "reservation": "R-ORD-4",
        "stage": "shipped",
        "stored_by": "first run",  # the replays after ship did not store theirs
    }
    # Each call recorded once, in its place among the steps, with what it stored.
    history = romancy.get_history(ord_4)
    assert [e.step_id for e in history] == [
        "set_search_attributes:1",
        "reserve:1",
        "set_search_attributes:2",
        "ship:1",
        "set_search_attributes:3",
    ]
    assert history[2].kind == "search_attributes"
    assert history[2].result == {
        "reservation": "R-ORD-4",
        "stage": "reserved",
        "stored_by": "first run",
    }
    assert search_rows(romancy) == 5 + 4  # one row per key and instance, never more


@pytest.mark.parametrize(
    ("search", "complaint"),
    [
        ({"order_id": 4}, "must be a string"),
        ({4: "ORD-4"}, "must be a string"),
        ({"": "ORD-4"}, "1 to 100 characters"),
        ({"k" * 101: "ORD-4"}, "1 to 100 characters"),
        ({"order_id": "O" * 201}, "1 to 200 characters"),
        ({"order_id": ""}, "1 to 200 characters"),
        ({"order_id": "ORD\x004"}, "control characters"),
        ({"order\nid": "ORD-4"}, "control characters"),
        (["order_id", "ORD-4"], "must be a mapping"),
        ("order_id=ORD-4", "must be a mapping"),
    ],
)
def test_bad_search_input_at_the_start_raises_and_writes_nothing(
    harness: Harness, search: Any, complaint: str
) -> None:
    romancy = harness.romancy
    with pytest.raises(InvalidArgumentsError, match=complaint):
        romancy.start_workflow("order_saga", "ORD-4", instance_id="order-4", search=search)
    with pytest.raises(InvalidArgumentsError, match=complaint):
        romancy.prepare_start("order_saga", "ORD-4", search=search)
    assert romancy.find_instances() == []
    assert search_rows(romancy) == 0
    assert harness.queued() == 0
    if isinstance(search, dict):
        with pytest.raises(InvalidArgumentsError, match=complaint):
            romancy.find_instances(search=search)


def test_bad_search_attributes_in_a_workflow_raise_there_and_store_nothing(
    harness: Harness,
) -> None:
    romancy = harness.romancy
    reserve = romancy.registry.activity("reserve")

    @romancy.workflow("mislabelled")
    def mislabelled(ctx: WorkflowContext, order_id: str) -> str:
        reservation: str = reserve.execute(ctx, order_id)
        try:
            ctx.set_search_attributes(order_id=order_id, amount=12)  # type: ignore[arg-type]
        except InvalidArgumentsError as refused:
            ctx.set_search_attributes(order_id=order_id, refused=type(refused).__name__)
        ctx.set_search_attributes(order_id=order_id, amount=12)  # type: ignore[arg-type]
        return reservation

    instance_id = romancy.start_workflow("mislabelled", "ORD-4")
    with harness.worker():
        instance = romancy.wait(instance_id, timeout=60)

    assert instance.status == "failed"
    assert instance.error is not None
    assert instance.error["type"].endswith("InvalidArgumentsError")
    assert "search attributes[" in instance.error["message"]
    # The refused calls took no place in history and stored nothing; the good one did.
    assert [e.step_id for e in romancy.get_history(instance_id)] == [
        "reserve:1",
        "set_search_attributes:1",
    ]
    assert romancy.search_attributes(instance_id) == {
        "order_id": "ORD-4",
        "refused": "InvalidArgumentsError",
    }


def test_search_attributes_of_an_unknown_instance_is_an_error(harness: Harness) -> None:
    with pytest.raises(UnknownInstanceError):
        harness.romancy.search_attributes("no-such-instance")
