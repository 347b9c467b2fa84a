"""Recovery: lost dispatches, dead workers, transactional activities, poison steps.

Crash depth 1 rewrites stored state to look mid-flight; depth 2 SIGKILLs real worker
processes. (Depth 3, restarting services under load, is in test_chaos.py.)
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from celery import Celery

from celery_romancy import InstanceStateError, Romancy
from celery_romancy.commands import ActivityCommand
from celery_romancy.maintenance import RECOVER_TASK
from celery_romancy.states import StepKind
from celery_romancy.storage import NewStep, StepWrite, Store
from celery_romancy.storage.schema import utcnow

from .harness import Harness
from .ledger import wait_for
from .step_rows import set_steps

FAST = {
    "romancy_lease_timeout": 2,
    "romancy_recovery_interval": 1,
    "romancy_dispatch_timeout": 1,
    "romancy_max_step_crashes": 2,
    "broker_transport_options": {
        "visibility_timeout": 3,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    },
}


@pytest.fixture
def fast(database_url: str, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(database_url, tmp_path, **FAST)
    yield h
    h.close()


def sales_table(h: Harness) -> sa.Table:
    table = sa.Table(
        "sales",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("order_id", sa.String(100), nullable=False),
    )
    engine = h.romancy.storage.engine
    table.create(engine, checkfirst=True)
    with engine.begin() as conn:
        conn.execute(table.delete())
    return table


def sales(h: Harness, table: sa.Table) -> list[str]:
    with h.romancy.storage.engine.connect() as conn:
        return [row.order_id for row in conn.execute(sa.select(table.c.order_id))]


# -- the beat schedule ------------------------------------------------------------------


def test_romancy_adds_its_beat_entries_and_keeps_the_users() -> None:
    app = Celery("shop")
    app.conf.update(
        romancy_recovery_interval=7,
        beat_schedule={"nightly-report": {"task": "shop.report", "schedule": 86400}},
    )
    Romancy(app, database_url="sqlite://")
    schedule = app.conf.beat_schedule
    assert schedule["nightly-report"]["task"] == "shop.report"
    assert schedule[RECOVER_TASK]["task"] == RECOVER_TASK
    assert schedule[RECOVER_TASK]["schedule"] == 7
    assert RECOVER_TASK in app.tasks


def test_a_real_beat_heals_a_dispatch_the_broker_lost(fast: Harness) -> None:
    instance_id = fast.romancy.start_workflow("order_saga", "L-1")
    fast.redis.delete(fast.queue)  # the broker loses the first step's message
    assert fast.queued() == 0
    fast.worker_process().start()
    beat = fast.beat_process().start()

    instance = fast.romancy.wait(instance_id, timeout=60)
    assert instance.status == "completed"
    assert fast.ledger.count("reserve:L-1") == 1
    assert "romancy.recover" in beat.log()


# -- depth 1: stored state rewritten to look mid-flight ----------------------------------


def test_recover_resends_the_step_of_a_worker_that_died_holding_the_lease(
    fast: Harness,
) -> None:
    instance_id = fast.romancy.start_workflow("order_saga", "R-1")
    fast.redis.delete(fast.queue)
    past = utcnow() - timedelta(seconds=30)
    # As if a worker had claimed the step, then died: lease expired, message gone.
    set_steps(
        fast.romancy.storage,
        instance_id,
        lease_owner="dead-host:1",
        lease_expires_at=past,
        dispatch_at=past,
    )
    assert fast.romancy.recover().republished == 1
    assert fast.romancy.recover().republished == 0  # not again before dispatch_timeout
    with fast.worker():
        instance = fast.romancy.wait(instance_id, timeout=30)
    assert instance.status == "completed"
    assert fast.ledger.count("reserve:R-1") == 1


def test_recover_leaves_live_leases_and_fresh_dispatches_alone(store: Store) -> None:
    now = utcnow()
    command = ActivityCommand(StepKind.ACTIVITY, "a", "a:1", 0, {})
    rows = {
        "fresh": {"dispatch_at": now},
        "live-lease": {
            "dispatch_at": now - timedelta(minutes=5),
            "lease_owner": "w",
            "lease_expires_at": now + timedelta(minutes=5),
        },
        "lost": {"dispatch_at": now - timedelta(minutes=5)},
        "dead-worker": {
            "dispatch_at": now - timedelta(minutes=5),
            "lease_owner": "w",
            "lease_expires_at": now - timedelta(seconds=1),
        },
        "parked": {"dispatch_at": None},
    }
    for instance_id, extra in rows.items():
        store.create_instance(
            {
                "instance_id": instance_id,
                "workflow_name": "w",
                "status": "running",
                "input_data": {},
            },
            StepWrite(add_steps=[NewStep(f"t-{instance_id}", command, now)]),
        )
        set_steps(store, instance_id, **extra)

    taken = store.take_overdue(now - timedelta(minutes=1), limit=100)
    assert sorted(swept.step.instance_id for swept in taken) == ["dead-worker", "lost"]
    assert store.take_overdue(now - timedelta(minutes=1), limit=100) == []


# -- depth 2: real worker processes killed -----------------------------------------------


def test_a_transactional_activity_killed_before_commit_writes_once(fast: Harness) -> None:
    table = sales_table(fast)
    instance_id = fast.romancy.start_workflow("sale", "held-S1")
    first = fast.worker_process().start()
    wait_for(
        lambda: fast.ledger.count("sale-written:held-S1") == 1, 60, "the activity to write its row"
    )

    first.kill()  # between the body's write and the step's commit
    assert sales(fast, table) == []  # the uncommitted write died with the worker
    fast.gate("sale-held-S1").open()
    fast.worker_process().start()
    instance = fast.romancy.wait(instance_id, timeout=90)

    assert instance.status == "completed"
    assert fast.ledger.count("sale-written:held-S1") == 2  # the body ran twice...
    assert sales(fast, table) == ["held-S1"]  # ...its write committed once


def test_a_step_that_keeps_killing_its_worker_is_parked_then_resumed(fast: Harness) -> None:
    (fast.folder / "crash-workers").touch()
    instance_id = fast.romancy.start_workflow("poisoned", "P-1")
    fast.worker_process().start()

    parked = fast.romancy.wait(instance_id, timeout=120)
    assert parked.status == "failed"
    assert parked.error is not None
    assert parked.error["type"] == "celery_romancy.errors.PoisonStepError"
    assert "crashy:1" in parked.error["message"]
    # Parked after romancy_max_step_crashes runs that each killed their worker.
    assert fast.ledger.count("crashy:P-1") == FAST["romancy_max_step_crashes"]
    assert "lost its worker 2 times" in parked.error["message"]
    assert fast.romancy.storage.get_compensations(instance_id) == []

    (fast.folder / "crash-workers").unlink()  # an operator fixes the cause
    fast.romancy.resume(instance_id)
    done = fast.romancy.wait(instance_id, timeout=60)
    assert done.status == "completed"
    assert done.output_data == "survived"
    assert fast.ledger.count("reserve:P-1") == 1
    with pytest.raises(InstanceStateError, match="completed"):
        fast.romancy.resume(instance_id)


def test_resume_replays_an_instance_parked_by_nondeterminism_once_fixed(
    fast: Harness,
) -> None:
    version = fast.folder / "workflow-version"
    instance_id = fast.romancy.start_workflow("versioned", "V-1")
    with fast.worker():
        wait_for(lambda: fast.ledger.count("held-start:V-1") == 1, 30, "the held step")
        version.write_text("2")  # a bad deploy
        fast.gate("V-1").open()
        parked = fast.romancy.wait(instance_id, timeout=30)
        assert parked.status == "failed"

        version.write_text("1")  # rolled back
        fast.romancy.resume(instance_id)
        done = fast.romancy.wait(instance_id, timeout=30)

    assert done.status == "completed"
    assert done.error is None
    assert fast.ledger.count("held-done:V-1") == 1
    assert fast.ledger.count("ship:V-1") == 1
