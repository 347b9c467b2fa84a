"""Upgrading a history database with workflows in flight: they finish on the new schema."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from celery_romancy.commands import ActivityCommand
from celery_romancy.states import StepKind
from celery_romancy.storage.migrate import upgrade
from celery_romancy.storage.schema import utcnow

from .harness import Harness
from .services import create_pg_database, drop_pg_database, pg_engine

BEFORE_STEPS = "0005"  # the last schema with one pending command on the instance row
BEFORE_SEARCH = "0007"  # the last schema without business keys and step start times


def database_at(kind: str, revision: str, tmp_path: Path) -> Iterator[str]:
    """An empty database migrated only as far as ``revision``; dropped after the test."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
        engine = sa.create_engine(url)
    else:
        url = create_pg_database()
        engine = pg_engine(url)
    upgrade(engine, revision)
    engine.dispose()
    yield url
    if kind == "postgresql":
        drop_pg_database(url)


def old_engine(url: str) -> sa.Engine:
    return pg_engine(url) if url.startswith("postgresql") else sa.create_engine(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def old_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from database_at(request.param, BEFORE_STEPS, tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_before_search(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from database_at(request.param, BEFORE_SEARCH, tmp_path)


def test_an_instance_in_flight_before_the_upgrade_finishes_after_it(
    old_database: str, tmp_path: Path
) -> None:
    engine = old_engine(old_database)
    now = utcnow().replace(tzinfo=None)
    pending = {
        "kind": "activity",
        "name": "reserve",
        "step_id": "reserve:1",
        "seq": 0,
        "arguments": {"order_id": "M-1"},
        "queue": None,
        "attempt": 1,
    }
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO romancy_instances (instance_id, workflow_name, status, input_data,"
                " pending, dispatch_token, dispatch_at, epoch, step_takeovers, created_at,"
                " updated_at) VALUES ('old-1', 'order_saga', 'pending',"
                " :input, :pending, 'old-token', :now, 0, 0, :now, :now)"
            ),
            {
                "input": '{"order_id": "M-1"}',
                "pending": json.dumps(pending),
                "now": now,
            },
        )
        # A finished instance with its history: a table rebuilt by the upgrade must not
        # take the rows that reference it along (SQLite cascades on DROP TABLE).
        conn.execute(
            sa.text(
                "INSERT INTO romancy_instances (instance_id, workflow_name, status, input_data,"
                " epoch, step_takeovers, created_at, updated_at) VALUES ('done-1',"
                " 'order_saga', 'completed', '{}', 3, 0, :now, :now)"
            ),
            {"now": now},
        )
        conn.execute(
            sa.text(
                "INSERT INTO romancy_history (instance_id, seq, step_id, kind, name, result,"
                " attempt, created_at) VALUES ('done-1', 0, 'reserve:1', 'activity', 'reserve',"
                " '\"R\"', 1, :now)"
            ),
            {"now": now},
        )
    engine.dispose()

    harness = Harness(old_database, tmp_path)
    try:
        # The message sent before the upgrade is still in the queue: it finds its step.
        harness.app.send_task("reserve", args=("old-1", "old-token"), queue=harness.queue)
        [step] = harness.romancy.storage.get_steps("old-1")  # first use: upgraded to head
        assert (step.token, step.step_id, step.command.name) == (
            "old-token",
            "reserve:1",
            "reserve",
        )
        assert [e.step_id for e in harness.romancy.get_history("done-1")] == ["reserve:1"]
        with harness.worker():
            instance = harness.romancy.wait("old-1", timeout=30)
        assert instance.status == "completed"
        assert [e.step_id for e in harness.romancy.get_history("old-1")] == [
            "reserve:1",
            "charge:1",
            "ship:1",
        ]
    finally:
        harness.close()


def test_an_instance_in_flight_before_business_keys_finishes_after_them(
    database_before_search: str, tmp_path: Path
) -> None:
    """0008 adds the search table and history's started_at and task_id: a saga halfway
    through when it ran finishes, its old rows read with neither, and it can be given
    business keys as it goes on."""
    engine = old_engine(database_before_search)
    now = utcnow().replace(tzinfo=None)
    charge = ActivityCommand(
        StepKind.ACTIVITY, "charge", "charge:1", 1, {"order_id": "M-2", "amount": 109.97}
    )
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO romancy_instances (instance_id, workflow_name, status, input_data,"
                " version, created_at, updated_at) VALUES ('old-2', 'order_saga', 'running',"
                " :input, 1, :now, :now)"
            ),
            {"input": '{"order_id": "M-2"}', "now": now},
        )
        conn.execute(
            sa.text(
                "INSERT INTO romancy_history (instance_id, seq, step_id, kind, name, result,"
                " attempt, worker_id, created_at) VALUES ('old-2', 0, 'reserve:1', 'activity',"
                " 'reserve', '\"R-M-2\"', 1, 'old-worker', :now)"
            ),
            {"now": now},
        )
        conn.execute(
            sa.text(
                "INSERT INTO romancy_steps (instance_id, token, step_id, kind, command,"
                " dispatch_at, epoch, takeovers, created_at) VALUES ('old-2', 'old-token',"
                " 'charge:1', 'activity', :command, :now, 0, 0, :now)"
            ),
            {"command": json.dumps(charge.to_json()), "now": now},
        )
    engine.dispose()

    harness = Harness(database_before_search, tmp_path)
    try:
        # The charge message sent before the upgrade is still in the queue.
        harness.app.send_task("charge", args=("old-2", "old-token"), queue=harness.queue)
        [old_row] = harness.romancy.get_history("old-2")  # first use: upgraded to head
        assert (old_row.step_id, old_row.started_at, old_row.task_id) == ("reserve:1", None, None)
        assert harness.romancy.search_attributes("old-2") == {}
        new = harness.romancy.start_workflow("order_saga", "M-3", search={"order_id": "M-3"})
        with harness.worker():
            assert harness.romancy.wait("old-2", timeout=30).status == "completed"
            assert harness.romancy.wait(new, timeout=30).status == "completed"
        assert [e.step_id for e in harness.romancy.get_history("old-2")] == [
            "reserve:1",
            "charge:1",
            "ship:1",
        ]
        assert harness.ledger.count("charge:M-2") == 1
        assert harness.ledger.count("reserve:M-2") == 0  # recorded before: replayed, not run
        assert [
            i.instance_id for i in harness.romancy.find_instances(search={"order_id": "M-3"})
        ] == [new]
    finally:
        harness.close()
