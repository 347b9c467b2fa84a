"""Upgrading workflow code while instances run: ``ctx.patched``, ``ctx.deprecate_patch``
and code versions. First the rules, by replay alone (no database, no Celery); then real
deploys: workers of one release stopped, workers of the next started, on SQLite and
PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from celery.bin.base import CLIContext
from click.testing import CliRunner

from celery_romancy import Romancy, WorkflowContext
from celery_romancy.cli import romancy as romancy_command
from celery_romancy.definitions import ActivityDefinition, WorkflowDefinition
from celery_romancy.embedded import embedded_celery, in_process_worker
from celery_romancy.errors import InvalidArgumentsError, NonDeterminismError
from celery_romancy.patching import explained
from celery_romancy.replay import Completed, Diverged, Replayed, Waiting, replay_recording
from celery_romancy.retry import RetryPolicy
from celery_romancy.states import HistoryKind, Status, StepKind
from celery_romancy.storage import HistoryEvent, Snapshot, StepRef, StepWrite, WorkflowInstance
from celery_romancy.transition import replayed

from .ledger import Ledger, wait_for
from .processes import ROOT, CeleryProcess, celery_worker
from .services import REDIS_URL, redis_client
from .upgrade_flows import WORKFLOW, build_release

# -- the rules, by replay alone ------------------------------------------------------------


def _reserve(order_id: str) -> str:
    raise AssertionError("activities do not run during replay")


def _check_fraud(order_id: str) -> int:
    raise AssertionError("activities do not run during replay")


def _charge(order_id: str) -> str:
    raise AssertionError("activities do not run during replay")


def _notify(message: str) -> None:
    raise AssertionError("activities do not run during replay")


def activity(name: str, fn: Any) -> ActivityDefinition[Any, Any]:
    return ActivityDefinition(name, fn, compensation=None, retry=RetryPolicy(), queue=None)


reserve = activity("reserve", _reserve)
check_fraud = activity("check_fraud", _check_fraud)
charge = activity("charge", _charge)
notify = activity("notify", _notify)


def done(seq: int, step_id: str, result: Any = None, kind: str = "activity") -> HistoryEvent:
    return HistoryEvent(seq, step_id, kind, step_id.rsplit(":", 1)[0], result=result)


def approved(seq: int) -> HistoryEvent:
    return HistoryEvent(seq, "wait_event:approved:1", HistoryKind.EVENT, "approved")


def marker(seq: int, patch_id: str = "fraud-check") -> HistoryEvent:
    return HistoryEvent(seq, f"patch:{patch_id}", HistoryKind.MARKER, patch_id)


def _v1(ctx: WorkflowContext, order_id: str) -> str:
    reserve.execute(ctx, order_id)
    ctx.wait_event("approved")
    return f"old:{charge.execute(ctx, order_id)}"


def _v2(ctx: WorkflowContext, order_id: str) -> str:
    if ctx.patched("fraud-check"):
        score = check_fraud.execute(ctx, order_id)
        reserve.execute(ctx, order_id)
        ctx.wait_event("approved")
        return f"new:{charge.execute(ctx, order_id)}:{score}"
    reserve.execute(ctx, order_id)
    ctx.wait_event("approved")
    return f"old:{charge.execute(ctx, order_id)}"


def _v3(ctx: WorkflowContext, order_id: str) -> str:
    """The clean-up release: the old path is gone."""
    ctx.deprecate_patch("fraud-check")
    score = check_fraud.execute(ctx, order_id)
    reserve.execute(ctx, order_id)
    ctx.wait_event("approved")
    return f"new:{charge.execute(ctx, order_id)}:{score}"


def _v3_without_deprecate(ctx: WorkflowContext, order_id: str) -> str:
    score = check_fraud.execute(ctx, order_id)
    reserve.execute(ctx, order_id)
    ctx.wait_event("approved")
    return f"new:{charge.execute(ctx, order_id)}:{score}"


v1 = WorkflowDefinition("order", _v1, version="1")
v2 = WorkflowDefinition("order", _v2, version="2")
v3 = WorkflowDefinition("order", _v3, version="3")
v3_without_deprecate = WorkflowDefinition("order", _v3_without_deprecate, version="3")

OLD_HISTORY = [done(0, "reserve:1", "R"), approved(1)]
NEW_HISTORY = [marker(0), done(1, "check_fraud:1", 7), done(2, "reserve:1", "R"), approved(3)]


def run(
    workflow: WorkflowDefinition[Any, Any],
    history: list[HistoryEvent],
    in_flight: set[str] | None = None,
    waits: set[str] | None = None,
) -> Replayed:
    return replay_recording(
        workflow, "o-1", {"order_id": "o-1"}, history, in_flight or set(), waits=waits or set()
    )


def next_step(replayed: Replayed) -> tuple[str, int]:
    assert isinstance(replayed.outcome, Waiting), replayed.outcome
    (command,) = replayed.outcome.commands
    return command.step_id, command.seq


def test_a_new_instance_records_the_marker_and_takes_the_new_path() -> None:
    replayed = run(v2, [])

    assert replayed.events == [marker(0)]
    assert next_step(replayed) == ("check_fraud:1", 1)


def test_the_marker_in_history_keeps_the_new_path_and_is_not_recorded_again() -> None:
    replayed = run(v2, NEW_HISTORY)
    assert replayed.events == []
    assert next_step(replayed) == ("charge:1", 4)

    finished = run(v2, [*NEW_HISTORY, done(4, "charge:1", "ok")])
    assert finished.outcome == Completed("new:ok:7")


def test_an_instance_that_went_past_the_patch_under_old_code_keeps_the_old_path() -> None:
    # Old code recorded its reservation and the approval: no marker, no fraud check.
    replayed = run(v2, OLD_HISTORY)
    assert replayed.events == []
    assert next_step(replayed) == ("charge:1", 2)
    assert run(v2, [*OLD_HISTORY, done(2, "charge:1", "ok")]).outcome == Completed("old:ok")


def test_an_old_instance_waiting_at_its_first_step_keeps_the_old_path() -> None:
    # Old code sent "reserve:1" from position 0; nothing is recorded yet.
    replayed = run(v2, [], in_flight={"reserve:1"})
    assert replayed.events == []
    assert next_step(replayed) == ("reserve:1", 0)


def _child(ctx: WorkflowContext, order_id: str) -> str:
    return order_id


child = WorkflowDefinition("child", _child)


def _starts_then_patched(ctx: WorkflowContext, order_id: str) -> str:
    handle = ctx.start_child(child, order_id)
    if ctx.patched("notify-first"):
        notify.execute(ctx, "started")
    ctx.wait_event("approved")
    return f"{handle.result()}:{charge.execute(ctx, order_id)}"


starts_then_patched = WorkflowDefinition("starts", _starts_then_patched)
CHILD_ENDED = done(
    0, "child:child:1", {"instance_id": "o-1/child:child:1", "output": "o-1"}, HistoryKind.CHILD
)


@pytest.mark.parametrize(
    ("in_flight", "waits", "patched"),
    [
        # Old code went further: it began the wait at position 1 (no marker before it) ...
        (set(), {"wait_event:approved:1"}, False),
        # ... or sent its charge from further on.
        ({"charge:1"}, set(), False),
        # Nothing sent from here on: this run is the first here, whatever came before.
        (set(), set(), True),
    ],
)
def test_a_step_sent_from_beyond_the_patch_by_old_code_keeps_the_old_path(
    in_flight: set[str], waits: set[str], patched: bool
) -> None:
    replayed = run(starts_then_patched, [CHILD_ENDED], in_flight, waits)

    if patched:
        assert replayed.events == [marker(1, "notify-first")]
        assert next_step(replayed) == ("notify:1", 2)
    else:
        assert replayed.events == []
        assert next_step(replayed) == ("wait_event:approved:1", 1)


def test_the_transition_tells_replay_of_the_waits_an_instance_has_begun(tmp_path: Path) -> None:
    """The engine's side of the rule: a parent woken by its child's end while it waits
    for an event (begun by old code, after the patch) keeps the old path."""
    from celery import Celery

    romancy = Romancy(Celery("waits"), database_url=f"sqlite:///{tmp_path / 'unused.db'}")
    romancy.registry.add(child)
    romancy.registry.add(starts_then_patched)
    now = datetime.now(UTC)
    parent = WorkflowInstance(
        "o-1", "starts", "running", {"order_id": "o-1"}, None, None, 3, None, now, now
    )
    waiting = StepRef("t-1", "wait_event:approved:1", StepKind.WAIT_EVENT, leased=False)

    planned = replayed(romancy, StepWrite())(Snapshot(parent, [CHILD_ENDED], [waiting]))

    assert planned.rows.events == []  # no marker
    assert planned.plan.add == []  # the wait goes on, nothing new is sent
    assert planned.plan.change.status == Status.WAITING_FOR_EVENT


def test_a_step_in_flight_that_the_body_already_passed_leaves_the_instance_new() -> None:
    # A new instance: its child (position 0) runs; the body reaches the patch past it.
    replayed = run(starts_then_patched, [], in_flight={"child:child:1"})

    assert replayed.events == [marker(1, "notify-first")]
    assert next_step(replayed) == ("notify:1", 2)


def _asks_twice(ctx: WorkflowContext, order_id: str) -> str:
    first = ctx.patched("fraud-check")
    reserve.execute(ctx, order_id)
    second = ctx.patched("fraud-check")  # past the first answer: the same answer
    return f"{first}:{second}"


asks_twice = WorkflowDefinition("twice", _asks_twice)


def test_asking_about_a_patch_again_gives_the_same_answer_and_records_one_marker() -> None:
    fresh = run(asks_twice, [])
    assert fresh.events == [marker(0)]
    assert next_step(fresh) == ("reserve:1", 1)
    assert run(asks_twice, [marker(0), done(1, "reserve:1", "R")]).outcome == Completed("True:True")
    assert run(asks_twice, [done(0, "reserve:1", "R")]).outcome == Completed("False:False")


def _two_patches(ctx: WorkflowContext, order_id: str) -> str:
    express = ctx.patched("express")  # added in a later release than "fraud-check"
    fraud = ctx.patched("fraud-check")
    reserve.execute(ctx, order_id)
    return f"{express}:{fraud}"


two_patches = WorkflowDefinition("two", _two_patches)


def test_a_later_patch_is_false_before_an_earlier_patchs_marker_which_stays_true() -> None:
    history = [marker(0, "fraud-check"), done(1, "reserve:1", "R")]
    assert run(two_patches, history).outcome == Completed("False:True")

    fresh = run(two_patches, [])
    assert fresh.events == [marker(0, "express"), marker(1, "fraud-check")]


def test_deprecate_patch_replays_histories_with_and_without_the_marker_and_records_none() -> None:
    fresh = run(v3, [])
    assert fresh.events == []
    assert next_step(fresh) == ("check_fraud:1", 0)

    patched = run(v3, [*NEW_HISTORY, done(4, "charge:1", "ok")])
    assert patched.outcome == Completed("new:ok:7")
    assert patched.events == []


def test_old_code_that_meets_a_marker_parks_the_instance_naming_the_patch() -> None:
    replayed = run(v1, NEW_HISTORY)

    assert isinstance(replayed.outcome, Diverged)
    error = explained(replayed.outcome.error, NEW_HISTORY, "2", "1")
    assert error.recorded == "patch:fraud-check"
    assert error.called == "reserve:1"
    assert (
        "it was started under version '2'; this worker runs version '1'; its history took "
        "patch 'fraud-check' (ctx.patched), which this code does not know"
    ) in str(error)


def test_dropping_the_patch_without_deprecate_patch_parks_instances_that_took_it() -> None:
    replayed = run(v3_without_deprecate, NEW_HISTORY)

    assert isinstance(replayed.outcome, Diverged)
    assert "patch:fraud-check" in str(replayed.outcome.error)


def test_a_change_without_a_patch_parks_old_instances_naming_both_versions() -> None:
    replayed = run(v3_without_deprecate, OLD_HISTORY)

    assert isinstance(replayed.outcome, Diverged)
    error = explained(replayed.outcome.error, OLD_HISTORY, "1", "3")
    assert str(error) == (
        "nondeterministic workflow: instance o-1 step #0 is recorded as 'reserve:1' but the "
        "code now calls 'check_fraud:1'; it was started under version '1'; this worker runs "
        "version '3'; keep old instances on their old path with ctx.patched, or let them "
        "drain on workers with the old code"
    )
    assert isinstance(error, NonDeterminismError)


def _gathers_then_patched(ctx: WorkflowContext, order_id: str) -> str:
    results = ctx.gather(reserve.s(order_id), charge.s(order_id), return_exceptions=True)
    if ctx.patched("after-gather"):
        return f"new:{check_fraud.execute(ctx, order_id)}"
    notify.execute(ctx, f"gathered {len(results)}")
    return "old"


gathers_then_patched = WorkflowDefinition("gathers", _gathers_then_patched)
GATHERED = [
    HistoryEvent(0, "gather:1", HistoryKind.GATHER, "gather", result=["reserve", "charge"]),
    done(2, "charge:1", "ok"),  # the branches are recorded in the order they finish
    done(1, "reserve:1", "R"),
]


def test_positions_count_every_branch_of_a_gather() -> None:
    fresh = run(gathers_then_patched, GATHERED)
    assert fresh.events == [marker(3, "after-gather")]
    assert next_step(fresh) == ("check_fraud:1", 4)

    old = run(gathers_then_patched, [*GATHERED, done(3, "notify:1")])
    assert old.events == []  # old code notified without the marker: the old path
    assert old.outcome == Completed("old")


@pytest.mark.parametrize("patch_id", ["", 7, "x" * 201, "bad\nid", "2", "fraud:3"])
def test_a_bad_patch_id_raises_at_the_call_and_records_nothing(patch_id: Any) -> None:
    def _bad(ctx: WorkflowContext) -> None:
        ctx.patched(patch_id)

    replayed = replay_recording(WorkflowDefinition("bad", _bad), "o-1", {}, [])

    assert replayed.events == []
    assert replayed.outcome.__class__.__name__ == "Failed"
    assert "InvalidArgumentsError" in str(replayed.outcome)


@pytest.mark.parametrize("version", ["", 3, "x" * 65, "v\x00"])
def test_a_bad_version_fails_at_the_decorator(version: Any) -> None:
    from celery import Celery

    romancy = Romancy(Celery("versions"), database_url="sqlite://")
    with pytest.raises(InvalidArgumentsError, match="a workflow version"):
        romancy.workflow("versioned", version=version)


def test_the_version_is_kept_on_the_definition() -> None:
    assert v2.version == "2"
    assert WorkflowDefinition("plain", _child).version is None


# -- real deploys: one release's workers stopped, the next one's started -------------------


class Deploy:
    """Releases of the order workflow (``upgrade_flows.py``) on one database and queue:
    each release's client here (it starts instances, sends events, resumes: those
    replay too), its workers in ``celery worker`` processes of their own."""

    def __init__(self, database_url: str, folder: Path) -> None:
        self.database_url = database_url
        self.folder = folder
        self.queue = f"romancy-upgrade-{uuid.uuid4().hex[:10]}"
        self.ledger = Ledger(folder / "ledger.log")
        self._clients: dict[str, Romancy] = {}
        self._workers: list[CeleryProcess] = []

    def client(self, release: str) -> Romancy:
        if release not in self._clients:
            _, romancy = build_release(
                release, self.database_url, REDIS_URL, self.folder, self.queue
            )
            self._clients[release] = romancy
        return self._clients[release]

    def worker(self, release: str) -> CeleryProcess:
        env = {
            **os.environ,
            "ROMANCY_TEST_RELEASE": release,
            "ROMANCY_TEST_DB": self.database_url,
            "ROMANCY_TEST_BROKER": REDIS_URL,
            "ROMANCY_TEST_DIR": str(self.folder),
            "ROMANCY_TEST_QUEUE": self.queue,
            "PYTHONPATH": str(ROOT),
        }
        process = celery_worker(
            "tests.upgrade_worker", env, self.folder, self.queue, concurrency=4, pool="threads"
        )
        self._workers.append(process)
        return process.start()

    @contextmanager
    def worker_in_process(self, release: str) -> Iterator[None]:
        """A real worker of ``release`` too, on threads of this process (quicker to start
        and stop than a ``celery worker``; the same engine code runs the steps)."""
        with in_process_worker(self.client(release).app, concurrency=4):
            yield

    def statuses(self, instance_ids: list[str]) -> dict[str, str]:
        store = self.client("1").storage
        return {i: str(getattr(store.get_instance(i), "status", None)) for i in instance_ids}

    def wait_until(self, instance_ids: list[str], *statuses: str, timeout: float = 60) -> None:
        def reached() -> bool:
            return all(s in statuses for s in self.statuses(instance_ids).values())

        wait_for(reached, timeout, f"{len(instance_ids)} instances to be {' or '.join(statuses)}")

    def close(self) -> None:
        for process in self._workers:
            process.stop()
        redis_client(REDIS_URL).delete(self.queue, f"{self.queue}.maintenance")
        for romancy in self._clients.values():
            romancy.storage.dispose()


@pytest.fixture
def deploy(database_url: str, tmp_path: Path) -> Iterator[Deploy]:
    rig = Deploy(database_url, tmp_path)
    yield rig
    rig.close()


OLD = [f"old-{i}" for i in range(20)]
NEW = [f"new-{i}" for i in range(5)]


def twenty_waiting_under_release_1(deploy: Deploy) -> CeleryProcess:
    """20 instances started under release 1, each waiting for its approval; the
    release 1 worker that ran them, still running."""
    worker = deploy.worker("1")
    for order_id in OLD:
        deploy.client("1").start_workflow(WORKFLOW, order_id, instance_id=order_id)
    deploy.wait_until(OLD, Status.WAITING_FOR_EVENT)
    return worker


def old_path_ran(ledger: Ledger, order_id: str) -> bool:
    events = [e for e in ledger.events() if e.split(":")[1] == order_id]
    return events == [f"reserve:{order_id}", f"charge:{order_id}"]


def new_path_ran(ledger: Ledger, order_id: str) -> bool:
    events = [e for e in ledger.events() if e.split(":")[1] == order_id]
    return events == [
        f"check_fraud:{order_id}",
        f"reserve:{order_id}",
        f"charge_scored:{order_id}:7",
    ]


def test_with_a_patch_old_instances_finish_the_old_way_and_new_ones_the_new_way(
    deploy: Deploy,
) -> None:
    old_worker = twenty_waiting_under_release_1(deploy)
    old_worker.stop()
    deploy.worker("2")  # the deploy: release 2's worker replaces release 1's
    release_2 = deploy.client("2")
    for order_id in NEW:
        release_2.start_workflow(WORKFLOW, order_id, instance_id=order_id)
    for order_id in [*OLD, *NEW]:
        release_2.send_event("approved", instance_id=order_id)  # kept until it waits

    deploy.wait_until([*OLD, *NEW], *TERMINAL_NAMES)

    store = release_2.storage
    outputs = {i: store.get_instance(i) for i in [*OLD, *NEW]}
    assert {i: (o.status, o.output_data) for i, o in outputs.items()} == {
        **{i: ("completed", "charged") for i in OLD},
        **{i: ("completed", "charged with score 7") for i in NEW},
    }
    assert all(old_path_ran(deploy.ledger, i) for i in OLD), deploy.ledger.events()
    assert all(new_path_ran(deploy.ledger, i) for i in NEW), deploy.ledger.events()
    # Only the new instances took the patch; the old ones still tell their version.
    assert store.get_history("new-0")[0].step_id == "patch:fraud-check"
    assert all(e.kind != "marker" for i in OLD for e in store.get_history(i))
    assert sorted(i.instance_id for i in release_2.find_instances(version="1")) == sorted(OLD)
    assert sorted(i.instance_id for i in release_2.find_instances(version="2")) == sorted(NEW)

    # What an operator sees: which instances of release 1 are left, and the marker.
    listing = operator(release_2, "list", "--version", "1", "--limit", "100").splitlines()
    assert listing[0].split() == ["INSTANCE", "WORKFLOW", "VERSION", "STATUS", "UPDATED", "NOTE"]
    assert sorted(line.split()[0] for line in listing[1:]) == sorted(OLD)
    assert {tuple(line.split()[1:4]) for line in listing[1:]} == {(WORKFLOW, "1", "completed")}
    shown = operator(release_2, "show", "new-0")
    assert "version   2\n" in shown
    marker_row = next(line for line in shown.splitlines() if "patch:fraud-check" in line)
    assert marker_row.split()[:3] == ["0", "patch:fraud-check", "marker"]
    assert marker_row.endswith("patched 'fraud-check': the new code path")


def operator(romancy: Romancy, *args: str) -> str:
    """``celery -A <app> romancy <args>``'s output (run in this process)."""
    context = CLIContext(app=romancy.app, no_color=True, workdir=None)
    result = CliRunner().invoke(romancy_command, list(args), obj=context)
    assert result.exit_code == 0, result.output
    return result.stdout


TERMINAL_NAMES = ("completed", "failed", "cancelled", "compensation_failed")


def test_without_a_patch_old_instances_are_parked_naming_the_versions_never_run_wrong(
    deploy: Deploy,
) -> None:
    old_worker = twenty_waiting_under_release_1(deploy)
    old_worker.stop()
    unpatched = deploy.client("2-unpatched")
    with deploy.worker_in_process("2-unpatched"):
        for order_id in NEW:
            unpatched.start_workflow(WORKFLOW, order_id, instance_id=order_id)
        for order_id in [*OLD, *NEW]:
            unpatched.send_event("approved", instance_id=order_id)
        deploy.wait_until([*OLD, *NEW], *TERMINAL_NAMES)

    store = unpatched.storage
    for order_id in OLD:
        instance = store.get_instance(order_id)
        assert instance is not None and instance.status == "failed"
        assert instance.error is not None
        assert instance.error["type"] == "celery_romancy.errors.NonDeterminismError"
        assert (
            "is recorded as 'upgrade_reserve:1' but the code now calls "
            "'upgrade_check_fraud:1'; it was started under version '1'; this worker runs "
            "version '2'; keep old instances on their old path with ctx.patched"
        ) in instance.error["message"]
    assert all(new_path_ran(deploy.ledger, i) for i in NEW), deploy.ledger.events()
    # No old instance ran a step of the new code: each only reserved, before the deploy.
    assert all(
        [e for e in deploy.ledger.events() if e.split(":")[1] == i] == [f"reserve:{i}"] for i in OLD
    )

    # Parked, not lost: with the patched release deployed, each resumes the old way.
    with deploy.worker_in_process("2"):
        for order_id in OLD:
            deploy.client("2").resume(order_id)
        deploy.wait_until(OLD, *TERMINAL_NAMES)
    assert set(deploy.statuses(OLD).values()) == {"completed"}
    assert all(old_path_ran(deploy.ledger, i) for i in OLD), deploy.ledger.events()


def test_an_old_worker_that_meets_a_patched_instance_parks_it_instead_of_guessing(
    deploy: Deploy,
) -> None:
    # Mid rolling deploy: a release 2 client starts an instance that only a release 1
    # worker is there to run. It runs the first step (every release has the activity),
    # then cannot replay the marker: parked, and its reservation never made.
    with deploy.worker_in_process("1"):
        deploy.client("2").start_workflow(WORKFLOW, "early", instance_id="early")
        deploy.wait_until(["early"], *TERMINAL_NAMES)

    instance = deploy.client("1").get_instance("early")
    assert instance.status == "failed"
    assert instance.error is not None
    message = instance.error["message"]
    assert "is recorded as 'patch:fraud-check' but the code now calls 'upgrade_reserve:1'" in (
        message
    )
    assert "started under version '2'; this worker runs version '1'" in message
    assert "patch 'fraud-check' (ctx.patched), which this code does not know" in message
    assert deploy.ledger.events() == ["check_fraud:early"]

    # Once release 2 runs everywhere, it goes on the new way from where it stopped.
    with deploy.worker_in_process("2"):
        deploy.client("2").resume("early")
        deploy.client("2").send_event("approved", instance_id="early")
        deploy.wait_until(["early"], *TERMINAL_NAMES)
    assert deploy.statuses(["early"]) == {"early": "completed"}
    assert new_path_ran(deploy.ledger, "early"), deploy.ledger.events()


def test_each_instance_is_stamped_with_its_own_workflows_version_children_too(
    tmp_path: Path,
) -> None:
    romancy = Romancy(embedded_celery("versions", tmp_path))

    @romancy.activity("stamp")
    def stamp(tag: str) -> str:
        return tag

    @romancy.workflow("stamped_child", version="9")
    def stamped_child(ctx: WorkflowContext, tag: str) -> str:
        return stamp.execute(ctx, tag)

    @romancy.workflow("stamped_parent", version="2024-06")
    def stamped_parent(ctx: WorkflowContext, tag: str) -> str:
        return ctx.execute_child(stamped_child, tag)

    @romancy.workflow("unversioned")
    def unversioned(ctx: WorkflowContext, tag: str) -> str:
        return stamp.execute(ctx, tag)

    # Started, not run: the start commits the parent and the child it starts first.
    romancy.start_workflow(stamped_parent, "a", instance_id="parent")
    romancy.start_workflow(unversioned, "b", instance_id="plain")
    (child_of,) = romancy.find_instances(parent="parent")
    try:
        assert romancy.get_instance("parent").workflow_version == "2024-06"
        assert child_of.workflow_version == "9"
        assert romancy.get_instance("plain").workflow_version is None
        assert [i.instance_id for i in romancy.find_instances(version="9")] == [
            child_of.instance_id
        ]
    finally:
        romancy.storage.dispose()
