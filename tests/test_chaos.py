"""Crash depth 3: real processes and real services are killed while workflows run.

The promise: whatever crashes, every started workflow reaches ``completed``, no
(instance, step) is recorded twice, and an activity body runs again only because the
run before it was interrupted by a crash.

Each activity appends ``start|<instance>|<step>|<pgid>|<pid>`` to a file ledger (see
``tests/chaos_flows.py``); each history row names the process that recorded it
(``worker_id`` is ``host:pid``). Together they tell the recorded run of every step from
the runs a crash cut short. Run with ``-s`` to see the numbers each test prints.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from celery_romancy.storage.schema import compensations, history, instances, steps

from .chaos_flows import (
    LEDGER,
    build_chaos,
    crash_after,
    expected_output,
    gate_name,
    tree_members,
    tree_rolls_back,
)
from .chaos_services import PostgresServer, RedisServer
from .ledger import Gate, Ledger, wait_for
from .processes import ROOT, CeleryProcess, celery_beat, celery_worker
from .services import REDIS_URL, redis_client

pytestmark = pytest.mark.chaos

MODULE = "tests.chaos_flows"
WORKFLOWS = 200
SAGA_STEPS = ("chaos_reserve:1", "chaos_charge:1", "chaos_charge:2", "chaos_ship:1")
CONCURRENCY = 2
KILLS = 4
CONF: dict[str, Any] = {
    "romancy_lease_timeout": 2,
    "romancy_recovery_interval": 1,
    "romancy_dispatch_timeout": 3,
    # A SIGKILLed worker's unacked messages come back after 3 s.
    "broker_transport_options": {
        "visibility_timeout": 3,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    },
}
TERMINAL_FAILURES = ("failed", "cancelled", "compensation_failed")
UNDO = ":undo:"  # in a compensation's step id: ``<compensation>:undo:<undone step id>``


@dataclass(frozen=True)
class Start:
    """One ``start|`` line: a process began an activity (or compensation) body."""

    instance_id: str
    step_id: str
    pgid: int
    pid: int


@dataclass(frozen=True)
class Recorded:
    """One history row, with the pid of the process that committed it."""

    instance_id: str
    step_id: str
    pid: int
    created_at: datetime


class Rig:
    """The chaos app on one database and broker, its processes, and what to read back."""

    def __init__(self, database_url: str, folder: Path, broker_url: str = REDIS_URL) -> None:
        self.folder = folder
        self.broker_url = broker_url
        redis_client(broker_url).close()  # skip, or fail under CI, without a broker
        self.queue = f"romancy-chaos-{uuid.uuid4().hex[:10]}"
        self.app, self.romancy = build_chaos(database_url, broker_url, folder, self.queue, **CONF)
        self.ledger = Ledger(folder / LEDGER)
        self.env = {
            **os.environ,
            "ROMANCY_TEST_DB": database_url,
            "ROMANCY_TEST_BROKER": broker_url,
            "ROMANCY_TEST_DIR": str(folder),
            "ROMANCY_TEST_QUEUE": self.queue,
            "ROMANCY_TEST_CONF": json.dumps(CONF),
            "PYTHONPATH": str(ROOT),
        }
        self.processes: list[CeleryProcess] = []

    # -- processes ---------------------------------------------------------------------

    def worker(self, concurrency: int = CONCURRENCY) -> CeleryProcess:
        process = celery_worker(MODULE, self.env, self.folder, self.queue, concurrency)
        self.processes.append(process)  # before start: a failed start is cleaned up too
        process.launch()

        def ready() -> bool:
            # A worker may take a step and crash itself on purpose (chaos_flows.crash_after)
            # before this poll sees its "ready" line: it did start, and the caller finds
            # it dead. Any other exit before it is ready fails the start.
            if process.ready_marker in process.log():
                return True
            if not process.alive():
                if any(crash.pgid == process.pid for crash in self.crashes()):
                    return True
                raise RuntimeError(f"{process.name} exited before it was ready:\n{process.log()}")
            return False

        wait_for(ready, 60, f"{process.name} to be ready")
        return process

    def beat(self) -> CeleryProcess:
        process = celery_beat(MODULE, self.env, self.folder)
        self.processes.append(process)
        return process.start()

    def logs(self, tail: int = 4000) -> str:
        return "\n".join(f"--- {p.log_path.name} ---\n{p.log()[-tail:]}" for p in self.processes)

    def close(self) -> None:
        try:
            for process in reversed(self.processes):
                process.stop()
        finally:
            self.romancy.storage.dispose()
            client = redis.Redis.from_url(self.broker_url, socket_timeout=5)
            try:
                client.delete(self.queue)
            except redis.RedisError:
                pass  # the test's own broker is already gone
            finally:
                client.close()

    # -- workload ------------------------------------------------------------------------

    def start_all(self, count: int, workflow: str = "chaos_saga") -> dict[str, int]:
        started = {}
        for n in range(count):
            instance_id = self.romancy.start_workflow(workflow, n, instance_id=f"chaos-{n:03d}")
            started[instance_id] = n
        return started

    # -- reading back --------------------------------------------------------------------

    def recorded(self) -> int:
        """Activity steps recorded (a gather's marker row is no step)."""
        with self.romancy.storage.engine.connect() as conn:
            count = (
                sa.select(sa.func.count()).select_from(history).where(history.c.kind == "activity")
            )
            return int(conn.execute(count).scalar_one())

    def recorded_or_none(self) -> int | None:
        """``recorded()``, or None while the database is down."""
        try:
            return self.recorded()
        except sa.exc.DBAPIError:
            return None

    def statuses(self) -> Counter[str]:
        with self.romancy.storage.engine.connect() as conn:
            rows = conn.execute(
                sa.select(instances.c.status, sa.func.count()).group_by(instances.c.status)
            )
            return Counter({status: int(count) for status, count in rows})

    def history_rows(self) -> list[Recorded]:
        with self.romancy.storage.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    history.c.instance_id,
                    history.c.step_id,
                    history.c.worker_id,
                    history.c.created_at,
                )
                .where(history.c.kind == "activity")
                .order_by(history.c.id)
            )
            return [
                Recorded(r.instance_id, r.step_id, int(r.worker_id.rsplit(":", 1)[1]), r.created_at)
                for r in rows
            ]

    def starts(self) -> list[Start]:
        found = []
        for line in self.ledger.events():
            if line.startswith("start|"):
                _, instance_id, step_id, pgid, pid = line.split("|")
                found.append(Start(instance_id, step_id, int(pgid), int(pid)))
        return found

    def crashes(self) -> list[Start]:
        """The ``crash|`` lines: a worker SIGKILLed itself after a commit of an instance
        (``step_id`` says after which: "end" or "undo")."""
        found = []
        for line in self.ledger.events():
            if line.startswith("crash|"):
                _, instance_id, what, pgid, pid = line.split("|")
                found.append(Start(instance_id, what, int(pgid), int(pid)))
        return found

    def outcomes(self) -> Counter[str]:
        """How many step messages the workers recorded, dropped as duplicates, fenced..."""
        return Counter(
            line.split("|")[4].split(" ")[0]
            for line in self.ledger.events()
            if line.startswith("outcome|")
        )

    def wait_recorded(self, at_least: int, timeout: float, what: str) -> None:
        def enough() -> bool:
            count = self.recorded_or_none()
            return count is not None and count >= at_least

        self.waiting(enough, timeout, what)

    def wait_for_a_new_start(self, timeout: float, worker: CeleryProcess) -> None:
        """Until a step body begins, or ``worker`` is dead (it may crash itself)."""
        begun = len(self.starts())
        self.waiting(
            lambda: len(self.starts()) > begun or not worker.alive(),
            timeout,
            "a step body to begin",
        )

    def wait_completed(self, count: int, timeout: float) -> None:
        def all_completed() -> bool:
            try:
                statuses = self.statuses()
            except sa.exc.DBAPIError:
                return False
            failures = {s: statuses[s] for s in TERMINAL_FAILURES if statuses[s]}
            if failures:
                pytest.fail(f"instances ended badly: {failures}\n{self.stuck_report()}")
            return statuses["completed"] == count

        self.waiting(all_completed, timeout, f"all {count} instances to complete")

    def waiting(self, condition: Callable[[], object], timeout: float, what: str) -> None:
        try:
            wait_for(condition, timeout, what)
        except TimeoutError as exc:
            pytest.fail(f"{exc}\n{self.stuck_report()}\n{self.logs()}")

    def stuck_report(self, limit: int = 10) -> str:
        """The instances that did not finish, with what the database says about them."""
        try:
            with self.romancy.storage.engine.connect() as conn:
                rows = conn.execute(
                    sa.select(instances)
                    .where(instances.c.status != "completed")
                    .order_by(instances.c.instance_id)
                ).all()
            lines = [f"{len(rows)} instances not completed at {datetime.now(UTC):%H:%M:%S.%f}:"]
            for row in rows[:limit]:
                m = row._mapping
                lines.append(
                    f"  {m['instance_id']} {m['status']} v{m['version']} error={m['error']}"
                )
                for step in self.romancy.storage.get_steps(m["instance_id"]):
                    lines.append(
                        f"    step {step.step_id} ({step.kind}) token={step.token}"
                        f" dispatch_at={step.dispatch_at} lease={step.lease_owner}/"
                        f"{step.lease_expires_at} epoch={step.epoch} takeovers={step.takeovers}"
                    )
        except sa.exc.DBAPIError as exc:
            return f"(no report: the database is not answering: {exc})"
        return "\n".join(lines)


@pytest.fixture
def rigs() -> Iterator[list[Rig]]:
    """Rigs a test creates; each is closed (every process stopped) whatever happens."""
    made: list[Rig] = []
    yield made
    for rig in made:
        rig.close()


def audit(rig: Rig, started: dict[str, int], *, one_run_per_process: bool) -> list[Start]:
    """The exactly-once checks every chaos test makes; returns the re-executed starts.

    Every instance completed with its output; each (instance, step) is in the history
    once; the process that recorded a step has a ledger start for it (exactly one, with
    ``one_run_per_process``: a process re-runs a step only if its own commit failed). The
    other starts of a step are its re-executions: runs that did not get recorded.
    """
    for instance_id, n in started.items():
        instance = rig.romancy.get_instance(instance_id)
        assert instance.status == "completed", rig.stuck_report()
        assert instance.output_data == expected_output(n)
    expected = {(instance_id, step) for instance_id in started for step in SAGA_STEPS}
    return audit_steps(rig, expected, one_run_per_process=one_run_per_process)


def audit_steps(
    rig: Rig, expected: set[tuple[str, str]], *, one_run_per_process: bool
) -> list[Start]:
    """The exactly-once checks of activity steps; returns the re-executed starts.

    The history holds the ``expected`` (instance, step) pairs, each once, and no other
    activity step; the process that recorded a step has a ledger start for it (exactly
    one, with ``one_run_per_process``: a process re-runs a step only if its own commit
    failed). The other starts of a step are its re-executions: runs that did not get
    recorded. Compensation runs are not activity steps: see ``audit_compensation_runs``.
    """
    rows = rig.history_rows()
    keys = Counter((r.instance_id, r.step_id) for r in rows)
    assert [k for k, c in keys.items() if c > 1] == []
    assert set(keys) == expected, (set(keys) ^ expected, rig.stuck_report())

    by_step: dict[tuple[str, str], list[Start]] = defaultdict(list)
    for start in rig.starts():
        if UNDO not in start.step_id:
            by_step[(start.instance_id, start.step_id)].append(start)
    assert set(by_step) == set(keys)  # nothing ran that was not recorded in the end

    reexecuted: list[Start] = []
    for row in rows:
        runs = by_step[(row.instance_id, row.step_id)]
        recorded_runs = [s for s in runs if s.pid == row.pid]
        if one_run_per_process:
            assert len(recorded_runs) == 1, (row, runs)
        else:
            assert len(recorded_runs) >= 1, (row, runs)
        others = list(runs)
        others.remove(recorded_runs[0])  # one run by the recording process is the recorded one
        reexecuted.extend(others)
    return reexecuted


def audit_compensation_runs(
    rig: Rig, expected: set[tuple[str, str]], killed: set[int]
) -> list[Start]:
    """Each compensation of the ``expected`` (instance, undone step) pairs ran, and no
    other; returns its re-executed runs.

    A compensation's record (its ``romancy_compensations`` row) does not name the
    process that committed it, so the recorded run is told from the interrupted ones by
    the process groups: at most one run of a compensation happened in a worker that was
    never killed, no process ran it twice, and every other run was cut short by a kill.
    """
    by_step: dict[tuple[str, str], list[Start]] = defaultdict(list)
    for start in rig.starts():
        if UNDO in start.step_id:
            undone = start.step_id.split(UNDO, 1)[1]
            by_step[(start.instance_id, undone)].append(start)
    assert set(by_step) == expected, set(by_step) ^ expected

    reexecuted: list[Start] = []
    for key, runs in by_step.items():
        pids = Counter(run.pid for run in runs)
        assert [pid for pid, count in pids.items() if count > 1] == [], (key, runs)
        survivors = [run for run in runs if run.pgid not in killed]
        assert len(survivors) <= 1, (key, runs)
        recorded = survivors[0] if survivors else runs[-1]  # a killed worker may have committed
        reexecuted.extend(run for run in runs if run is not recorded)
    return reexecuted


def kill_and_replace(rig: Rig, worker: CeleryProcess, rng: random.Random) -> dict[str, Any]:
    """SIGKILL ``worker`` (most often right after an activity body begins), start a new
    one, and wait until it records a step (or crashes itself: see ``crash_after``);
    returns what the kill report prints."""
    if rng.random() < 0.75:
        # Most kills land inside an activity body: right after one begins.
        rig.wait_for_a_new_start(60, worker)
    worker.kill()
    killed_at, killed_wall = time.monotonic(), datetime.now(UTC)
    at_kill = rig.recorded()  # nothing runs now: the count is stable
    kill: dict[str, Any] = {"pgid": worker.pid, "at": killed_wall, "recorded": at_kill}
    replacement = kill["worker"] = rig.worker()

    def recorded_or_crashed() -> bool:
        count = rig.recorded_or_none()
        return (count is not None and count > at_kill) or not replacement.alive()

    rig.waiting(recorded_or_crashed, 120, "a step recorded after the kill")
    kill["next_step_after"] = time.monotonic() - killed_at
    return kill


def first_recorded_after(rig: Rig, moment: datetime) -> float:
    """Seconds from ``moment`` to the first step recorded after it (history timestamps)."""
    later = [r.created_at for r in rig.history_rows() if r.created_at > moment]
    return (min(later) - moment).total_seconds()


def seeded_rig(
    database_url: str, tmp_path: Path, rigs: list[Rig]
) -> tuple[Rig, random.Random, int]:
    """A rig and the random choices of one run, from ``ROMANCY_CHAOS_SEED`` or a new seed
    (printed, so a failure can be run again)."""
    seed = int(os.environ.get("ROMANCY_CHAOS_SEED", random.randrange(1_000_000)))
    print(f"\nROMANCY_CHAOS_SEED={seed}")
    rig = Rig(database_url, tmp_path)
    rigs.append(rig)
    return rig, random.Random(seed), seed


# -- 1. SIGKILL the worker, again and again ---------------------------------------------


def test_sigkilled_workers_lose_no_workflow_and_record_every_step_once(
    database_url: str, tmp_path: Path, rigs: list[Rig]
) -> None:
    rig, rng, seed = seeded_rig(database_url, tmp_path, rigs)
    began = time.monotonic()

    rig.beat()
    worker = rig.worker()
    started = rig.start_all(WORKFLOWS)

    kills: list[dict[str, Any]] = []
    for _ in range(KILLS):
        rig.wait_recorded(
            rig.recorded() + rng.randint(40, 100), 120, "more steps before the next kill"
        )
        kills.append(kill_and_replace(rig, worker, rng))
        worker = kills[-1]["worker"]

    rig.wait_completed(WORKFLOWS, 180)
    reexecuted = audit(rig, started, one_run_per_process=True)

    # Every re-execution is a run a kill interrupted: at most one per pool slot per kill.
    killed = {k["pgid"]: k for k in kills}
    assert all(s.pgid in killed for s in reexecuted), (reexecuted, killed)
    per_kill = Counter(s.pgid for s in reexecuted)
    assert all(count <= CONCURRENCY for count in per_kill.values()), per_kill
    assert len(reexecuted) <= KILLS * CONCURRENCY

    recorded_at = {(r.instance_id, r.step_id): r.created_at for r in rig.history_rows()}
    print(
        f"\n[chaos:sigkill {rig.romancy.storage.dialect_name}] seed={seed} "
        f"workflows={WORKFLOWS} steps={len(recorded_at)} kills survived={len(kills)} "
        f"re-executions={len(reexecuted)} outcomes={dict(rig.outcomes())} "
        f"total={time.monotonic() - began:.1f}s"
    )
    for number, kill in enumerate(kills, 1):
        interrupted = [s for s in reexecuted if s.pgid == kill["pgid"]]
        healed = [
            (recorded_at[(s.instance_id, s.step_id)] - kill["at"]).total_seconds()
            for s in interrupted
        ]
        print(
            f"  kill {number}: after {kill['recorded']} steps; next step recorded "
            f"{kill['next_step_after']:.2f}s after the kill; interrupted steps "
            f"{[s.step_id for s in interrupted]} re-run and recorded after "
            f"{[round(h, 2) for h in healed]}s"
        )


# -- 2. the broker restarts and forgets everything -----------------------------------------


# How Celery 5.7 / kombu 5.7 workers die on some Redis restarts (see the test below).
UPSTREAM_CRASH = (
    "Unrecoverable error: AttributeError(\"'NoneType' object has no attribute 'hostname'\")"
)


def test_a_broker_restart_loses_messages_but_no_workflow(
    database_url: str, tmp_path: Path, rigs: list[Rig]
) -> None:
    with RedisServer(tmp_path) as broker:
        rig = Rig(database_url, tmp_path, broker_url=broker.url)
        rigs.append(rig)
        began = time.monotonic()
        beat = rig.beat()
        worker = rig.worker()
        started = rig.start_all(WORKFLOWS)
        rig.wait_recorded(WORKFLOWS * len(SAGA_STEPS) // 4, 120, "a quarter of the steps")

        client = broker.client()
        queued = int(client.llen(rig.queue)) + int(client.hlen("unacked"))
        client.close()
        log_offset, beat_offset = len(worker.log()), len(beat.log())
        broker.stop()  # SIGKILL, no persistence: queued and unacked messages are gone
        stopped_at = time.monotonic()
        # Down until the worker failed to reconnect (or died: see below) and beat failed
        # to send a sweep.
        try:
            wait_for(
                lambda: (
                    ("Cannot connect to" in worker.log()[log_offset:] or not worker.alive())
                    and "Couldn't apply scheduled task" in beat.log()[beat_offset:]
                ),
                60,
                "the worker and beat to fail to reach the stopped broker",
            )
        except TimeoutError as timeout:
            raise AssertionError(
                f"{timeout}\n--- worker since the stop ---\n{worker.log()[log_offset:][-6000:]}"
                f"\n--- beat since the stop ---\n{beat.log()[beat_offset:][-3000:]}"
            ) from timeout
        # Celery 5.7 / kombu 5.7: when the connection drops while the Redis channel is
        # mid-BRPOP with a message delivered but not acked, closing the channel a second
        # time reaches a transport whose client is already None, and the worker exits
        # with this "Unrecoverable error". A supervisor (systemd, Kubernetes) restarts it;
        # so does this test. Any other way of dying is a failure.
        crashed = not worker.alive() or UPSTREAM_CRASH in worker.log()[log_offset:]
        if crashed:
            assert UPSTREAM_CRASH in worker.log()[log_offset:], worker.log()[log_offset:]
            wait_for(lambda: not worker.alive(), 60, "the crashed worker to exit")
        broker.start()
        restarted_at, restarted_wall = time.monotonic(), datetime.now(UTC)
        fresh = broker.client()
        assert int(fresh.llen(rig.queue)) <= 1  # all lost (beat may have sent a sweep)
        fresh.close()
        if crashed:
            worker = rig.worker()  # as the supervisor would
            log_offset = 0
        rig.wait_completed(WORKFLOWS, 180)
        completed_after = time.monotonic() - restarted_at

        reexecuted = audit(rig, started, one_run_per_process=True)
        next_step_after = first_recorded_after(rig, restarted_wall)
        # Even a crashed worker stops warm: the steps in flight at the stop finished and
        # committed; only messages were lost, and a message re-sent runs a step that
        # never started.
        assert reexecuted == []
        after = rig.logs(tail=10**9)
        resent = sum(
            int(line.split("re-sent ")[1].split(" ")[0])
            for line in worker.log()[log_offset:].splitlines()
            if "recovery re-sent" in line
        )
        unpublished = after.count("could not publish")
        print(
            f"\n[chaos:redis-restart {rig.romancy.storage.dialect_name}] workflows={WORKFLOWS}; "
            f"at the stop {queued} messages "
            f"queued or unacked (all lost); broker down {restarted_at - stopped_at:.2f}s; "
            f"{unpublished} next-step publishes failed while down; steps re-sent by recovery "
            f"after the stop={resent}; first step recorded {next_step_after:.2f}s and all "
            f"completed {completed_after:.2f}s after the restart; re-executions="
            f"{len(reexecuted)}; outcomes={dict(rig.outcomes())}; "
            f"worker crashed and restarted={crashed}; total={time.monotonic() - began:.1f}s"
        )
        rig.close()  # while our broker still runs
        rigs.remove(rig)


# -- 3. the database restarts under load ----------------------------------------------------

DB_FAILURES = 20


def test_a_database_restart_mid_run_loses_no_workflow(tmp_path: Path, rigs: list[Rig]) -> None:
    with PostgresServer() as database:
        rig = Rig(database.url, tmp_path)
        rigs.append(rig)
        began = time.monotonic()
        rig.beat()
        worker = rig.worker()
        started = rig.start_all(WORKFLOWS)
        rig.wait_recorded(WORKFLOWS * len(SAGA_STEPS) // 4, 120, "a quarter of the steps")

        at_stop = rig.recorded()
        log_offset = len(worker.log())

        def failed_steps() -> int:
            return worker.log()[log_offset:].count("raised unexpected: OperationalError")

        database.stop("immediate")  # every backend dies at once: a crash, to the clients
        stopped_at = time.monotonic()
        # Down until the worker has burnt through messages: each step message it takes
        # now fails on the database and is acknowledged, so it is gone from the broker.
        wait_for(lambda: failed_steps() >= DB_FAILURES, 60, "steps to fail on the dead database")
        database.start()
        restarted_at, restarted_wall = time.monotonic(), datetime.now(UTC)
        lost = failed_steps()
        rig.wait_completed(WORKFLOWS, 180)
        completed_after = time.monotonic() - restarted_at

        reexecuted = audit(rig, started, one_run_per_process=False)
        next_step_after = first_recorded_after(rig, restarted_wall)
        # Only a step whose commit hit the dead database runs again: one per pool slot.
        assert len(reexecuted) <= CONCURRENCY, reexecuted
        resent = sum(
            int(line.split("re-sent ")[1].split(" ")[0])
            for line in worker.log()[log_offset:].splitlines()
            if "recovery re-sent" in line
        )
        print(
            f"\n[chaos:postgres-restart] workflows={WORKFLOWS}; {at_stop} steps recorded "
            f"at the stop; database down {restarted_at - stopped_at:.2f}s; {lost} step "
            f"messages failed on it (acknowledged, gone); steps re-sent by recovery after "
            f"the stop={resent}; first step recorded {next_step_after:.2f}s and all "
            f"completed {completed_after:.2f}s after the restart; re-executions="
            f"{len(reexecuted)} {[(s.instance_id, s.step_id) for s in reexecuted]}; "
            f"outcomes={dict(rig.outcomes())}; total={time.monotonic() - began:.1f}s"
        )
        rig.close()  # while our database still runs
        rigs.remove(rig)


# -- 4. fencing: a paused worker wakes up after its step was taken over ---------------------


def test_a_paused_worker_cannot_commit_over_the_worker_that_took_its_step_over(
    database_url: str, tmp_path: Path, rigs: list[Rig]
) -> None:
    rig = Rig(database_url, tmp_path)
    rigs.append(rig)
    rig.beat()
    first = rig.worker(concurrency=1)
    instance_id = rig.romancy.start_workflow("chaos_fenced", 7, instance_id="fenced-1")

    def gated_starts() -> list[Start]:
        return [s for s in rig.starts() if s.step_id == "chaos_gated:1"]

    wait_for(lambda: len(gated_starts()) == 1, 60, "the gated step to start")
    first.pause()  # SIGSTOP mid-step: its lease is no longer renewed
    paused = gated_starts()[0]
    assert paused.pgid == first.pid

    Gate(tmp_path, gate_name(instance_id)).open()
    second = rig.worker(concurrency=1)
    instance = rig.romancy.wait(instance_id, timeout=60)
    assert instance.status == "completed"
    assert instance.output_data == expected_output(7)
    before = rig.romancy.get_history(instance_id)
    taken_over = [s for s in gated_starts() if s.pgid == second.pid]
    assert len(taken_over) == 1
    gated_row = next(e for e in before if e.step_id == "chaos_gated:1")
    assert gated_row.worker_id is not None
    assert int(gated_row.worker_id.rsplit(":", 1)[1]) == taken_over[0].pid

    first.resume()  # its activity returns now; its commit must be refused
    fenced = f"outcome|{paused.pid}|chaos_gated|{instance_id}|fenced"
    wait_for(lambda: fenced in rig.ledger.events(), 60, "the paused worker's late commit")

    after = rig.romancy.get_history(instance_id)
    assert after == before  # the late commit changed nothing
    assert [e.step_id for e in after] == ["chaos_reserve:1", "chaos_gated:1", "chaos_ship:1"]
    final = rig.romancy.get_instance(instance_id)
    assert final.status == "completed"
    assert final.output_data == expected_output(7)
    assert rig.romancy.storage.get_steps(instance_id) == []
    assert len(gated_starts()) == 2  # the paused run and the recorded one
    print(
        f"\n[chaos:fencing {rig.romancy.storage.dialect_name}] paused pid {paused.pid}; "
        f"step taken over and recorded by pid {taken_over[0].pid}; late commit refused; "
        f"outcomes={dict(rig.outcomes())}"
    )


# -- 5. SIGKILL workers while trees of child workflows run -----------------------------------

TREES = 80
TREE_KILLS = 6


def repeated(keys: list[Any]) -> list[Any]:
    return [key for key, count in Counter(keys).items() if count > 1]


def test_sigkilled_workers_start_every_child_once_and_end_every_tree(
    database_url: str, tmp_path: Path, rigs: list[Rig]
) -> None:
    rig, rng, seed = seeded_rig(database_url, tmp_path, rigs)
    began = time.monotonic()

    # Crashes where a kill at random rarely lands: a worker SIGKILLs itself right after
    # a commit whose news must cross the tree (see chaos_flows.crash_after_commits).
    completed = [f"tree-{n:03d}" for n in range(TREES) if not tree_rolls_back(n)]
    rolled_back = [f"tree-{n:03d}" for n in range(TREES) if tree_rolls_back(n)]
    leaf_end, grandchild_end, branch_end = rng.sample(completed, 3)
    root_undo, branch_undo = rng.sample(rolled_back, 2)
    crashes = {
        # A gathered leaf ended: its root is not woken.
        f"{leaf_end}/child:chaos_leaf:{rng.choice((1, 2))}": "end",
        # The grandchild ended: the branch is not woken.
        f"{grandchild_end}/child:chaos_branch:1/child:chaos_leaf:1": "end",
        # The branch ended: the root, waiting in execute_child, is not woken.
        f"{branch_end}/child:chaos_branch:1": "end",
        # The root's rollback reached a completed child: the child's undo is not begun.
        root_undo: "undo",
        # The branch's undo reached its grandchild: the grandchild's undo is not begun.
        f"{branch_undo}/child:chaos_branch:1": "undo",
    }
    for instance_id, what in crashes.items():
        crash_after(tmp_path, instance_id, what)

    rig.beat()
    worker = rig.worker()
    roots = {
        rig.romancy.start_workflow("chaos_tree", n, instance_id=f"tree-{n:03d}"): n
        for n in range(TREES)
    }
    members = {root_id: tree_members(root_id, n) for root_id, n in roots.items()}
    every = {instance_id: m for tree in members.values() for instance_id, m in tree.items()}
    expected_steps = {(i, step) for i, m in every.items() for step in m.steps}
    # A rollback runs the compensation of each undoable step of the tree's instances.
    undone = {
        (i, step)
        for root_id, tree in members.items()
        if tree_rolls_back(roots[root_id])
        for i, m in tree.items()
        for step in m.undoable
    }

    # And kills at random moments, spread over the whole run (the rollbacks come last).
    total = len(expected_steps)
    points = sorted(rng.sample(range(total // 20, total * 85 // 100), TREE_KILLS))
    kills: list[dict[str, Any]] = []

    def next_kill(worker: CeleryProcess) -> bool:
        if not worker.alive():
            return True  # it crashed itself after a marked commit
        if points:
            count = rig.recorded_or_none()
            return count is not None and count >= points[0]
        # Done when every marked crash happened and its worker was replaced.
        crashed = rig.crashes()
        replaced = {k["pgid"] for k in kills}
        return len(crashed) == len(crashes) and all(c.pgid in replaced for c in crashed)

    while True:
        rig.waiting(partial(next_kill, worker), 120, "the next kill")
        if not worker.alive():
            worker.kill()  # reap it; the pool went with it
            kills.append({"pgid": worker.pid, "recorded": rig.recorded()})
            worker = rig.worker()
        elif points:
            points.pop(0)
            kills.append(kill_and_replace(rig, worker, rng))
            worker = kills[-1]["worker"]
        else:
            break

    expected_statuses = Counter(m.status for m in every.values())

    def every_tree_ended() -> bool:
        try:
            statuses = rig.statuses()
        except sa.exc.DBAPIError:
            return False
        # A child of a tree that rolls back is completed for a while; but no more
        # instances than expected ever fail, are cancelled or compensated.
        too_many = {
            status: count
            for status, count in statuses.items()
            if status in (*TERMINAL_FAILURES, "compensated") and count > expected_statuses[status]
        }
        if too_many:
            pytest.fail(f"instances ended badly: {too_many}\n{rig.stuck_report()}")
        return statuses == expected_statuses

    rig.waiting(every_tree_ended, 180, f"the {len(every)} instances of {TREES} trees to end")
    ended_after = time.monotonic() - began

    # Every tree holds exactly its instances, each in its place and state.
    for root_id, tree in members.items():
        found = {i.instance_id: i for i in rig.romancy.find_instances(root=root_id)}
        assert set(found) == set(tree), (root_id, sorted(found))
        for instance_id, instance in found.items():
            member = tree[instance_id]
            assert instance.workflow_name == member.workflow
            assert instance.parent_instance_id == member.parent_id
            assert instance.root_instance_id == (None if member.parent_id is None else root_id)
            assert instance.status == member.status, (instance_id, instance.status)
            if member.status == "completed":
                assert instance.output_data == member.output
    with rig.romancy.storage.engine.connect() as conn:
        instance_ids = conn.execute(sa.select(instances.c.instance_id)).scalars().all()
        in_flight = conn.execute(sa.select(sa.func.count()).select_from(steps)).scalar_one()
        rows = conn.execute(
            sa.select(history.c.instance_id, history.c.seq, history.c.step_id, history.c.kind)
        ).all()
        child_ends = conn.execute(
            sa.select(
                history.c.instance_id, history.c.step_id, history.c.result, history.c.created_at
            ).where(history.c.kind == "child")
        ).all()
        ended = conn.execute(sa.select(instances.c.instance_id, instances.c.updated_at))
        ended_at = {row.instance_id: row.updated_at for row in ended}
        registered = conn.execute(sa.select(compensations)).all()
    # No child started twice or under another id; nothing left to run, wake, undo or cancel.
    assert sorted(instance_ids) == sorted(every)
    assert in_flight == 0

    # No history row twice, of any kind; each parent recorded each child's end once.
    assert repeated([(r.instance_id, r.step_id) for r in rows]) == []
    assert repeated([(r.instance_id, r.seq) for r in rows]) == []
    children = {
        (m.parent_id, instance_id.rsplit("/", 1)[1]): instance_id
        for instance_id, m in every.items()
        if m.parent_id is not None
    }
    assert {(r.instance_id, r.step_id): r.result["instance_id"] for r in child_ends} == children
    assert len(child_ends) == len(children)

    # Each compensation, and each completed child to undo, registered once: all done in
    # a tree that rolled back, none in a completed one.
    assert repeated([(r.instance_id, r.step_id) for r in registered]) == []
    assert {(r.instance_id, r.step_id, r.kind) for r in registered} == {
        (i, step, "activity") for i, m in every.items() for step in m.undoable
    } | {(parent_id, step, "child") for parent_id, step in children}
    for row in registered:
        rolled_back = every[row.instance_id].status != "completed"
        assert row.status == ("done" if rolled_back else "registered"), row

    # Every activity body's result recorded once: a child's first activity (charge,
    # pack) ran once but for runs a kill cut short; so did every compensation.
    killed = {k["pgid"] for k in kills}
    reexecuted = audit_steps(rig, expected_steps, one_run_per_process=True)
    reexecuted += audit_compensation_runs(rig, undone, killed)
    assert all(s.pgid in killed for s in reexecuted), (reexecuted, killed)
    per_kill = Counter(s.pgid for s in reexecuted)
    assert all(count <= CONCURRENCY for count in per_kill.values()), per_kill
    assert len(reexecuted) <= len(kills) * CONCURRENCY
    # Each marked crash happened once, where it was asked for.
    assert sorted((c.instance_id, c.step_id) for c in rig.crashes()) == sorted(crashes.items())

    # How long each completed child's end took to reach its parent: milliseconds when
    # the process that ended it woke the parent; seconds when that process died first
    # and the recovery sweep did (for a parent's child step older than the dispatch
    # timeout).
    wake_delay = {
        row.result["instance_id"]: (
            row.created_at - ended_at[row.result["instance_id"]]
        ).total_seconds()
        for row in child_ends
        if every[row.result["instance_id"]].status == "completed"
    }
    delays = sorted(wake_delay.values())
    crashed_ends = {i: round(wake_delay[i], 2) for i, what in crashes.items() if what == "end"}
    print(
        f"\n[chaos:sigkill-trees {rig.romancy.storage.dialect_name}] seed={seed} "
        f"trees={TREES} instances={dict(expected_statuses)} activity steps={total} "
        f"compensations={len(undone)} kills survived={len(kills)} re-executions="
        f"{[(s.instance_id, s.step_id) for s in reexecuted]} outcomes={dict(rig.outcomes())} "
        f"all ended after {ended_after:.1f}s; total={time.monotonic() - began:.1f}s; "
        f"child ends reached their parent after median {delays[len(delays) // 2]:.3f}s, "
        f"max {delays[-1]:.2f}s; those whose worker crashed at their end after {crashed_ends}s"
    )
    crashed_by = {c.pgid: c for c in rig.crashes()}
    for number, kill in enumerate(kills, 1):
        if kill["pgid"] in crashed_by:
            crash = crashed_by[kill["pgid"]]
            print(
                f"  kill {number}: after {kill['recorded']} steps; crashed itself after the "
                f"{crash.step_id} commit of {crash.instance_id}"
            )
        else:
            print(
                f"  kill {number}: after {kill['recorded']} steps; next step recorded "
                f"{kill['next_step_after']:.2f}s after the kill"
            )
