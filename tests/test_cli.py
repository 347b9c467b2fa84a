"""``celery -A proj romancy ...`` on a real PostgreSQL database with a real worker process.

Most calls go through click's runner against the real command (fast); the first test
runs the ``celery`` program itself, to prove the subcommand is registered and that
exit codes and stderr reach the shell.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner, Result

from celery_romancy import Romancy, WorkflowInstance
from celery_romancy.cli import romancy as romancy_command
from celery_romancy.contrib.status import status_of
from celery_romancy.storage import StepRecord

from .cli_flows import build_cli, unheard_queue
from .ledger import Gate, Ledger, wait_for
from .processes import ROOT, ServiceProcess, celery, celery_worker
from .services import REDIS_URL, create_pg_database, drop_pg_database, redis_client

COMMANDS = (
    "list",
    "show",
    "cancel",
    "resume",
    "retry-compensation",
    "send-event",
    "purge",
    "migrate",
)


@dataclass
class Cli:
    app: Celery
    romancy: Romancy
    folder: Path
    env: dict[str, str]
    worker: ServiceProcess

    def __call__(self, *args: str) -> Result:
        context = CLIContext(app=self.app, no_color=True, workdir=None)
        return CliRunner().invoke(romancy_command, list(args), obj=context)

    def program(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """``celery -A tests.cli_app romancy ...``, as an operator types it."""
        return subprocess.run(
            celery("tests.cli_app", "romancy", *args),
            cwd=ROOT,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def start(self, workflow: str, *args: Any, **kwargs: Any) -> str:
        return self.romancy.start_workflow(workflow, *args, **kwargs)

    def finished(self, instance_id: str) -> WorkflowInstance:
        return self.romancy.wait(instance_id, timeout=60)

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.folder / "ledger.log")


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    yield from running_cli(tmp_path_factory)


def running_cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    """A database of its own, the CLI's workflows and a worker (threads) running them."""
    redis = redis_client()
    database_url = create_pg_database()  # of its own, so listings hold only these tests' runs
    folder = tmp_path_factory.mktemp("cli")
    queue = f"romancy-cli-{uuid.uuid4().hex[:10]}"
    app, romancy = build_cli(database_url, REDIS_URL, folder, queue)
    env = {
        **os.environ,
        "ROMANCY_TEST_DB": database_url,
        "ROMANCY_TEST_BROKER": REDIS_URL,
        "ROMANCY_TEST_DIR": str(folder),
        "ROMANCY_TEST_QUEUE": queue,
        "PYTHONPATH": str(ROOT),
    }
    worker = celery_worker("tests.cli_app", env, folder, queue, concurrency=4, pool="threads")
    worker.start()
    yield Cli(app, romancy, folder, env, worker)
    worker.stop()
    redis.delete(queue, unheard_queue(queue))
    romancy.storage.dispose()
    drop_pg_database(database_url)


def test_romancy_is_a_celery_subcommand(cli: Cli, tmp_path: Path) -> None:
    done = cli.program("--help")
    assert done.returncode == 0, done.stderr
    for command in COMMANDS:
        assert f"  {command} " in done.stdout

    fresh = tmp_path / "fresh.db"
    done = cli.program("migrate", ROMANCY_TEST_DB=f"sqlite:///{fresh}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("history schema at revision ")
    with sqlite3.connect(fresh) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"romancy_instances", "romancy_history", "romancy_compensations"} <= tables

    done = cli.program("show", "no-such-id")
    assert done.returncode == 2
    assert "no workflow instance 'no-such-id'" in done.stderr
    assert done.stdout == ""


def test_list_and_show(cli: Cli) -> None:
    completed = cli.start("order_saga", "L1")
    failed = cli.start("trip", "L2", fail_car=True)
    assert cli.finished(completed).status == "completed"
    assert cli.finished(failed).status == "failed"

    listing = cli("list")
    assert listing.exit_code == 0, listing.output
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["INSTANCE", "WORKFLOW", "STATUS", "UPDATED", "NOTE"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows[completed][1:3] == ["order_saga", "completed"]
    assert rows[failed][1:3] == ["trip", "failed"]
    assert "TerminalError: no car for L2" in listing.stdout

    assert _ids(cli("list", "--status", "failed")) == [failed]
    assert _ids(cli("list", "--status", "failed", "--status", "completed")) == [failed, completed]
    assert _ids(cli("list", "--workflow", "order_saga")) == [completed]
    assert _ids(cli("list", "--limit", "1")) == [failed]  # newest first
    as_json = json.loads(cli("list", "--json").stdout)
    assert [(i["instance_id"], i["status"]) for i in as_json] == [
        (failed, "failed"),
        (completed, "completed"),
    ]

    shown = cli("show", failed)
    assert shown.exit_code == 0, shown.output
    text = shown.stdout
    assert f"instance  {failed}" in text
    assert "status    failed" in text
    assert "error     celery_romancy.errors.TerminalError: no car for L2 (step book_car:1)" in text
    assert 'input     {"trip_id": "L2", "fail_car": true}' in text
    section = text.split("\nsteps (")[1].split("\n\n")[0]
    steps = {line.split()[1]: line for line in section.splitlines()[2:]}
    assert 'ok "FL-L2"' in steps["book_flight:1"]
    assert 'ok "HT-L2"' in steps["book_hotel:1"]
    assert "error celery_romancy.errors.TerminalError: no car for L2" in steps["book_car:1"]
    assert "compensations, newest first (3)" in text
    for name in ("cancel_hotel", "send_apology", "cancel_flight"):
        assert any(line.split()[:1] == [name] and "done" in line for line in text.splitlines())

    document = json.loads(cli("show", "--json", completed).stdout)
    assert document["instance"]["status"] == "completed"
    assert [e["step_id"] for e in document["history"]] == ["reserve:1", "charge:1", "ship:1"]
    assert document["history"][2]["result"] == "TRACK-L1"


def test_bad_ids_and_bad_arguments(cli: Cli) -> None:
    for command in ("show", "cancel", "resume", "retry-compensation"):
        result = cli(command, "no-such-id")
        assert result.exit_code == 2, (command, result.output)
        assert "Invalid value for INSTANCE_ID: no workflow instance 'no-such-id'" in result.stderr
    result = cli("send-event", "payment", "--instance-id", "no-such-id")
    assert result.exit_code == 2
    assert "Invalid value for --instance-id: no workflow instance 'no-such-id'" in result.stderr
    for option in ("--root", "--parent"):
        result = cli("list", option, "no-such-id")
        assert result.exit_code == 2, (option, result.output)
        assert f"Invalid value for {option}: no workflow instance 'no-such-id'" in result.stderr
        assert result.stdout == ""

    usage_errors = [
        ("list", "--status", "sleeping"),
        ("list", "--limit", "0"),
        ("list", "--limit", "many"),
        ("list", "--root", "a", "--status", "failed"),  # a tree is listed whole
        ("list", "--root", "a", "--parent", "b"),
        ("list", "--root", "a", "--limit", "3"),
        ("show",),
        ("cancel",),
        ("frobnicate",),
        ("send-event", "payment"),  # no addressee
        ("send-event", "payment", "--instance-id", "a", "--correlation-id", "b"),
        ("send-event", "payment", "--instance-id", "a", "--data", "{not json"),
    ]
    for args in usage_errors:
        result = cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.startswith("Usage: "), (args, result.stderr)
        assert result.stdout == ""

    bare = Celery("no_romancy_here", set_as_current=False)
    context = CLIContext(app=bare, no_color=True, workdir=None)
    result = CliRunner().invoke(romancy_command, ["list"], obj=context)
    assert result.exit_code == 2
    assert "no Romancy is bound to the Celery app 'no_romancy_here'" in result.stderr


def test_cancel(cli: Cli) -> None:
    instance_id = cli.start("held_saga", "C1")
    wait_for(lambda: "held-start:C1" in cli.ledger.events(), 60, "the held step to start")
    result = cli("cancel", instance_id, "--reason", "customer asked")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"cancellation of {instance_id} requested\n"
    assert cli("cancel", instance_id).stdout == (
        f"{instance_id} is already being cancelled or rolled back\n"
    )
    Gate(cli.folder, "C1").open()
    instance = cli.finished(instance_id)
    assert instance.status == "cancelled"
    assert instance.cancel_reason == "customer asked"
    assert "ship:C1" not in cli.ledger.events()

    done = cli.start("order_saga", "C2")
    assert cli.finished(done).status == "completed"
    result = cli("cancel", done)
    assert result.exit_code == 1
    assert "cannot cancel workflow instance" in result.stderr
    assert "already ended completed" in result.stderr


def test_resume_after_the_cause_is_fixed(cli: Cli) -> None:
    instance_id = cli.start("versioned", "R1")
    wait_for(lambda: "held-start:R1" in cli.ledger.events(), 60, "the held step to start")
    busy = cli("resume", instance_id)
    assert busy.exit_code == 1
    assert "is held by a worker right now" in busy.stderr

    # A deploy changes which step comes second while the instance is in flight.
    version_file = cli.folder / "workflow-version"
    version_file.write_text("2")
    Gate(cli.folder, "R1").open()
    parked = cli.finished(instance_id)
    assert parked.status == "failed"
    assert parked.error is not None
    assert parked.error["type"] == "celery_romancy.errors.NonDeterminismError"

    version_file.unlink()  # the fix is deployed
    result = cli("resume", instance_id)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"resumed {instance_id}\n"
    assert cli.finished(instance_id).status == "completed"
    assert "ship:R1" in cli.ledger.events()

    result = cli("resume", instance_id)
    assert result.exit_code == 1
    assert "is completed; only pending, running, compensating or parked" in result.stderr


def test_retry_compensation(cli: Cli) -> None:
    api_down = cli.folder / "flight-api-down"
    api_down.touch()
    try:
        instance_id = cli.start("trip", "X1", fail_car=True)
        assert cli.finished(instance_id).status == "compensation_failed"
    finally:
        api_down.unlink()
    shown = cli("show", instance_id).stdout
    assert "status    compensation_failed" in shown
    assert any(
        line.split()[:1] == ["cancel_flight"] and " failed " in line for line in shown.splitlines()
    )
    # Both failures' tracebacks: the step's, then the compensation's that parked it.
    undo_traceback = shown.split("\ntraceback of the failed compensation")[1]
    assert '      raise ConnectionError("flight API unreachable")' in undo_traceback
    assert undo_traceback.rstrip().endswith("ConnectionError: flight API unreachable")
    assert "\ntraceback (step book_car:1)\n" in shown.split(undo_traceback)[0]

    result = cli("retry-compensation", instance_id)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"retrying the compensation of {instance_id}\n"
    assert cli.finished(instance_id).status == "failed"  # rolled back: the original failure
    assert "cancel_flight:X1:FL-X1" in cli.ledger.events()

    result = cli("retry-compensation", instance_id)
    assert result.exit_code == 1
    assert "is failed, not compensation_failed" in result.stderr


def test_send_event(cli: Cli) -> None:
    by_id = cli.start("awaiting_payment", "E1")
    wait_for(
        lambda: cli.romancy.get_instance(by_id).status == "waiting_for_event",
        30,
        "the instance to wait for its event",
    )
    result = cli("send-event", "payment", "--data", '{"amount": 12.5}', "--instance-id", by_id)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"event payment sent to instance {by_id}\n"
    instance = cli.finished(by_id)
    assert instance.status == "completed"
    assert instance.output_data == {"invoice": "INV-E1", "payment": {"amount": 12.5}}

    # Sent before anyone waits: kept, and taken by the instance that waits later.
    result = cli("send-event", "payment", "--data", '"paid"', "--correlation-id", "E2")
    assert result.exit_code == 0, result.output
    by_correlation = cli.start("awaiting_payment", "E2", by_correlation=True)
    assert cli.finished(by_correlation).output_data == {"invoice": "INV-E2", "payment": "paid"}

    result = cli("send-event", "payment", "--instance-id", by_id)
    assert result.exit_code == 1
    assert "already ended completed" in result.stderr


def _ids(result: Result) -> list[str]:
    assert result.exit_code == 0, result.output
    return [line.split()[0] for line in result.stdout.splitlines()[1:]]


def test_the_database_password_never_reaches_the_terminal(cli: Cli) -> None:
    password = "s3cret-Pa55"  # the test PostgreSQL trusts local connections: unused
    url = sa.make_url(cli.env["ROMANCY_TEST_DB"])
    with_password = url.set(password=password).render_as_string(hide_password=False)
    done = cli.program("migrate", ROMANCY_TEST_DB=with_password)
    assert done.returncode == 0, done.stderr
    assert f"postgresql://{url.username}:***@{url.host}:{url.port}/{url.database}" in done.stdout
    assert password not in done.stdout + done.stderr

    # SQLAlchemy cannot parse this one (the port): refused with the password masked.
    malformed = f"postgresql://{url.username}:{password}@{url.host}:port/{url.database}"
    done = cli.program("list", ROMANCY_TEST_DB=malformed)
    assert done.returncode == 1
    assert f"postgresql://{url.username}:***@{url.host}:port/" in done.stderr
    assert password not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_a_tree_of_child_workflows(cli: Cli) -> None:
    root = cli.start("cli_tree", "T1")
    finished = cli.finished(root)
    assert finished.status == "completed", finished.error
    assert finished.output_data == {
        "branch": {"branch": "stamped:T1.branch", "leaf": "stamped:T1.branch"},
        "second": "failed",
    }
    # Child ids default to <parent id>/<step id>.
    branch = f"{root}/child:cli_branch:1"
    grandchild = f"{branch}/child:cli_leaf:1"
    failed = f"{root}/child:cli_leaf:1"

    result = cli("show", root)
    assert result.exit_code == 0, result.output
    assert "\nparent " not in result.stdout
    assert _child_rows(result.stdout) == [
        [branch, "cli_branch", "completed"],
        [failed, "cli_leaf", "failed"],
    ]
    shown = cli("show", branch).stdout
    assert f"parent    {root} (parent_close: cancel)" in shown
    assert "\nroot " not in shown  # its parent is the root
    assert _child_rows(shown) == [[grandchild, "cli_leaf", "completed"]]
    shown = cli("show", grandchild).stdout
    assert f"parent    {branch} (parent_close: cancel)" in shown
    assert f"root      {root}" in shown
    assert "child workflows" not in shown  # a leaf: no section

    document = json.loads(cli("show", "--json", root).stdout)
    assert document["instance"]["parent_instance_id"] is None
    assert document["instance"]["root_instance_id"] is None
    assert [
        (
            c["instance_id"],
            c["workflow"],
            c["status"],
            c["parent_instance_id"],
            c["root_instance_id"],
        )
        for c in document["children"]
    ] == [
        (branch, "cli_branch", "completed", root, root),
        (failed, "cli_leaf", "failed", root, root),
    ]
    assert document["more_children"] is False
    document = json.loads(cli("show", "--json", grandchild).stdout)
    assert document["instance"]["parent_instance_id"] == branch
    assert document["instance"]["root_instance_id"] == root
    assert document["instance"]["parent_close"] == "cancel"
    assert document["children"] == []

    listing = cli("list", "--root", root)
    assert listing.exit_code == 0, listing.output
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["INSTANCE", "WORKFLOW", "STATUS", "CREATED", "NOTE"]
    # Root first, each child two spaces under its parent, siblings oldest first.
    assert [_tree_row(line) for line in lines[1:]] == [
        (0, root, "cli_tree", "completed"),
        (2, branch, "cli_branch", "completed"),
        (4, grandchild, "cli_leaf", "completed"),
        (2, failed, "cli_leaf", "failed"),
    ]
    assert "TerminalError: no stamp for T1.boom" in lines[4]
    subtree = cli("list", "--root", branch).stdout.splitlines()
    assert [_tree_row(line) for line in subtree[1:]] == [
        (0, branch, "cli_branch", "completed"),
        (2, grandchild, "cli_leaf", "completed"),
    ]

    as_json = json.loads(cli("list", "--root", root, "--json").stdout)
    assert [
        (i["instance_id"], i["parent_instance_id"], i["root_instance_id"]) for i in as_json
    ] == [
        (root, None, None),
        (branch, root, root),
        (grandchild, branch, root),
        (failed, root, root),
    ]

    assert _ids(cli("list", "--parent", root)) == [failed, branch]  # newest first
    assert _ids(cli("list", "--parent", root, "--status", "failed")) == [failed]
    assert cli("list", "--parent", grandchild).stdout == "(none)\n"  # a leaf
    as_json = json.loads(cli("list", "--parent", branch, "--json").stdout)
    assert [(i["instance_id"], i["parent_instance_id"]) for i in as_json] == [(grandchild, branch)]


def test_a_parent_waiting_for_its_child(cli: Cli) -> None:
    parent = cli.start("c_waits_on_child", "W1", "cancel")
    child = f"{parent}/child:c_waiter:1"
    wait_for(
        lambda: (
            [i.status for i in cli.romancy.find_instances(parent=parent)] == ["waiting_for_event"]
        ),
        30,
        "the child to wait for its event",
    )
    shown = cli("show", parent).stdout
    assert f"pending   child c_waiter (child:c_waiter:1, attempt 1) -> {child}" in shown
    assert _child_rows(shown) == [[child, "c_waiter", "waiting_for_event"]]

    result = cli("send-event", "c_go", "--correlation-id", "W1")
    assert result.exit_code == 0, result.output
    assert cli.finished(parent).output_data == "done:W1"
    assert _child_rows(cli("show", parent).stdout) == [[child, "c_waiter", "completed"]]


def _child_rows(shown: str) -> list[list[str]]:
    """The INSTANCE, WORKFLOW and STATUS cells of ``show``'s child workflows section."""
    section = shown.split("\nchild workflows (")[1].split("\n\n")[0]
    return [line.split()[:3] for line in section.splitlines()[2:]]


def _tree_row(line: str) -> tuple[int, str, str, str]:
    """A ``list --root`` line: its indent, instance, workflow and status."""
    cells = line.split()
    return len(line) - len(line.lstrip(" ")), cells[0], cells[1], cells[2]


# -- show: when, where, which task; what a step in flight waits for ------------------------

CLOCK = re.compile(r"^\d\d:\d\d:\d\d\.\d{3}$")
TASK_ID = re.compile(r"^[0-9a-f]{32}$")
STEP_COLUMNS = ["#", "STEP", "KIND", "ATTEMPT", "STARTED", "ENDED", "TOOK", "WORKER", "TASK"]


def _step_table(shown: str) -> list[dict[str, str]]:
    """``show``'s steps table, one dict per row keyed by its header (OUTCOME: the rest of
    the line). Cells are cut at the header's column starts, so empty cells stay empty."""
    section = shown.split("\nsteps (")[1].split("\n\n")[0].splitlines()[1:]
    header = section[0]
    names = [*STEP_COLUMNS, "OUTCOME"]
    starts = [header.index(f" {name}") + 1 if name != "#" else 2 for name in names]
    rows = []
    for line in section[1:]:
        cells = [line[a:b] for a, b in zip(starts, [*starts[1:], None], strict=True)]
        rows.append(
            {n: c.strip() if n != "STEP" else c.rstrip() for n, c in zip(names, cells, strict=True)}
        )
    return rows


def _clock_of(cell: str, day: datetime) -> datetime:
    return datetime.strptime(f"{day:%Y-%m-%d} {cell}", "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)


def test_show_has_each_steps_times_worker_and_celery_task_id(cli: Cli) -> None:
    instance_id = cli.start("order_saga", "S1")
    instance = cli.finished(instance_id)
    shown = cli("show", instance_id)
    assert shown.exit_code == 0, shown.output
    assert "\nsteps (3; times UTC)\n" in shown.stdout
    header = shown.stdout.split("\nsteps (")[1].splitlines()[1].split()
    assert header == [*STEP_COLUMNS, "OUTCOME"]
    rows = _step_table(shown.stdout)
    assert [r["STEP"] for r in rows] == ["reserve:1", "charge:1", "ship:1"]
    log = cli.worker.log()
    previous_end = instance.created_at
    for row in rows:
        assert CLOCK.match(row["STARTED"]) and CLOCK.match(row["ENDED"]), row
        started = _clock_of(row["STARTED"], instance.created_at)
        ended = _clock_of(row["ENDED"], instance.created_at)
        assert previous_end - timedelta(milliseconds=1) <= started <= ended, row
        took = float(row["TOOK"].removesuffix("s"))
        assert abs(took - (ended - started).total_seconds()) <= 0.002, row
        previous_end = ended
        assert row["WORKER"], row
        # The Celery task id: the one the worker logged running this step.
        assert TASK_ID.match(row["TASK"]), row
        name = row["STEP"].split(":")[0]
        assert f"Task {name}[{row['TASK']}] succeeded" in log, row
    assert len({r["TASK"] for r in rows}) == 3
    assert rows[2]["OUTCOME"] == 'ok "TRACK-S1"'

    document = json.loads(cli("show", "--json", instance_id).stdout)
    for event, row in zip(document["history"], rows, strict=True):
        assert event["task_id"] == row["TASK"]
        assert event["worker_id"] == row["WORKER"]
        started = datetime.fromisoformat(event["started_at"])
        ended = datetime.fromisoformat(event["created_at"])
        assert event["duration"] == round((ended - started).total_seconds(), 3)


def test_show_prints_the_traceback_of_a_failure(cli: Cli) -> None:
    instance_id = cli.start("trip", "S2", fail_car=True)
    assert cli.finished(instance_id).status == "failed"
    shown = cli("show", instance_id).stdout
    traceback = shown.split("\ntraceback (step book_car:1)\n")[1]
    lines = traceback.splitlines()
    assert lines[0] == "  Traceback (most recent call last):"
    assert '      raise TerminalError(f"no car for {trip_id}")' in lines
    assert lines[-1] == "  celery_romancy.errors.TerminalError: no car for S2"
    rows = {r["STEP"]: r for r in _step_table(shown)}
    assert rows["book_car:1"]["OUTCOME"] == (
        "error celery_romancy.errors.TerminalError: no car for S2"
    )
    # The compensations that ran, each with when it ended.
    section = shown.split("\ncompensations, newest first (3)\n")[1].split("\n\n")[0]
    for line in section.splitlines()[1:]:
        assert line.split()[2] == "done" and CLOCK.match(line.split()[4]), line


def test_show_tells_where_a_step_in_flight_is_and_when_recovery_resends_it(cli: Cli) -> None:
    timeout = cli.romancy.settings.dispatch_timeout
    unheard = cli.start("cli_unheard_saga", "P1")  # its step's queue has no worker
    wait_for(lambda: cli.romancy.storage.get_steps(unheard), 30, "the step to be sent")
    (step,) = cli.romancy.storage.get_steps(unheard)
    assert step.dispatch_at is not None
    shown = cli("show", unheard).stdout
    pending = _pending_lines(shown)
    assert pending[0] == "activity cli_unheard (cli_unheard:1, attempt 1)"
    sent = _stamp(step.dispatch_at)
    assert pending[1] == f"task {step.token}, sent {sent}"
    resend = _stamp(step.dispatch_at + timedelta(seconds=timeout))
    assert pending[2] == f"recovery re-sends it after {resend} unless a worker takes it"
    document = json.loads(cli("show", "--json", unheard).stdout)
    (in_flight,) = document["steps_in_flight"]
    assert in_flight["token"] == step.token
    assert datetime.fromisoformat(in_flight["resend_after"]) == step.dispatch_at + timedelta(
        seconds=timeout
    )

    held = cli.start("held_saga", "P2")
    wait_for(lambda: "held-start:P2" in cli.ledger.events(), 60, "the held step to start")
    pending = _pending_lines(cli("show", held).stdout)
    assert pending[0] == "activity held (held:1, attempt 1)"
    assert pending[1].startswith("task ")
    assert re.fullmatch(
        r"running on \S+ \(lease until [-\d: ]+ UTC, renewed while it runs\); "
        r"recovery re-sends it if the lease runs out",
        pending[2],
    ), pending
    Gate(cli.folder, "P2").open()
    assert cli.finished(held).status == "completed"

    waiting = cli.start("awaiting_payment", "P3", by_correlation=True)
    wait_for(
        lambda: cli.romancy.get_instance(waiting).status == "waiting_for_event",
        30,
        "the instance to wait for its event",
    )
    pending = _pending_lines(cli("show", waiting).stdout)
    assert pending[0] == "wait_event payment (wait_event:payment:1, attempt 1)"
    assert re.fullmatch(
        r"waits for event payment with correlation id P3 since [-\d: ]+ UTC, no timeout",
        pending[1],
    ), pending
    cli.romancy.send_event("payment", "paid", correlation_id="P3")
    assert cli.finished(waiting).status == "completed"

    napping = cli.start("napper", "P4", 3600.0)
    timing_out = cli.start("await_payment", "P4", timeout=1800.0)
    timer = _step_once(cli, napping, "timer")
    assert timer.dispatch_at is not None
    assert _pending_lines(cli("show", napping).stdout)[1:] == [f"fires {_stamp(timer.dispatch_at)}"]
    event_wait = _step_once(cli, timing_out, "wait_event")
    assert event_wait.dispatch_at is not None and event_wait.created_at is not None
    assert _pending_lines(cli("show", timing_out).stdout)[1:] == [
        f"waits for event payment.received with correlation id P4 since "
        f"{_stamp(event_wait.created_at)}, times out {_stamp(event_wait.dispatch_at)}"
    ]


def _step_once(cli: Cli, instance_id: str, kind: str) -> StepRecord:
    """The instance's one step in flight, once it is of ``kind``."""

    def found() -> bool:
        steps = cli.romancy.storage.get_steps(instance_id)
        return len(steps) == 1 and steps[0].kind == kind

    wait_for(found, 30, f"a {kind} step")
    (step,) = cli.romancy.storage.get_steps(instance_id)
    return step


def test_show_a_retry_waiting_out_its_delay_and_the_last_failed_attempt(cli: Cli) -> None:
    instance_id = cli.start("cli_flaky_saga", "D1")
    wait_for(lambda: cli.romancy.storage.get_attempts(instance_id), 30, "the first attempt to fail")
    step = _step_once(cli, instance_id, "activity")
    assert step.command.attempt == 2 and step.dispatch_at is not None
    shown = cli("show", instance_id).stdout
    assert _pending_lines(shown) == [
        "activity cli_flaky (cli_flaky:1, attempt 2)",
        f"task {step.token}, due {_stamp(step.dispatch_at)}",
        f"recovery re-sends it after "
        f"{_stamp(step.dispatch_at + timedelta(seconds=cli.romancy.settings.dispatch_timeout))} "
        "unless a worker takes it",
    ]
    traceback = shown.split("\ntraceback of the last failed attempt (cli_flaky:1, attempt 1)\n")[1]
    assert '      raise ConnectionError(f"{tag}: stock service down")' in traceback
    assert traceback.rstrip().endswith("ConnectionError: D1: stock service down")
    (current,) = status_of(cli.romancy, instance_id)["current_steps"]
    assert current["attempt"] == 2
    assert datetime.fromisoformat(current["until"]) == step.dispatch_at  # the retry is due


def test_show_groups_the_branches_of_a_gather(cli: Cli) -> None:
    instance_id = cli.start("held_fan_out", "G1", 3, 2)  # two branches at a time
    wait_for(
        lambda: sum(e.startswith("held-start:G1/") for e in cli.ledger.events()) == 2,
        60,
        "two branches to start",
    )
    rows = _step_table(cli("show", instance_id).stdout)
    assert [(r["STEP"], r["KIND"], r["OUTCOME"]) for r in rows] == [
        ("gather:1", "gather", "3 branches"),
        ("  g_held_label:1", "activity", f"in flight: running on {rows[1]['WORKER']}"),
        ("  g_held_label:2", "activity", f"in flight: running on {rows[2]['WORKER']}"),
        ("  g_held_label", "-", "not sent"),
    ]
    assert all(TASK_ID.match(r["TASK"]) for r in rows[1:3])
    Gate(cli.folder, "G1").open()
    assert cli.finished(instance_id).status == "completed"
    rows = _step_table(cli("show", instance_id).stdout)
    assert [(r["#"], r["STEP"], r["OUTCOME"]) for r in rows] == [
        ("0", "gather:1", "3 branches"),
        ("1", "  g_held_label:1", 'ok "G1/0"'),
        ("2", "  g_held_label:2", 'ok "G1/1"'),
        ("3", "  g_held_label:3", 'ok "G1/2"'),
        ("4", "g_after:1", 'ok "after"'),
    ]


def _pending_lines(shown: str) -> list[str]:
    """The ``pending`` field of ``show``: its first line and those indented under it."""
    lines = shown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("pending   "))
    block = [lines[start][10:]]
    for line in lines[start + 1 :]:
        if not line.startswith(" " * 10):
            break
        block.append(line[10:])
    return block


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- list --search: business keys -----------------------------------------------------------


def test_list_finds_instances_by_business_key(cli: Cli) -> None:
    tag = uuid.uuid4().hex[:6]
    first = cli.start("order_saga", "K1", search={"order_id": f"ORD-{tag}-4"})
    second = cli.start("order_saga", "K2", search={"order_id": f"ORD-{tag}-5", "shop": tag})
    third = cli.start("order_saga", "K3", search={"order_id": f"ORD-{tag}-6", "shop": tag})
    for instance_id in (first, second, third):
        cli.finished(instance_id)

    assert _ids(cli("list", "--search", f"order_id=ORD-{tag}-4")) == [first]
    assert _ids(cli("list", "--search", f"shop={tag}")) == [third, second]  # newest first
    both = cli("list", "--search", f"shop={tag}", "--search", f"order_id=ORD-{tag}-5")
    assert _ids(both) == [second]  # every pair must match
    assert _ids(cli("list", "--search", f"shop={tag}", "--limit", "1")) == [third]
    assert _ids(cli("list", "--search", f"shop={tag}", "--status", "failed")) == []
    assert cli("list", "--search", f"order_id=ORD-{tag}-7").stdout == "(none)\n"
    as_json = json.loads(cli("list", "--json", "--search", f"order_id=ORD-{tag}-6").stdout)
    assert [i["instance_id"] for i in as_json] == [third]
    # show names an instance's business keys.
    assert f"search    order_id=ORD-{tag}-5 shop={tag}\n" in cli("show", second).stdout
    assert "\nsearch " not in cli("show", cli.start("order_saga", "K4")).stdout
    document = json.loads(cli("show", "--json", second).stdout)
    assert document["search"] == {"order_id": f"ORD-{tag}-5", "shop": tag}

    for bad in (["--search", "order_id"], ["--search", "=x"]):
        result = cli("list", *bad)
        assert result.exit_code == 2, (bad, result.output)
        assert "Invalid value for --search" in result.stderr
        assert "is not KEY=VALUE" in result.stderr
    twice = cli("list", "--search", "shop=a", "--search", "shop=b")
    assert twice.exit_code == 2
    assert "shop given twice" in twice.stderr
    tree = cli("list", "--root", first, "--search", "shop=a")
    assert tree.exit_code == 2
    assert "it takes no --search" in tree.stderr
