"""Crash depth 3: real processes and real services are killed while workflows run.

The promise: whatever crashes, every started workflow reaches ``completed``, no
(instance, step) is recorded twice, and an activity body runs again only because the
run before it was interrupted by a crash.

Each activity appends ``start:<instance>:<step>:<pgid>:<pid>`` to a file ledger (see
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
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from celery_romancy.storage.schema import history, instances

from .chaos_flows import LEDGER, build_chaos, expected_output, gate_name
from .chaos_services import PostgresServer, RedisServer
from .ledger import Gate, Ledger, wait_for
from .processes import ROOT, CeleryProcess, celery_beat, celery_worker
from .services import REDIS_URL, redis_client

pytestmark = pytest.mark.chaos

MODULE = "tests.chaos_flows"
WORKFLOWS = 200
STEPS = 4  # activity steps of chaos_saga: reserve, two charge branches, ship
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


@dataclass(frozen=True)
class Start:
    """One ``start:`` line: a process began an activity body."""

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
        return process.start()

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
            if line.startswith("start:"):
                head, pgid, pid = line.rsplit(":", 2)
                _, instance_id, step_id = head.split(":", 2)
                found.append(Start(instance_id, step_id, int(pgid), int(pid)))
        return found

    def outcomes(self) -> Counter[str]:
        """How many step messages the workers recorded, dropped as duplicates, fenced..."""
        return Counter(
            line.split(":", 4)[4].split(" ")[0]
            for line in self.ledger.events()
            if line.startswith("outcome:")
        )

    def wait_recorded(self, at_least: int, timeout: float, what: str) -> None:
        def enough() -> bool:
            count = self.recorded_or_none()
            return count is not None and count >= at_least

        self.waiting(enough, timeout, what)

    def wait_for_a_new_start(self, timeout: float) -> None:
        begun = len(self.starts())
        self.waiting(lambda: len(self.starts()) > begun, timeout, "a step body to begin")

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

    rows = rig.history_rows()
    assert len(rows) == len(started) * STEPS
    keys = Counter((r.instance_id, r.step_id) for r in rows)
    assert [k for k, c in keys.items() if c > 1] == []
    assert {r.instance_id for r in rows} == set(started)

    by_step: dict[tuple[str, str], list[Start]] = defaultdict(list)
    for start in rig.starts():
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


def first_recorded_after(rig: Rig, moment: datetime) -> float:
    """Seconds from ``moment`` to the first step recorded after it (history timestamps)."""
    later = [r.created_at for r in rig.history_rows() if r.created_at > moment]
    return (min(later) - moment).total_seconds()


# -- 1. SIGKILL the worker, again and again ---------------------------------------------


def test_sigkilled_workers_lose_no_workflow_and_record_every_step_once(
    database_url: str, tmp_path: Path, rigs: list[Rig]
) -> None:
    seed = int(os.environ.get("ROMANCY_CHAOS_SEED", random.randrange(1_000_000)))
    rng = random.Random(seed)
    rig = Rig(database_url, tmp_path)
    rigs.append(rig)
    began = time.monotonic()

    rig.beat()
    worker = rig.worker()
    started = rig.start_all(WORKFLOWS)

    kills: list[dict[str, Any]] = []
    for _ in range(KILLS):
        rig.wait_recorded(
            rig.recorded() + rng.randint(40, 100), 120, "more steps before the next kill"
        )
        if rng.random() < 0.75:
            # Most kills land inside an activity body: right after one begins.
            rig.wait_for_a_new_start(60)
        worker.kill()
        killed_at, killed_wall = time.monotonic(), datetime.now(UTC)
        at_kill = rig.recorded()  # nothing runs now: the count is stable
        kills.append({"pgid": worker.pid, "at": killed_wall, "recorded": at_kill})
        worker = rig.worker()
        rig.wait_recorded(at_kill + 1, 120, "a step recorded after the kill")
        kills[-1]["next_step_after"] = time.monotonic() - killed_at

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
        rig.wait_recorded(WORKFLOWS * STEPS // 4, 120, "a quarter of the steps")

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
        rig.wait_recorded(WORKFLOWS * STEPS // 4, 120, "a quarter of the steps")

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
    fenced = f"outcome:{paused.pid}:chaos_gated:{instance_id}:fenced"
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
