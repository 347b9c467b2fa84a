"""The storage contract: every backend (SQLite and PostgreSQL, via ``store``) must pass it."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from celery_romancy.commands import ActivityCommand
from celery_romancy.recorded import registration, search_event
from celery_romancy.states import Status, StepKind
from celery_romancy.storage import (
    ChildStart,
    Claim,
    CommitResult,
    HistoryEvent,
    NewStep,
    StepWrite,
    Store,
    open_store,
    schema,
)
from celery_romancy.storage.migrate import VERSION_TABLE, current_revision, head_revision
from celery_romancy.storage.postgres import PostgresStore
from celery_romancy.storage.records import InstanceChange

from .conftest import empty_database
from .services import PG_ADMIN_URL, create_pg_database, drop_pg_database, pg_engine


@pytest.fixture(params=["sqlite", "postgresql", "postgresql-unprepared", "psycopg"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Every backend; PostgreSQL also as behind PgBouncer (no prepared statements), and
    on psycopg 3 (``postgresql+psycopg://``)."""
    dialect, _, variant = request.param.partition("-")
    opened = open_store(
        empty_database(dialect, request, tmp_path), prepared_statements=variant != "unprepared"
    )
    yield opened
    opened.dispose()


COMMAND = ActivityCommand(StepKind.ACTIVITY, "a", "a:1", 0, {})
LONG_LEASE = 300.0
EXPIRED_LEASE = -1.0  # a lease that is already over when it is granted


def new_instance(store: Store, instance_id: str, *tokens: str, **overrides: Any) -> Any:
    """An instance with a step in flight per token (``t1`` if none is named)."""
    values: dict[str, Any] = {
        "instance_id": instance_id,
        "workflow_name": "wf",
        "status": "pending",
        "input_data": {},
        **overrides,
    }
    steps = [
        NewStep(token, replace(COMMAND, step_id=f"a:{i}", seq=i - 1), schema.utcnow())
        for i, token in enumerate(tokens or ("t1",), start=1)
    ]
    instance, created = store.create_instance(values, StepWrite(add_steps=steps))
    assert created
    return instance


def event(seq: int = 0, step_id: str = "a:1", result: Any = None, **kw: Any) -> HistoryEvent:
    name = step_id.split(":")[0]
    return HistoryEvent(seq=seq, step_id=step_id, kind="activity", name=name, result=result, **kw)


def wait_for(condition: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def history_rows(store: Store, instance_id: str) -> int:
    h = schema.history
    with store.connect() as conn:
        count: int = conn.execute(
            sa.select(sa.func.count()).select_from(h).where(h.c.instance_id == instance_id)
        ).scalar_one()
    return count


def commit(store: Store, claim: Claim, write: StepWrite, conn: Any = None) -> CommitResult:
    """Commit a step as planned from its own claim's snapshot."""
    return store.commit(claim.snapshot, write, claim, conn)


# -- instances ---------------------------------------------------------------------------


def test_create_instance_is_idempotent_and_does_not_overwrite(store: Store) -> None:
    first = new_instance(store, "i1", input_data={"order": 1})
    assert first.instance_id == "i1"
    assert first.version == 0
    assert first.input_data == {"order": 1}
    [step] = store.get_steps("i1")
    assert (step.token, step.step_id, step.kind, step.command) == ("t1", "a:1", "activity", COMMAND)

    again, created_again = store.create_instance(
        {"instance_id": "i1", "workflow_name": "other", "status": "running", "input_data": {}},
        StepWrite(add_steps=[NewStep("t2", COMMAND, None)]),
    )
    assert created_again is False
    assert again == first
    assert store.get_instance("i1") == first
    assert [s.token for s in store.get_steps("i1")] == ["t1"]


def test_get_instance_of_unknown_id_is_none(store: Store) -> None:
    assert store.get_instance("no-such-instance") is None


def test_find_instances_filters_limits_and_orders_newest_first(store: Store) -> None:
    base = schema.utcnow()
    specs = [
        ("f1", "wf_a", "pending"),
        ("f2", "wf_a", "running"),
        ("f3", "wf_b", "completed"),
        ("f4", "wf_a", "completed"),
    ]
    # Explicit, distinct creation times: the ordering under test cannot tie.
    for offset, (iid, workflow, status) in enumerate(specs):
        new_instance(
            store,
            iid,
            workflow_name=workflow,
            status=status,
            created_at=base + timedelta(seconds=offset),
        )

    def ids(found: list[Any]) -> list[str]:
        return [i.instance_id for i in found]

    assert ids(store.find_instances()) == ["f4", "f3", "f2", "f1"]
    assert ids(store.find_instances(status="completed")) == ["f4", "f3"]
    assert ids(store.find_instances(status=["pending", "running"])) == ["f2", "f1"]
    assert ids(store.find_instances(workflow="wf_a")) == ["f4", "f2", "f1"]
    assert ids(store.find_instances(status="completed", workflow="wf_b")) == ["f3"]
    assert ids(store.find_instances(limit=2)) == ["f4", "f3"]
    assert ids(store.find_instances(status="failed")) == []


# -- business keys ---------------------------------------------------------------------


def test_business_keys_start_with_the_instance_and_the_workflows_own_replace_them(
    store: Store,
) -> None:
    # The start's keys, then a key the body set before its first step: the body's wins.
    set_early = search_event(0, "set_search_attributes:1", {"region": "us", "tier": "gold"})
    store.create_instance(
        {"instance_id": "k1", "workflow_name": "wf", "status": "pending", "input_data": {}},
        StepWrite(
            add_steps=[NewStep("t1", replace(COMMAND, seq=1), schema.utcnow())],
            events=[set_early],
            search={"order_id": "ORD-4", "region": "eu"},
        ),
    )
    assert store.get_search_attributes("k1") == {
        "order_id": "ORD-4",
        "region": "us",
        "tier": "gold",
    }
    # A second start of the same id writes nothing, its keys included.
    _, created = store.create_instance(
        {"instance_id": "k1", "workflow_name": "wf", "status": "pending", "input_data": {}},
        StepWrite(search={"order_id": "ORD-5"}),
    )
    assert created is False
    assert store.get_search_attributes("k1")["order_id"] == "ORD-4"

    # A step's commit (PostgreSQL: the one-statement path) upserts what the replay set.
    claim = store.claim("k1", "t1", "worker-a", LONG_LEASE)
    assert claim is not None
    set_later = search_event(2, "set_search_attributes:2", {"tier": "silver", "desk": "7"})
    write = StepWrite(events=[event(seq=1, result=1), set_later])
    assert commit(store, claim, write) is CommitResult.COMMITTED
    assert store.get_search_attributes("k1") == {
        "desk": "7",
        "order_id": "ORD-4",
        "region": "us",
        "tier": "silver",
    }
    # A commit of no claim (an operator's; the generic path on every backend) too.
    snapshot = store.snapshot("k1")
    assert snapshot is not None
    set_last = search_event(3, "set_search_attributes:3", {"desk": "8"})
    assert store.commit(snapshot, StepWrite(events=[set_last])) is CommitResult.COMMITTED
    assert store.get_search_attributes("k1")["desk"] == "8"
    assert [e.kind for e in store.get_history("k1")] == [
        "search_attributes",
        "activity",
        "search_attributes",
        "search_attributes",
    ]
    assert store.get_search_attributes("no-such-instance") == {}


def test_a_child_started_by_a_commit_gets_the_keys_its_body_set(store: Store) -> None:
    new_instance(store, "p1")
    claim = store.claim("p1", "t1", "worker-a", LONG_LEASE)
    assert claim is not None
    child = ChildStart(
        {"instance_id": "p1/child:1", "workflow_name": "wf", "status": "pending", "input_data": {}},
        StepWrite(events=[search_event(0, "set_search_attributes:1", {"order_id": "ORD-4"})]),
    )
    write = StepWrite(events=[event(result=1)], children=[child])
    assert commit(store, claim, write) is CommitResult.COMMITTED
    assert store.get_search_attributes("p1/child:1") == {"order_id": "ORD-4"}
    assert store.get_search_attributes("p1") == {}


def test_find_instances_by_business_keys_needs_every_pair_to_match(store: Store) -> None:
    base = schema.utcnow()
    keys = {
        "s1": {"order_id": "ORD-4", "region": "eu"},
        "s2": {"order_id": "ORD-4", "region": "us"},
        "s3": {"order_id": "ORD-5", "region": "eu"},
        "s4": {},
    }
    for offset, (iid, search) in enumerate(keys.items()):
        store.create_instance(
            {
                "instance_id": iid,
                "workflow_name": "wf_b" if iid == "s2" else "wf_a",
                "status": "pending",
                "input_data": {},
                "created_at": base + timedelta(seconds=offset),
            },
            StepWrite(search=search),
        )

    def ids(**criteria: Any) -> list[str]:
        return [i.instance_id for i in store.find_instances(**criteria)]

    assert ids(search={"order_id": "ORD-4"}) == ["s2", "s1"]
    assert ids(search={"order_id": "ORD-4", "region": "eu"}) == ["s1"]
    assert ids(search={"region": "eu"}) == ["s3", "s1"]
    assert ids(search={"order_id": "ORD-4", "region": "asia"}) == []
    assert ids(search={"order_id": "ORD-4"}, workflow="wf_b") == ["s2"]
    assert ids(search={"order_id": "ORD-4"}, limit=1) == ["s2"]
    assert ids(search={"ORDER_ID": "ORD-4"}) == []  # keys and values match exactly
    assert ids(search={}) == ["s4", "s3", "s2", "s1"]


def test_find_instances_by_business_key_uses_the_key_value_index(store: Store) -> None:
    store.create_instance(
        {"instance_id": "x1", "workflow_name": "wf", "status": "pending", "input_data": {}},
        StepWrite(search={"order_id": "ORD-4"}),
    )
    k = schema.search
    lookup = sa.select(k.c.instance_id).where(k.c.key == "order_id", k.c.value == "ORD-4")
    with store.connect() as conn:
        sql = str(lookup.compile(conn, compile_kwargs={"literal_binds": True}))
        if store.dialect_name == "postgresql":
            # Its planner reads a table of a few rows whole: ask how it would use an index.
            conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
            plan = conn.execute(sa.text(f"EXPLAIN {sql}"))
        else:
            plan = conn.execute(sa.text(f"EXPLAIN QUERY PLAN {sql}"))
        text = " ".join(str(row) for row in plan)
    assert "ix_romancy_search_key_value" in text


def test_history_rows_keep_when_their_step_began_and_the_task_that_ran_it(
    store: Store,
) -> None:
    new_instance(store, "w1", "t1", "t2")
    began = schema.utcnow() - timedelta(seconds=3)
    claim = store.claim("w1", "t1", "worker-a", LONG_LEASE)
    assert claim is not None
    timed = event(result=1, started_at=began, task_id="t1")
    assert commit(store, claim, StepWrite(events=[timed])) is CommitResult.COMMITTED
    # Read back by every reader: the plain query, a snapshot, and the next claim
    # (PostgreSQL reads the history of those two as JSON).
    claim_2 = store.claim("w1", "t2", "worker-b", LONG_LEASE)
    assert claim_2 is not None
    snapshot = store.snapshot("w1")
    assert snapshot is not None
    for history in (store.get_history("w1"), snapshot.history, claim_2.history):
        [recorded] = history
        assert (recorded.started_at, recorded.task_id) == (began, "t1")
        assert recorded.started_at is not None and recorded.started_at.tzinfo is not None
    untimed = event(seq=1, step_id="a:2", result=2)
    assert commit(store, claim_2, StepWrite(events=[untimed])) is CommitResult.COMMITTED
    last = store.get_history("w1")[-1]
    assert (last.started_at, last.task_id) == (None, None)


# -- claim -------------------------------------------------------------------------------


def test_claim_with_matching_token_takes_the_step_lease_and_reads_the_instance(
    store: Store,
) -> None:
    new_instance(store, "c1", "t1", "t2")
    # Some history to come back with the claim, written out of seq order.
    with store.transaction() as conn:
        for seq, step in [(1, "b:1"), (0, "a:1"), (3, "a:2")]:
            conn.execute(
                sa.insert(schema.history).values(
                    instance_id="c1",
                    seq=seq,
                    step_id=step,
                    kind="activity",
                    name=step.split(":")[0],
                    result={"n": seq},
                    attempt=1,
                    created_at=schema.utcnow(),
                )
            )

    claim = store.claim("c1", "t1", "worker-a", LONG_LEASE)

    assert isinstance(claim, Claim)
    assert claim.worker_id == "worker-a"
    assert claim.epoch == claim.step.epoch == 1
    assert claim.step.token == "t1" and claim.command == COMMAND
    assert claim.step.lease_owner == "worker-a"
    assert claim.step.lease_expires_at is not None
    assert claim.step.lease_expires_at > schema.utcnow()
    assert claim.instance.status == "running"
    assert claim.instance.version == 0
    assert [e.seq for e in claim.history] == [0, 1, 3]
    assert [e.step_id for e in claim.history] == ["a:1", "b:1", "a:2"]
    assert [e.result for e in claim.history] == [{"n": 0}, {"n": 1}, {"n": 3}]
    # The siblings in flight come with the claim, the claimed one among them.
    assert sorted((s.token, s.step_id) for s in claim.snapshot.steps) == [
        ("t1", "a:1"),
        ("t2", "a:2"),
    ]
    stored = store.get_instance("c1")
    assert stored is not None
    assert (stored.status, stored.version) == ("running", 0)
    by_token = {s.token: s for s in store.get_steps("c1")}
    assert (by_token["t1"].lease_owner, by_token["t1"].epoch) == ("worker-a", 1)
    assert (by_token["t2"].lease_owner, by_token["t2"].epoch) == (None, 0)


def test_claim_keeps_a_non_pending_status(store: Store) -> None:
    new_instance(store, "c2", status="compensating")
    claim = store.claim("c2", "t1", "worker-a", LONG_LEASE)
    assert claim is not None
    assert claim.instance.status == "compensating"


def test_claim_with_wrong_token_returns_none(store: Store) -> None:
    before = new_instance(store, "c3")
    assert store.claim("c3", "not-the-token", "worker-a", LONG_LEASE) is None
    assert store.claim("other-instance", "t1", "worker-a", LONG_LEASE) is None
    assert store.get_instance("c3") == before


def test_claim_of_unknown_instance_returns_none(store: Store) -> None:
    assert store.claim("nobody", "t1", "worker-a", LONG_LEASE) is None


def test_claim_is_exclusive_while_the_lease_is_live(store: Store) -> None:
    new_instance(store, "c4", "t1", "t2")
    first = store.claim("c4", "t1", "worker-a", LONG_LEASE)
    assert first is not None
    assert store.claim("c4", "t1", "worker-b", LONG_LEASE) is None
    # The same worker given the same message again is a duplicate too.
    assert store.claim("c4", "t1", "worker-a", LONG_LEASE) is None
    # A sibling step has a lease of its own.
    assert store.claim("c4", "t2", "worker-b", LONG_LEASE) is not None
    assert store.lease_held_for("c4", "t1") is not None
    assert store.lease_held_for("c4", "no-such-token") is None


def test_claim_after_lease_expiry_is_a_takeover_with_a_higher_epoch(store: Store) -> None:
    new_instance(store, "c5")
    first = store.claim("c5", "t1", "worker-a", 0.01)
    assert first is not None

    second = wait_for(
        lambda: store.claim("c5", "t1", "worker-b", LONG_LEASE), what="the lease to expire"
    )

    assert second.worker_id == "worker-b"
    assert second.epoch == first.epoch + 1
    assert second.step.lease_owner == "worker-b"
    assert second.step.takeovers == 1
    assert second.instance.status == "running"


# -- commit ------------------------------------------------------------------------------


def test_commit_records_the_step_ends_it_and_raises_the_version(store: Store) -> None:
    new_instance(store, "m1")
    claim = store.claim("m1", "t1", "worker-a", LONG_LEASE)
    assert claim is not None
    write = StepWrite(
        instance_changes=InstanceChange(status=Status.COMPLETED, output_data={"total": 3}),
        events=[event(result={"ok": True})],
    )

    assert commit(store, claim, write) is CommitResult.COMMITTED

    stored = store.get_instance("m1")
    assert stored is not None
    assert stored.status == "completed"
    assert stored.output_data == {"total": 3}
    assert stored.version == 1
    assert store.get_steps("m1") == []
    [recorded] = store.get_history("m1")
    assert (recorded.seq, recorded.step_id, recorded.kind, recorded.name) == (
        0,
        "a:1",
        "activity",
        "a",
    )
    assert recorded.result == {"ok": True}
    assert recorded.error is None
    assert recorded.worker_id == "worker-a"
    assert recorded.created_at is not None


def test_commit_adds_the_steps_that_follow(store: Store) -> None:
    new_instance(store, "m3")
    claim = store.claim("m3", "t1", "worker-a", LONG_LEASE)
    assert claim is not None
    branches = [
        NewStep(f"b{i}", replace(COMMAND, step_id=f"b:{i}", seq=i), schema.utcnow()) for i in (1, 2)
    ]
    write = StepWrite(events=[event(result=1)], add_steps=branches)
    assert commit(store, claim, write) is CommitResult.COMMITTED
    assert sorted(s.token for s in store.get_steps("m3")) == ["b1", "b2"]


def test_commit_is_fenced_after_a_takeover(store: Store) -> None:
    new_instance(store, "m2")
    claim_a = store.claim("m2", "t1", "worker-a", EXPIRED_LEASE)
    assert claim_a is not None
    claim_b = store.claim("m2", "t1", "worker-b", LONG_LEASE)
    assert claim_b is not None
    assert claim_b.epoch == claim_a.epoch + 1
    before = store.get_instance("m2")

    late = StepWrite(
        instance_changes=InstanceChange(status=Status.COMPLETED, output_data="from-a"),
        events=[event(result="from-a")],
        registrations=[registration(0, "a:1", "undo_a", {})],
        attempt={"step_id": "a:1", "attempt": 1, "error": {"type": "X"}, "retry_in": 1.0},
    )
    assert commit(store, claim_a, late) is CommitResult.FENCED

    assert store.get_instance("m2") == before
    assert store.get_history("m2") == []
    assert store.get_compensations("m2") == []
    assert store.get_attempts("m2") == []

    assert commit(store, claim_b, StepWrite(events=[event(result="from-b")])) is (
        CommitResult.COMMITTED
    )
    [recorded] = store.get_history("m2")
    assert (recorded.result, recorded.worker_id) == ("from-b", "worker-b")
    assert store.get_steps("m2") == []
    # The commit ended the step: the claim cannot commit a second time.
    fresh = store.snapshot("m2")
    assert fresh is not None
    assert store.commit(fresh, StepWrite(events=[event(1, "b:1")]), claim_b) is CommitResult.FENCED
    assert history_rows(store, "m2") == 1


def test_a_commit_planned_from_an_older_version_has_moved_and_writes_nothing(
    store: Store,
) -> None:
    """Two branches recorded from the same snapshot: the second must plan again."""
    new_instance(store, "v1", "t1", "t2")
    first = store.claim("v1", "t1", "worker-a", LONG_LEASE)
    second = store.claim("v1", "t2", "worker-b", LONG_LEASE)
    assert first is not None and second is not None
    assert first.instance.version == second.instance.version == 0

    assert commit(store, first, StepWrite(events=[event(0, "a:1", 1)])) is CommitResult.COMMITTED
    stale = StepWrite(
        instance_changes=InstanceChange(status=Status.COMPLETED),
        events=[event(1, "a:2", 2)],
        registrations=[registration(1, "a:2", "undo_a", {})],
    )
    assert commit(store, second, stale) is CommitResult.MOVED
    assert [e.step_id for e in store.get_history("v1")] == ["a:1"]
    assert store.get_compensations("v1") == []
    assert [s.token for s in store.get_steps("v1")] == ["t2"]  # still the claim's
    fresh = store.snapshot("v1")
    assert fresh is not None and fresh.instance.version == 1
    assert [s.step_id for s in fresh.history] == ["a:1"]
    # Planned again from the fresh snapshot, it goes through.
    assert store.commit(fresh, stale, second) is CommitResult.COMMITTED
    stored = store.get_instance("v1")
    assert stored is not None and (stored.status, stored.version) == ("completed", 2)


def test_an_operator_commit_ends_only_unleased_steps(store: Store) -> None:
    new_instance(store, "o1", "t1", "t2")
    assert store.claim("o1", "t1", "worker-a", LONG_LEASE) is not None
    snapshot = store.snapshot("o1")
    assert snapshot is not None
    assert {s.token: s.leased for s in snapshot.steps} == {"t1": True, "t2": False}

    held = StepWrite(remove_steps=["t1", "t2"])
    assert store.commit(snapshot, held) is CommitResult.MOVED
    assert sorted(s.token for s in store.get_steps("o1")) == ["t1", "t2"]
    assert store.commit(snapshot, StepWrite(remove_steps=["t2"])) is CommitResult.COMMITTED
    assert [s.token for s in store.get_steps("o1")] == ["t1"]


def test_history_is_unique_per_instance_and_step_id(store: Store) -> None:
    new_instance(store, "u1", "t1", "t2")
    first = store.claim("u1", "t1", "worker-a", LONG_LEASE)
    assert first is not None
    assert commit(store, first, StepWrite(events=[event(0, "a:1", result=1)])) is (
        CommitResult.COMMITTED
    )

    second = store.claim("u1", "t2", "worker-b", LONG_LEASE)
    assert second is not None
    duplicate = StepWrite(
        instance_changes=InstanceChange(status=Status.COMPLETED),
        events=[event(1, "a:1", result=2)],
    )
    assert commit(store, second, duplicate) is CommitResult.FENCED

    assert history_rows(store, "u1") == 1
    [recorded] = store.get_history("u1")
    assert (recorded.seq, recorded.result, recorded.worker_id) == (0, 1, "worker-a")
    stored = store.get_instance("u1")
    assert stored is not None
    assert stored.status == "running"  # the rejected commit changed nothing


def test_same_step_id_in_another_instance_is_allowed(store: Store) -> None:
    for iid in ("u2", "u3"):
        new_instance(store, iid)
        claim = store.claim(iid, "t1", "worker-a", LONG_LEASE)
        assert claim is not None
        assert commit(store, claim, StepWrite(events=[event(0, "a:1")])) is (CommitResult.COMMITTED)
    assert history_rows(store, "u2") == history_rows(store, "u3") == 1


def test_commit_writes_compensations_and_attempts(store: Store) -> None:
    new_instance(store, "k1")
    tokens = iter(f"t{i}" for i in range(2, 10))
    token = "t1"

    def step(write: StepWrite) -> None:
        nonlocal token
        claim = store.claim("k1", token, "worker-a", LONG_LEASE)
        assert claim is not None
        token = next(tokens)
        write.add_steps.append(NewStep(token, COMMAND, schema.utcnow()))
        assert commit(store, claim, write) is CommitResult.COMMITTED

    failure = {"type": "builtins.ValueError", "message": "flaky", "args": ["flaky"]}
    step(StepWrite(attempt={"step_id": "a:1", "attempt": 1, "error": failure, "retry_in": 2.5}))
    step(
        StepWrite(
            events=[event(0, "a:1", result={"charged": 10})],
            registrations=[registration(0, "a:1", "undo_a", {"amount": 10})],
        )
    )
    step(
        StepWrite(
            events=[event(1, "b:1", result="shipped")],
            registrations=[registration(1, "b:1", "undo_b", {"parcel": "p1"})],
        )
    )
    finished = schema.utcnow()
    step(
        StepWrite(
            compensation_update=(
                "a:1",
                {"status": "done", "attempts": 1, "finished_at": finished},
            ),
        )
    )

    newest_first = store.get_compensations("k1")
    assert [(c.seq, c.step_id, c.name) for c in newest_first] == [
        (1, "b:1", "undo_b"),
        (0, "a:1", "undo_a"),
    ]
    undo_b, undo_a = newest_first
    assert undo_b.arguments == {"parcel": "p1"}
    assert (undo_b.status, undo_b.attempts, undo_b.error, undo_b.finished_at) == (
        "registered",
        0,
        None,
        None,
    )
    assert undo_a.arguments == {"amount": 10}
    assert (undo_a.status, undo_a.attempts, undo_a.error) == ("done", 1, None)
    assert undo_a.finished_at is not None
    assert abs(undo_a.finished_at - finished) < timedelta(milliseconds=1)

    [attempt] = store.get_attempts("k1")
    assert (attempt.step_id, attempt.attempt, attempt.error, attempt.retry_in) == (
        "a:1",
        1,
        failure,
        2.5,
    )
    assert attempt.worker_id == "worker-a"
    assert attempt.created_at is not None


def test_compensations_come_newest_record_first_not_by_position(store: Store) -> None:
    """Branches finish in any order: the one recorded last is undone first."""
    new_instance(store, "k2", "t1", "t2")
    late = store.claim("k2", "t1", "worker-a", LONG_LEASE)
    early = store.claim("k2", "t2", "worker-b", LONG_LEASE)
    assert late is not None and early is not None
    write = StepWrite(
        events=[event(1, "a:2", 2)], registrations=[registration(1, "a:2", "undo", {"n": 2})]
    )
    assert commit(store, early, write) is CommitResult.COMMITTED
    fresh = store.snapshot("k2")
    assert fresh is not None
    write = StepWrite(
        events=[event(0, "a:1", 1)], registrations=[registration(0, "a:1", "undo", {"n": 1})]
    )
    assert store.commit(fresh, write, late) is CommitResult.COMMITTED
    assert [c.step_id for c in store.get_compensations("k2")] == ["a:1", "a:2"]


# -- commit on the activity's own transaction --------------------------------------------


@pytest.fixture
def ledger(store: Store) -> Iterator[sa.Table]:
    """A table of the application's own, in the history database."""
    table = sa.Table(
        "ledger_test",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("entry", sa.String(50), nullable=False),
    )
    table.drop(store.engine, checkfirst=True)
    table.create(store.engine)
    yield table
    table.drop(store.engine, checkfirst=True)


def ledger_entries(store: Store, ledger: sa.Table) -> list[str]:
    with store.connect() as conn:
        return list(conn.execute(sa.select(ledger.c.entry).order_by(ledger.c.id)).scalars())


def test_commit_on_the_callers_transaction_commits_both(store: Store, ledger: sa.Table) -> None:
    new_instance(store, "l1")
    claim = store.claim("l1", "t1", "worker-a", LONG_LEASE)
    assert claim is not None

    with store.connect() as conn:
        conn.begin()
        conn.execute(sa.insert(ledger).values(entry="debit 10"))
        result = commit(store, claim, StepWrite(events=[event(result="ok")]), conn)
        assert result is CommitResult.COMMITTED

    assert ledger_entries(store, ledger) == ["debit 10"]
    assert [e.step_id for e in store.get_history("l1")] == ["a:1"]
    assert store.get_steps("l1") == []


def test_a_moved_commit_keeps_the_callers_transaction_open_for_the_next_try(
    store: Store, ledger: sa.Table
) -> None:
    new_instance(store, "l3", "t1", "t2")
    mine = store.claim("l3", "t1", "worker-a", LONG_LEASE)
    sibling = store.claim("l3", "t2", "worker-b", LONG_LEASE)
    assert mine is not None and sibling is not None
    assert commit(store, sibling, StepWrite(events=[event(1, "a:2")])) is CommitResult.COMMITTED

    with store.connect() as conn:
        conn.begin()
        conn.execute(sa.insert(ledger).values(entry="debit 10"))
        write = StepWrite(events=[event(0, "a:1")])
        assert commit(store, mine, write, conn) is CommitResult.MOVED
        fresh = store.snapshot("l3", conn)
        assert fresh is not None
        assert store.commit(fresh, write, mine, conn) is CommitResult.COMMITTED

    assert ledger_entries(store, ledger) == ["debit 10"]
    assert [e.step_id for e in store.get_history("l3")] == ["a:1", "a:2"]


def test_fenced_commit_on_the_callers_transaction_writes_neither(
    store: Store, ledger: sa.Table
) -> None:
    new_instance(store, "l2")
    claim_a = store.claim("l2", "t1", "worker-a", EXPIRED_LEASE)
    assert claim_a is not None
    claim_b = store.claim("l2", "t1", "worker-b", LONG_LEASE)
    assert claim_b is not None
    before = store.get_instance("l2")

    with store.connect() as conn:
        conn.begin()
        conn.execute(sa.insert(ledger).values(entry="debit 10"))
        result = commit(store, claim_a, StepWrite(events=[event(result="ok")]), conn)
        assert result is CommitResult.FENCED

    assert ledger_entries(store, ledger) == []
    assert history_rows(store, "l2") == 0
    assert store.get_instance("l2") == before


# -- schema and migrations -----------------------------------------------------------------


def test_migrations_are_at_head_and_match_the_schema(store: Store) -> None:
    new_instance(store, "s1")  # first use applies the migrations

    # The PostgreSQL database is shared by the whole test session, so other tests may
    # leave tables of their own in it (e.g. ``ledger_test`` above). Only reflected tables
    # outside the package's ``romancy_`` namespace are skipped: a package table missing
    # from the migrations, or left behind by them, still shows up as a difference.
    def ours(name: str | None, type_: str, parent_names: Any) -> bool:
        return type_ != "table" or (name or "").startswith("romancy_")

    head = head_revision()
    assert head is not None
    with store.connect() as conn:
        assert current_revision(conn) == head
        context = MigrationContext.configure(
            conn,
            opts={
                # Alembic's own bookkeeping table, named as env.py names it: not part of
                # the schema, and Alembic skips it by this name.
                "version_table": VERSION_TABLE,
                "compare_type": True,
                "compare_server_default": True,
                "include_name": ours,
            },
        )
        differences = compare_metadata(context, schema.metadata)
    assert differences == []


# -- fork safety ----------------------------------------------------------------------------


def test_forked_child_gets_its_own_engine(store: Store) -> None:
    new_instance(store, "p1")
    parent_engine = store.engine
    with parent_engine.connect() as conn:  # leave a pooled connection for the child to inherit
        conn.execute(sa.select(1))

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        status = 1
        try:
            os.close(read_end)
            child_engine = store.engine
            with store.connect() as conn:
                count = conn.execute(
                    sa.select(sa.func.count()).select_from(schema.instances)
                ).scalar_one()
            report = {"fresh": child_engine is not parent_engine, "count": count}
            os.write(write_end, json.dumps(report).encode())
            status = 0
        except BaseException as exc:  # noqa: BLE001 - anything the child hits is reported
            with contextlib.suppress(OSError):
                os.write(write_end, json.dumps({"error": repr(exc)}).encode())
        finally:
            os._exit(status)

    os.close(write_end)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.kill(pid, signal.SIGKILL)
                pytest.fail("the forked child did not report within 60s")
            ready, _, _ = select.select([read_end], [], [], remaining)
            if ready:
                chunk = os.read(read_end, 4096)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(read_end)
        _, wait_status = os.waitpid(pid, 0)

    report = json.loads(b"".join(chunks) or b"{}")
    assert "error" not in report, report["error"]
    assert os.waitstatus_to_exitcode(wait_status) == 0
    assert report == {"fresh": True, "count": 1}
    # The parent's engine and its pooled connections survived the child.
    assert store.engine is parent_engine
    with store.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.instances)).scalar() == 1


# -- PostgreSQL: losing the server ---------------------------------------------------------


@pytest.fixture(
    params=[("postgresql", True), ("postgresql", False), ("psycopg", True), ("psycopg", False)],
    ids=["prepared", "unprepared", "psycopg", "psycopg-unprepared"],
)
def pg_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, sa.Engine]]:
    """A PostgreSQL store (psycopg2, with and without prepared statements; psycopg 3), and
    an admin engine that can cut its database off."""
    driver, prepared = request.param
    url = empty_database(driver, request, tmp_path)
    opened = open_store(url, prepared_statements=prepared)
    admin = pg_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    yield opened, admin
    allow_connections(admin, opened, True)
    admin.dispose()
    opened.dispose()


def allow_connections(admin: sa.Engine, store: Store, allowed: bool) -> None:
    name = sa.make_url(store.url).database
    with admin.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}'))


def cut_off(admin: sa.Engine, store: Store, refuse_new: bool) -> None:
    """End every server process of the store's database; optionally refuse new ones."""
    if refuse_new:
        allow_connections(admin, store, False)
    terminate(admin, backends(admin, store))


def terminate(admin: sa.Engine, pids: set[int]) -> None:
    with admin.connect() as conn:
        for pid in pids:  # the timeout makes it wait until the process has exited
            conn.execute(sa.text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": pid})


def backends(admin: sa.Engine, store: Store, waiting_on_a_lock: bool = False) -> set[int]:
    """The server processes of the store's database (not the admin's own)."""
    lock = " AND wait_event_type = 'Lock'" if waiting_on_a_lock else ""
    with admin.connect() as conn:
        return set(
            conn.execute(
                sa.text(
                    "SELECT pid FROM pg_stat_activity "
                    f"WHERE datname = :name AND pid <> pg_backend_pid(){lock}"
                ),
                {"name": sa.make_url(store.url).database},
            ).scalars()
        )


def test_a_database_restart_costs_the_next_statements_nothing(
    pg_store: tuple[Store, sa.Engine],
) -> None:
    # After a restart every pooled connection is dead. Without a check the first start
    # of a web process, and the first step of each worker process, would fail on one.
    store, admin = pg_store
    new_instance(store, "restarted")
    assert store.claim("restarted", "wrong-token", "worker-a", LONG_LEASE) is None  # warm
    before = backends(admin, store)

    cut_off(admin, store, refuse_new=False)

    created, fresh = store.create_instance(
        {"instance_id": "after", "workflow_name": "wf", "status": "pending", "input_data": {}}
    )
    assert fresh and created.instance_id == "after"
    claim = store.claim("restarted", "t1", "worker-a", LONG_LEASE)
    assert claim is not None
    done = StepWrite(instance_changes=InstanceChange(status=Status.COMPLETED))
    assert commit(store, claim, done) is CommitResult.COMMITTED
    assert backends(admin, store).isdisjoint(before)  # they ran on new connections


def test_a_lost_server_is_a_sqlalchemy_error_and_the_store_reconnects(
    pg_store: tuple[Store, sa.Engine],
) -> None:
    # Step tasks retry on SQLAlchemy's DBAPIError: the driver's own errors must not leak
    # from the hot path (claim, commit, start), whether the connection dies under a
    # statement or new ones are refused.
    store, admin = pg_store
    new_instance(store, "lost")
    assert store.claim("lost", "wrong-token", "worker-a", LONG_LEASE) is None  # pool warm

    # The server process dies while the claim waits for a row lock held elsewhere.
    locker = pg_engine(store.url)
    with locker.connect() as holder, ThreadPoolExecutor(1) as pool:
        holder.execute(sa.text("SELECT 1 FROM romancy_steps WHERE instance_id = 'lost' FOR UPDATE"))
        claiming = pool.submit(store.claim, "lost", "t1", "worker-a", LONG_LEASE)
        (claimer,) = wait_for(
            lambda: backends(admin, store, waiting_on_a_lock=True),
            10,
            "the claim to wait on the row lock",
        )
        terminate(admin, {claimer})
        with pytest.raises(sa.exc.DBAPIError) as died:
            claiming.result(timeout=10)
        holder.rollback()
    locker.dispose()
    assert died.value.connection_invalidated

    cut_off(admin, store, refuse_new=True)
    with pytest.raises(sa.exc.DBAPIError):
        store.claim("lost", "t1", "worker-a", LONG_LEASE)
    with pytest.raises(sa.exc.DBAPIError):
        store.create_instance(
            {"instance_id": "refused", "workflow_name": "wf", "status": "pending", "input_data": {}}
        )

    allow_connections(admin, store, True)
    claim = store.claim("lost", "t1", "worker-a", LONG_LEASE)
    assert claim is not None
    done = StepWrite(instance_changes=InstanceChange(status=Status.COMPLETED))
    assert commit(store, claim, done) is CommitResult.COMMITTED
    stored = store.get_instance("lost")
    assert stored is not None and stored.status == "completed"


def test_the_hot_statements_are_prepared_on_the_server_unless_turned_off(
    pg_store: tuple[Store, sa.Engine],
) -> None:
    store, _ = pg_store
    new_instance(store, "hot")
    claim = store.claim("hot", "t1", "worker-a", LONG_LEASE)
    assert claim is not None
    done = StepWrite(instance_changes=InstanceChange(status=Status.COMPLETED))
    assert commit(store, claim, done) is CommitResult.COMMITTED
    # One thread, one pooled connection: the one the start, claim and commit ran on.
    assert isinstance(store, PostgresStore)
    connection = store._autocommit_pool().raw_connection()
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [text for (text,) in cursor.fetchall()]
    finally:
        connection.close()
    hot = [text for text in prepared if "romancy_" in text]
    # The start (INSERT ... ON CONFLICT), the claim (UPDATE romancy_steps ...) and the
    # commit (WITH fenced AS (UPDATE romancy_instances ...)).
    assert len(hot) == (3 if store.prepared_statements else 0), prepared


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_a_migration_under_prepared_statements_does_not_break_them(driver: str) -> None:
    # A rolling deploy migrates while old workers hold statements prepared on the old
    # table: PostgreSQL refuses those ("cached plan must not change result type").
    url = create_pg_database()
    on_driver = sa.make_url(url).set(drivername=f"postgresql+{driver}")
    store = open_store(on_driver.render_as_string(False), prepared_statements=True)
    try:
        new_instance(store, "migrated")
        assert store.claim("migrated", "wrong-token", "worker-a", LONG_LEASE) is None
        with store.transaction() as conn:
            conn.execute(
                sa.text("ALTER TABLE romancy_steps ALTER COLUMN wait_event_type TYPE text")
            )
        claim = store.claim("migrated", "t1", "worker-a", LONG_LEASE)
        assert claim is not None and claim.step.lease_owner == "worker-a"
    finally:
        store.dispose()
        drop_pg_database(url)
