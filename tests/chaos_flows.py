"""The chaos workload, and the app ``celery -A tests.chaos_flows worker|beat`` runs.

Every activity and compensation appends ``start|<instance>|<step>|<pgid>|<pid>`` to a
file ledger as the first thing its body does, so a test can tell which process ran (or
began to run) each step, and match the run that was recorded against the runs a crash
interrupted. In a worker process each finished task also appends
``outcome|<pid>|<task>|<instance>|<what the runner did>`` ("recorded", "duplicate",
"fenced", ...), and a worker that crashes itself on purpose right after a commit
(``crash_after``) appends ``crash|<instance>|<what>|<pgid>|<pid>``. The fields are split
by ``|`` because ids hold colons: a child workflow's id is ``<parent id>/<step id>``, a
compensation's step id ``<compensation>:undo:<step id>``.

Imported by a test, this module only defines things. Started as a Celery app (the
environment variables of ``tests/worker_app.py`` are set) it builds ``app``: the test
app of ``tests/flows.py`` plus the chaos workflows.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery, signals

from celery_romancy import (
    RetryPolicy,
    Romancy,
    TerminalError,
    WorkflowContext,
    children,
    current_activity,
)

from .flows import build
from .ledger import Gate, Ledger

LEDGER = "chaos-ledger.log"
NO_RETRY = RetryPolicy(max_attempts=1)
# Every fourth tree fails after all its children completed, and rolls back: its children
# (and the branch's grandchild) are undone and end ``compensated``.
TREE_ROLLBACK_EVERY = 4


def gate_name(instance_id: str) -> str:
    return f"fence-{instance_id}"


def expected_output(n: int) -> dict[str, Any]:
    """What ``chaos_saga`` (and ``chaos_fenced``) return for input ``n``."""
    return {"n": n, "reserved": n * 10, "charged": n * 10 + 1, "shipped": f"shipped-{n * 10 + 1}"}


def tree_rolls_back(n: int) -> bool:
    """Whether ``chaos_tree`` ``n`` fails at its last step (and rolls back)."""
    return n % TREE_ROLLBACK_EVERY == TREE_ROLLBACK_EVERY - 1


@dataclass(frozen=True)
class TreeMember:
    """One instance of a ``chaos_tree``, as the tree's end must find it."""

    workflow: str
    parent_id: str | None
    status: str
    output: Any  # when completed
    steps: tuple[str, ...]  # the activity steps it records
    undoable: tuple[str, ...]  # its steps that register a compensation


def tree_members(root_id: str, n: int) -> dict[str, TreeMember]:
    """The instances of ``chaos_tree`` ``n`` started as ``root_id``, by instance id.

    The child ids are the default ones, ``<parent id>/<step id>``: the branch, its
    grandchild (the leaf the branch executes) and the two leaves the root gathers. A
    tree that rolls back ends with its root ``failed`` and every child ``compensated``
    (the branch has no compensation of its own: undoing it undoes its grandchild).
    """
    rolls_back = tree_rolls_back(n)
    child_status = "compensated" if rolls_back else "completed"
    branch = f"{root_id}/child:chaos_branch:1"

    def leaf(parent_id: str, side: str) -> TreeMember:
        return TreeMember(
            "chaos_leaf",
            parent_id,
            child_status,
            f"{side}-{n}",
            ("chaos_pack:1",),
            ("chaos_pack:1",),
        )

    root_output = {
        "n": n,
        "held": n * 10,
        "branch": {"charged": n * 10 + 1, "deep": f"deep-{n}"},
        "leaves": [f"left-{n}", f"right-{n}"],
        "noted": f"noted-{n}",
        "shipped": f"shipped-{n}",
    }
    last = "chaos_refuse:1" if rolls_back else "chaos_ship:1"
    return {
        root_id: TreeMember(
            "chaos_tree",
            None,
            "failed" if rolls_back else "completed",
            root_output,
            ("chaos_hold:1", "chaos_note:1", last),
            ("chaos_hold:1",),
        ),
        branch: TreeMember(
            "chaos_branch", root_id, child_status, root_output["branch"], ("chaos_charge:1",), ()
        ),
        f"{branch}/child:chaos_leaf:1": leaf(branch, "deep"),
        f"{root_id}/child:chaos_leaf:1": leaf(root_id, "left"),
        f"{root_id}/child:chaos_leaf:2": leaf(root_id, "right"),
    }


def register_chaos(romancy: Romancy, folder: Path) -> None:
    """Add the chaos activities and workflows to ``romancy``; the ledger lives in ``folder``."""
    ledger = Ledger(folder / LEDGER)

    def started() -> str:
        info = current_activity()
        ledger.record(f"start|{info.instance_id}|{info.step_id}|{os.getpgid(0)}|{os.getpid()}")
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

    # -- a tree of child workflows: root -> branch -> grandchild leaf, and two leaves ------

    @romancy.compensation("chaos_release", retry=NO_RETRY)
    def chaos_release(n: int) -> None:
        started()

    @romancy.activity("chaos_hold", compensation=chaos_release, retry=NO_RETRY)
    def chaos_hold(n: int) -> int:
        started()
        work()
        return n * 10

    @romancy.compensation("chaos_unpack", retry=NO_RETRY)
    def chaos_unpack(n: int, side: str) -> None:
        started()

    @romancy.activity("chaos_pack", compensation=chaos_unpack, retry=NO_RETRY)
    def chaos_pack(n: int, side: str) -> str:
        started()
        work()
        return f"{side}-{n}"

    @romancy.activity("chaos_note", retry=NO_RETRY)
    def chaos_note(n: int) -> str:
        started()
        work()
        return f"noted-{n}"

    @romancy.activity("chaos_refuse", retry=NO_RETRY)
    def chaos_refuse(n: int) -> str:
        started()
        raise TerminalError(f"tree {n} refused after its children completed")

    @romancy.workflow("chaos_leaf")
    def chaos_leaf(ctx: WorkflowContext, n: int, side: str) -> str:
        return chaos_pack.execute(ctx, n, side)

    @romancy.workflow("chaos_branch")
    def chaos_branch(ctx: WorkflowContext, n: int) -> dict[str, Any]:
        charged = chaos_charge.execute(ctx, n * 10)
        return {"charged": charged, "deep": ctx.execute_child(chaos_leaf, n, "deep")}

    @romancy.workflow("chaos_tree")
    def chaos_tree(ctx: WorkflowContext, n: int) -> dict[str, Any]:
        held = chaos_hold.execute(ctx, n)
        branch = ctx.execute_child(chaos_branch, n)
        # Two children in parallel beside an activity.
        left, right, noted = ctx.gather(
            chaos_leaf.s(n, "left"), chaos_leaf.s(n, "right"), chaos_note.s(n)
        )
        if tree_rolls_back(n):
            chaos_refuse.execute(ctx, n)
        shipped = chaos_ship.execute(ctx, n)
        return {
            "n": n,
            "held": held,
            "branch": branch,
            "leaves": [left, right],
            "noted": noted,
            "shipped": shipped,
        }

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
            ledger.record(f"outcome|{os.getpid()}|{sender.name}|{args[0]}|{what}")

    signals.task_postrun.connect(on_postrun, weak=False)


def crash_marker(folder: Path, instance_id: str) -> Path:
    """The file that asks a worker to crash after a commit of ``instance_id``."""
    return folder / f"crash-after-{instance_id.replace('/', '~')}"


def crash_after(folder: Path, instance_id: str, what: str) -> None:
    """Ask the workers to SIGKILL themselves right after the next commit of
    ``instance_id`` that ends it (``what="end"``) or begins undoing one of its children
    (``"undo"``), before its parent or child hears of it; see ``crash_after_commits``."""
    crash_marker(folder, instance_id).write_text(what)


def crash_after_commits(folder: Path) -> None:
    """In a worker: crash where a kill at random rarely lands, between a commit and the
    news it carries across a tree (``children.after_commit``: wake the parent of a child
    that ended, begin undoing a completed child, cancel a child).

    For an instance the test marked (``crash_after``), the process that made the commit
    appends ``crash|<instance>|<what>|<pgid>|<pid>`` to the ledger and SIGKILLs its whole
    worker, main process and pool, as the test would: the news is lost, and only the
    recovery sweep can pass it on. Once per marker: whoever removes it crashes.
    """
    ledger = Ledger(folder / LEDGER)
    pass_on = children.after_commit

    def after_commit(
        romancy: Romancy, instance: Any, cancel: list[str], undo: list[str | None], ended: bool
    ) -> None:
        marker = crash_marker(folder, instance.instance_id)
        what = "end" if ended else "undo" if any(undo) else "cancel"
        with contextlib.suppress(FileNotFoundError):  # not marked, or taken by another
            if marker.read_text() == what:
                marker.unlink()
                pgid = os.getpgid(0)
                ledger.record(f"crash|{instance.instance_id}|{what}|{pgid}|{os.getpid()}")
                os.killpg(pgid, signal.SIGKILL)
        pass_on(romancy, instance, cancel, undo, ended)

    children.after_commit = after_commit  # looked up at each call (transition._committed)


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
    crash_after_commits(_folder)
