"""The chaos workload, and the app ``celery -A tests.chaos_flows worker|beat`` runs.

Every activity appends ``start:<instance>:<step>:<pgid>:<pid>`` to a file ledger as the
first thing its body does, so a test can tell which process ran (or began to run) each
step, and match the run that was recorded against the runs a crash interrupted. In a
worker process each finished task also appends ``outcome:<pid>:<task>:<instance>:<what
the runner did>`` ("recorded", "duplicate", "fenced", ...).

Imported by a test, this module only defines things. Started as a Celery app (the
environment variables of ``tests/worker_app.py`` are set) it builds ``app``: the test
app of ``tests/flows.py`` plus the chaos workflows.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

from celery import Celery, signals

from celery_romancy import RetryPolicy, Romancy, WorkflowContext, current_activity

from .flows import build
from .ledger import Gate, Ledger

LEDGER = "chaos-ledger.log"
NO_RETRY = RetryPolicy(max_attempts=1)


def gate_name(instance_id: str) -> str:
    return f"fence-{instance_id}"


def expected_output(n: int) -> dict[str, Any]:
    """What ``chaos_saga`` (and ``chaos_fenced``) return for input ``n``."""
    return {"n": n, "reserved": n * 10, "charged": n * 10 + 1, "shipped": f"shipped-{n * 10 + 1}"}


def register_chaos(romancy: Romancy, folder: Path) -> None:
    """Add the chaos activities and workflows to ``romancy``; the ledger lives in ``folder``."""
    ledger = Ledger(folder / LEDGER)

    def started() -> str:
        info = current_activity()
        ledger.record(f"start:{info.instance_id}:{info.step_id}:{os.getpgid(0)}:{os.getpid()}")
        return info.instance_id

    def work() -> None:
        time.sleep(random.uniform(0, 0.05))  # the workload itself, not a wait for anything

    @romancy.activity("chaos_reserve", retry=NO_RETRY)
    def chaos_reserve(n: int) -> int:
        started()
        work()
        return n * 10

    @romancy.activity("chaos_charge", retry=NO_RETRY)
    def chaos_charge(reserved: int) -> int:
        started()
        work()
        return reserved + 1

    @romancy.activity("chaos_ship", retry=NO_RETRY)
    def chaos_ship(charged: int) -> str:
        started()
        work()
        return f"shipped-{charged}"

    @romancy.activity("chaos_gated", retry=NO_RETRY)
    def chaos_gated(reserved: int) -> int:
        instance_id = started()
        Gate(folder, gate_name(instance_id)).wait(timeout=180)
        return reserved + 1

    @romancy.workflow("chaos_saga")
    def chaos_saga(ctx: WorkflowContext, n: int) -> dict[str, Any]:
        reserved = chaos_reserve.execute(ctx, n)
        # A fan-out: two branches in flight at once, joined before the last step.
        charged, again = ctx.gather(chaos_charge.s(reserved), chaos_charge.s(reserved))
        assert charged == again
        shipped = chaos_ship.execute(ctx, charged)
        return {"n": n, "reserved": reserved, "charged": charged, "shipped": shipped}

    @romancy.workflow("chaos_fenced")
    def chaos_fenced(ctx: WorkflowContext, n: int) -> dict[str, Any]:
        reserved = chaos_reserve.execute(ctx, n)
        charged = chaos_gated.execute(ctx, reserved)
        shipped = chaos_ship.execute(ctx, charged)
        return {"n": n, "reserved": reserved, "charged": charged, "shipped": shipped}


def build_chaos(
    database_url: str, broker_url: str, folder: Path, queue: str, **conf: Any
) -> tuple[Celery, Romancy]:
    """The test app of ``tests/flows.py`` with the chaos workload added."""
    celery_app, romancy_ = build(database_url, broker_url, folder, queue, **conf)
    register_chaos(romancy_, folder)
    return celery_app, romancy_


def record_outcomes(celery_app: Celery, folder: Path) -> None:
    """In a worker: append what the runner did with every chaos step message to the ledger."""
    ledger = Ledger(folder / LEDGER)

    def on_postrun(sender: Any = None, args: Any = None, retval: Any = None, **_: Any) -> None:
        if sender is not None and sender.app is celery_app and args and "chaos" in sender.name:
            what = str(retval).replace("\n", " ")
            ledger.record(f"outcome:{os.getpid()}:{sender.name}:{args[0]}:{what}")

    signals.task_postrun.connect(on_postrun, weak=False)


if os.environ.get("ROMANCY_TEST_DB"):
    # ``celery -A tests.chaos_flows``: the same environment as tests/worker_app.py.
    _folder = Path(os.environ["ROMANCY_TEST_DIR"])
    app, romancy = build_chaos(
        os.environ["ROMANCY_TEST_DB"],
        os.environ["ROMANCY_TEST_BROKER"],
        _folder,
        os.environ["ROMANCY_TEST_QUEUE"],
        **json.loads(os.environ.get("ROMANCY_TEST_CONF", "{}")),
    )
    record_outcomes(app, _folder)
