"""Continue-as-new on real workers, SQLite and PostgreSQL: loops with a bounded history.

A run that calls ``ctx.continue_as_new`` ends ``continued`` and its next run starts in
the same commit; ``wait``/``result``/``send_event``/``cancel`` addressed to any run of
the chain reach the run that holds it now. Pure rules: test_continue_as_new_rules.py.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from celery.bin.base import CLIContext
from click.testing import CliRunner, Result

from celery_romancy import (
    InvalidArgumentsError,
    Romancy,
    WorkflowFailedError,
    WorkflowInstance,
    signals,
    transition,
)
from celery_romancy.cli import romancy as romancy_command
from celery_romancy.dispatch import Dispatch
from celery_romancy.states import Status
from celery_romancy.storage import ChildStart, StepWrite, Store, open_store, schema
from celery_romancy.storage.chains import hand_over
from celery_romancy.storage.records import InstanceChange

from .conftest import empty_database
from .harness import Harness
from .ledger import wait_for
from .loop_flows import Tally

ROUNDS = 101  # the first run and 100 continuations


def chain(romancy: Romancy, first: str) -> list[WorkflowInstance]:
    """The runs of ``first``'s chain in order, followed link by link."""
    runs = [romancy.get_instance(first)]
    by_parent = {
        i.continued_from: i for i in romancy.find_instances(limit=1000) if i.continued_from
    }
    while runs[-1].instance_id in by_parent:
        runs.append(by_parent[runs[-1].instance_id])
    return runs


def test_a_loop_continues_as_new_100_times_each_run_with_a_bounded_history(
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
    started: list[str] = []

    def on_started(sender: Any, instance_id: str, **_: Any) -> None:
        started.append(instance_id)

    signals.workflow_started.connect(on_started, weak=False)
    try:
        first = romancy.start_workflow("l_counter", Tally(0, 0), ROUNDS, instance_id="loop-1")
        # Every tick goes to the first run's id, all at once, before most runs exist:
        # each is kept for the run holding the chain, and what a run did not consume
        # moves on with the chain.
        for tick in range(1, ROUNDS + 1):
            assert romancy.send_event("tick", tick, instance_id=first)
        with harness.worker():
            final = romancy.result(first, timeout=80)
            wait_for(lambda: "duplicate" in [str(o[2]) for o in harness.outcomes], 30, "a dup")
    finally:
        signals.workflow_started.disconnect(on_started)

    assert final == Tally(ROUNDS, sum(range(1, ROUNDS + 1)))
    runs = chain(romancy, first)
    assert len(runs) == ROUNDS
    assert [r.instance_id for r in runs] == [first, *(f"{first}~{n}" for n in range(1, ROUNDS))]
    assert [r.continued_from for r in runs] == [None, *(r.instance_id for r in runs[:-1])]
    assert {r.status for r in runs[:-1]} == {"continued"}
    assert runs[-1].status == "completed"
    assert {r.output_data for r in runs[:-1]} == {None}
    for n, run in enumerate(runs):
        # Bounded: each run records its own round only, whatever the chain's length.
        assert [e.step_id for e in romancy.get_history(run.instance_id)] == [
            "wait_event:tick:1",
            "l_add:1",
        ], run.instance_id
        assert run.input_data == {
            "state": {"round": n, "total": sum(range(1, n + 1))},
            "rounds": ROUNDS,
        }
        assert romancy.storage.get_steps(run.instance_id) == []
    # Each step message went out twice, and yet each round ran once and each run
    # started once.
    assert len([d for d in sent if d.command.name == "l_add"]) == ROUNDS
    for n in range(ROUNDS):
        assert harness.ledger.count(f"add:{n}") == 1
    assert harness.ledger.count("swallowed") == 0
    assert sorted(started) == sorted(r.instance_id for r in runs)
    # get_instance still names the run asked for; wait follows the chain to its end.
    assert romancy.get_instance(first).status == "continued"
    assert romancy.wait(runs[50].instance_id).instance_id == runs[-1].instance_id


def test_send_event_and_cancel_addressed_to_an_earlier_run_reach_the_current_one(
    harness: Harness,
) -> None:
    romancy = harness.romancy
    first = romancy.start_workflow("l_counter", Tally(0, 0), 1000)

    def current_waits(n: int) -> bool:
        run = romancy.get_instance(romancy.storage.last_run(first))
        return run.instance_id == f"{first}~{n}" and run.status == "waiting_for_event"

    with harness.worker():
        romancy.send_event("tick", 5, instance_id=first)
        wait_for(lambda: current_waits(1), 30, "the second run to wait")
        romancy.send_event("tick", 6, instance_id=first)  # through a continued run
        wait_for(lambda: current_waits(2), 30, "the third run to wait")
        romancy.send_event("tick", 7, instance_id=f"{first}~1")  # a middle one
        wait_for(lambda: current_waits(3), 30, "the fourth run to wait")
        assert romancy.cancel(first, "enough") is True
        ended = romancy.wait(first, timeout=30)

    assert ended.instance_id == f"{first}~3"
    assert (ended.status, ended.cancel_reason) == ("cancelled", "enough")
    assert ended.input_data["state"] == {"round": 3, "total": 18}
    assert [r.status for r in chain(romancy, first)] == [
        "continued",
        "continued",
        "continued",
        "cancelled",
    ]
    # Continuing is a commit point: the earlier runs' steps are not undone.
    assert harness.ledger.count("subtract:0") == 0
    with pytest.raises(WorkflowFailedError) as failed:
        romancy.result(first)
    assert failed.value.instance_id == f"{first}~3"

    # The command line shows the chain: each run's place in it, and where it is now.
    shown = cli(harness, "show", first).output
    assert re.search(rf"^next run +{re.escape(first)}~1$", shown, re.M), shown
    assert re.search(rf"^current +{re.escape(first)}~3$", shown, re.M), shown
    shown = cli(harness, "show", f"{first}~2").output
    assert re.search(rf"^continues +{re.escape(first)}~1$", shown, re.M), shown
    listed = json.loads(cli(harness, "list", "--workflow", "l_counter", "--json").output)
    links = {(i["instance_id"], i["continued_from"], i["next_run"]) for i in listed}
    assert (f"{first}~1", first, f"{first}~2") in links
    assert (f"{first}~3", f"{first}~2", None) in links
    table = cli(harness, "list", "--workflow", "l_counter").output
    assert f"continued as {first}~1" in table


def cli(harness: Harness, *args: str) -> Result:
    context = CLIContext(app=harness.app, no_color=True, workdir=None)
    result = CliRunner().invoke(romancy_command, list(args), obj=context)
    assert result.exit_code == 0, result.output
    return result


def test_bad_arguments_for_the_next_run_fail_the_run_and_start_none(harness: Harness) -> None:
    romancy = harness.romancy
    instance_id = romancy.start_workflow("l_bad_next", 3)

    with harness.worker():
        ended = romancy.wait(instance_id, timeout=30)

    assert ended.status == "failed"
    assert ended.error is not None
    assert ended.error["type"] == f"{InvalidArgumentsError.__module__}.InvalidArgumentsError"
    assert "count" in ended.error["message"] and "three" in ended.error["message"]
    assert romancy.find_instances(workflow="l_bad_next") == [ended]
    assert harness.ledger.count("subtract:3") == 1  # failed: this run's steps undone


def test_a_child_that_continues_as_new_wakes_its_parent_from_its_last_run(
    harness: Harness,
) -> None:
    romancy = harness.romancy
    parent = romancy.start_workflow("l_parent", 3)

    with harness.worker():
        assert romancy.result(parent, timeout=30) == 3

    child = f"{parent}/child:l_child_loop:1"
    runs = chain(romancy, child)
    assert [r.instance_id for r in runs] == [child, *(f"{child}~{n}" for n in (1, 2, 3))]
    assert [r.status for r in runs] == ["continued"] * 3 + ["completed"]
    assert {(r.parent_instance_id, r.root_instance_id) for r in runs} == {(parent, parent)}
    [recorded] = romancy.get_history(parent)
    assert recorded.result == {"instance_id": f"{child}~3", "output": 3}
    assert romancy.storage.get_steps(parent) == []


def test_a_parent_that_rolls_back_undoes_its_childs_last_run_only(harness: Harness) -> None:
    romancy = harness.romancy
    parent = romancy.start_workflow("l_parent", 2, True)

    with harness.worker():
        ended = romancy.wait(parent, timeout=30)
        last = f"{parent}/child:l_child_loop:1~2"
        wait_for(lambda: romancy.get_instance(last).status == "compensated", 30, "the undo")

    assert ended.status == "failed"
    # Each run is its own commit point: the earlier runs' steps stay done.
    assert [harness.ledger.count(f"subtract:{n}") for n in (0, 1, 2)] == [0, 0, 1]


def test_cancelling_a_parent_cancels_the_run_that_holds_its_childs_chain(
    harness: Harness,
) -> None:
    romancy = harness.romancy
    parent = romancy.start_workflow("l_parent", -1)
    child = f"{parent}/child:l_child_loop:1"

    def child_waits(n: int) -> bool:
        run = romancy.get_instance(romancy.storage.last_run(child))
        return run.instance_id == f"{child}~{n}" and run.status == "waiting_for_event"

    with harness.worker():
        wait_for(lambda: romancy.storage.instance_exists(child), 30, "the child")
        romancy.send_event("tick", instance_id=child)
        romancy.send_event("tick", instance_id=child)
        wait_for(lambda: child_waits(2), 30, "the child's third run to wait")
        # The parent's step now waits for that run, not the first.
        [step] = romancy.storage.get_steps(parent)
        assert step.wait_correlation_id == f"{child}~2"
        romancy.cancel(parent, "stop")
        ended = romancy.wait(parent, timeout=30)

    assert (ended.status, ended.cancel_reason) == ("cancelled", "stop")
    assert [r.status for r in chain(romancy, child)] == ["continued"] * 2 + ["cancelled"]


def test_an_event_kept_for_a_run_that_has_continued_is_kept_for_the_current_run(
    store: Store,
) -> None:
    # Rows as a continuation leaves them: a -> a~1 -> a~2, the last one running.
    for run_id, previous, status in (
        ("a", None, "continued"),
        ("a~1", "a", "continued"),
        ("a~2", "a~1", "waiting_for_event"),
    ):
        values = {
            "instance_id": run_id,
            "workflow_name": "l_counter",
            "input_data": {},
            "status": status,
            "continued_from": previous,
        }
        store.create_instance(values, StepWrite())
    assert store.last_run("a") == "a~2"
    assert store.last_run("a~2") == "a~2"
    assert store.last_run("unknown") == "unknown"

    # Addressed to a run that has continued (its sender read it before the hand-over).
    assert store.insert_event({"event_type": "tick", "instance_id": "a", "data": 1})
    kept = store.find_event("tick", "a~2", None)
    assert kept is not None and kept.data == 1
    assert store.find_event("tick", "a", None) is None


def test_a_continuing_commit_moves_the_unconsumed_events_to_the_next_run(store: Store) -> None:
    store.create_instance(
        {"instance_id": "m", "workflow_name": "l_counter", "input_data": {}, "status": "running"}
    )
    assert store.insert_event({"event_type": "tick", "instance_id": "m", "data": 1})
    snapshot = store.snapshot("m")
    assert snapshot is not None
    next_run = {
        "instance_id": "m~1",
        "workflow_name": "l_counter",
        "input_data": {},
        "status": "running",
        "continued_from": "m",
    }
    write = StepWrite(
        instance_changes=InstanceChange(status=Status.CONTINUED),
        children=[ChildStart(next_run, StepWrite())],
        continued_as="m~1",
    )
    assert str(store.commit(snapshot, write)) == "committed"
    moved = store.find_event("tick", "m~1", None)
    assert moved is not None and moved.data == 1


def test_an_event_sent_while_its_run_continues_waits_for_that_commit_then_follows_it(
    pg_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The race ``chains.keep_events_with_current_run`` closes, on PostgreSQL (on SQLite
    the continuing commit holds the one write lock, so the insert waits for it whole)."""
    store = open_store(empty_database("postgresql", request, tmp_path))
    request.addfinalizer(store.dispose)
    store.create_instance(
        {"instance_id": "r", "workflow_name": "l_counter", "input_data": {}, "status": "running"}
    )
    snapshot = store.snapshot("r")
    assert snapshot is not None
    sent: list[bool] = []
    with store.engine.connect() as conn:
        continuing = conn.begin()
        # The continuing commit's first statement: the version check, which row-locks the run.
        version = sa.update(schema.instances).where(schema.instances.c.instance_id == "r")
        conn.execute(version.values(version=schema.instances.c.version + 1))
        sender = threading.Thread(
            target=lambda: sent.append(
                store.insert_event({"event_type": "tick", "instance_id": "r", "data": 1})
            )
        )
        sender.start()
        wait_for(lambda: blocked_on_a_lock(store) == 1, 30, "the event's insert to wait")
        # The rest of the continuing commit: it cannot see the event, not committed yet.
        conn.execute(
            sa.update(schema.instances)
            .where(schema.instances.c.instance_id == "r")
            .values(status=str(Status.CONTINUED))
        )
        store.insert_rows(
            conn, "r", None, StepWrite(children=[next_run("r~1", "r")]), schema.utcnow(), 1
        )
        hand_over(conn, snapshot.instance, "r~1")
        continuing.commit()
    sender.join(30)

    assert sent == [True]
    kept = store.find_event("tick", "r~1", None)
    assert kept is not None and kept.data == 1
    assert store.find_event("tick", "r", None) is None


def blocked_on_a_lock(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                )
            ).scalar_one()
        )


def next_run(run_id: str, previous: str) -> ChildStart:
    values = {
        "instance_id": run_id,
        "workflow_name": "l_counter",
        "input_data": {},
        "status": "waiting_for_event",
        "continued_from": previous,
    }
    return ChildStart(values, StepWrite())
