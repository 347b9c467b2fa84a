"""Upgrading a history database with workflows in flight: they finish on the new schema."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from celery_romancy.storage.migrate import upgrade
from celery_romancy.storage.schema import utcnow

from .harness import Harness
from .services import create_pg_database, drop_pg_database, pg_engine

BEFORE_STEPS = "0005"  # the last schema with one pending command on the instance row


@pytest.fixture(params=["sqlite", "postgresql"])
def old_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database migrated only as far as ``BEFORE_STEPS``."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
        engine = sa.create_engine(url)
    else:
        url = create_pg_database()
        engine = pg_engine(url)
    upgrade(engine, BEFORE_STEPS)
    engine.dispose()
    yield url
    if request.param == "postgresql":
        drop_pg_database(url)


def test_an_instance_in_flight_before_the_upgrade_finishes_after_it(
    old_database: str, tmp_path: Path
) -> None:
    engine = (
        pg_engine(old_database)
        if old_database.startswith("postgresql")
        else sa.create_engine(old_database)
    )
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
