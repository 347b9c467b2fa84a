"""Flower, a real process, watching a real worker (``-E``) run a workflow step by step.

Every activity is its own Celery task, and Flower files each step under the activity's
name. The message's ``argsrepr`` reads ``"<workflow>[<instance id>] activity <step id>"``,
so a person sees which saga and which step a task belongs to, and Flower's search by
instance id finds every step of one instance. A failed attempt that is retried shows as
``RETRY``, a step (or an undo) failing for good as ``FAILURE``, with the activity's own
exception and traceback, and no message of theirs comes back.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from celery_romancy import Romancy

from .cli_flows import build_cli
from .ledger import Gate, Ledger, wait_for
from .processes import ROOT, ServiceProcess, answers, celery, free_port, http, log_says
from .services import REDIS_URL, redis_client


@dataclass
class Watched:
    romancy: Romancy
    folder: Path
    flower_url: str
    worker_name: str
    worker: ServiceProcess


@pytest.fixture(scope="module")
def watched(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watched]:
    redis = redis_client()
    folder = tmp_path_factory.mktemp("flower")
    queue = f"romancy-flower-{uuid.uuid4().hex[:10]}"
    _, romancy = build_cli(pg_url, REDIS_URL, folder, queue)
    env = {
        **os.environ,
        "ROMANCY_TEST_DB": pg_url,
        "ROMANCY_TEST_BROKER": REDIS_URL,
        "ROMANCY_TEST_DIR": str(folder),
        "ROMANCY_TEST_QUEUE": queue,
        "PYTHONPATH": str(ROOT),
        "FLOWER_UNAUTHENTICATED_API": "true",
    }
    port = free_port()
    flower_url = f"http://127.0.0.1:{port}"
    flower = ServiceProcess(
        "flower",
        celery("tests.cli_app", "flower", f"--port={port}", "--address=127.0.0.1"),
        env,
        folder,
    ).start(answers(f"{flower_url}/healthcheck"))
    worker_name = f"flower-{uuid.uuid4().hex[:6]}@localhost"
    worker = ServiceProcess(
        "worker",
        celery(
            "tests.cli_app",
            "worker",
            "-E",
            "-P",
            "threads",
            "-c",
            "2",
            "-l",
            "INFO",
            "-n",
            worker_name,
            "-Q",
            queue,
            "--without-gossip",
            "--without-mingle",
        ),
        env,
        folder,
    ).start(log_says(" ready."))
    yield Watched(romancy, folder, flower_url, worker_name, worker)
    worker.stop()
    flower.stop()
    redis.delete(queue)
    romancy.storage.dispose()


def flower_tasks(watched: Watched, instance_id: str) -> dict[str, dict[str, Any]]:
    """Flower's tasks of one instance, by step id."""
    status, found = http("GET", f"{watched.flower_url}/api/tasks?search={quote(instance_id)}")
    assert status == 200, found
    steps = {}
    for task in found.values():
        assert task["name"] in ("reserve", "held", "ship"), task["name"]
        step_id = f"{task['name']}:1"  # held_saga calls each activity once
        assert task["args"] == f"held_saga[{instance_id}] activity {step_id}", task["args"]
        steps[step_id] = task
    return steps


def test_flower_shows_each_activity_as_its_own_task(watched: Watched) -> None:
    metrics = f"{watched.flower_url}/metrics"
    online = f'flower_worker_online{{worker="{watched.worker_name}"}} 1.0'
    # Flower only sees events sent after it subscribed: wait for the worker's heartbeat.
    wait_for(lambda: online in str(http("GET", metrics)[1]), 30, "Flower to see the worker")

    instance_id = watched.romancy.start_workflow("held_saga", "F1")
    ledger = Ledger(watched.folder / "ledger.log")
    wait_for(lambda: "held-start:F1" in ledger.events(), 30, "the held step to start")

    def running() -> bool:
        steps = flower_tasks(watched, instance_id)
        return (
            steps.get("reserve:1", {}).get("state") == "SUCCESS"
            and steps.get("held:1", {}).get("state") == "STARTED"
        )

    wait_for(running, 30, "Flower to show reserve done and held running")
    assert watched.romancy.get_instance(instance_id).status == "running"

    Gate(watched.folder, "F1").open()
    assert watched.romancy.wait(instance_id, timeout=30).status == "completed"

    def finished() -> bool:
        steps = flower_tasks(watched, instance_id)
        return set(steps) == {"reserve:1", "held:1", "ship:1"} and all(
            task["state"] == "SUCCESS" for task in steps.values()
        )

    wait_for(finished, 30, "Flower to show every step succeeded")
    steps = flower_tasks(watched, instance_id)
    assert all(task["worker"] == watched.worker_name for task in steps.values())
    # The step messages chain: each next step is sent by the one before.
    assert steps["held:1"]["parent_id"] == steps["reserve:1"]["uuid"]
    assert steps["ship:1"]["parent_id"] == steps["held:1"]["uuid"]
    # Flower groups by task name: each activity is one task type, whatever the instance.
    status, by_name = http("GET", f"{watched.flower_url}/api/tasks?taskname=held")
    assert status == 200
    assert [t["args"] for t in by_name.values() if instance_id in t["args"]] == [
        f"held_saga[{instance_id}] activity held:1"
    ]


def steps_in_flower(watched: Watched, instance_id: str) -> list[dict[str, Any]]:
    """Flower's tasks of one instance, oldest first."""
    status, found = http("GET", f"{watched.flower_url}/api/tasks?search={quote(instance_id)}")
    assert status == 200, found
    return sorted(found.values(), key=lambda task: task.get("received") or 0)


def unacked_messages_of(instance_id: str) -> list[bytes]:
    """Messages of ``instance_id`` the Redis broker still waits to see acknowledged."""
    return [m for m in redis_client().hgetall("unacked").values() if instance_id.encode() in m]


def wait_for_flower_worker(watched: Watched) -> None:
    online = f'flower_worker_online{{worker="{watched.worker_name}"}} 1.0'
    metrics = f"{watched.flower_url}/metrics"
    wait_for(lambda: online in str(http("GET", metrics)[1]), 30, "Flower to see the worker")


def test_flower_shows_retried_attempts_as_retry_and_the_last_as_failure(
    watched: Watched,
) -> None:
    wait_for_flower_worker(watched)
    instance_id = watched.romancy.start_workflow("flaky_flow", "FF-1", 10)  # always fails
    assert watched.romancy.wait(instance_id, timeout=30).status == "failed"

    def states() -> list[str]:
        return [task["state"] for task in steps_in_flower(watched, instance_id)]

    wait_for(
        lambda: states() == ["RETRY", "RETRY", "RETRY", "FAILURE"], 30, "Flower's four attempts"
    )
    attempts = steps_in_flower(watched, instance_id)
    assert [task["name"] for task in attempts] == ["flaky"] * 4
    assert {task["args"] for task in attempts} == {f"flaky_flow[{instance_id}] activity flaky:1"}
    # Each attempt is a task of its own (the engine sent it), with its own exception.
    assert len({task["uuid"] for task in attempts}) == 4
    for number, task in enumerate(attempts, start=1):
        # A retry's exception reads "Retry(Retry(...), FlakyError(...), 0.05)" in this
        # Celery, as for any task.retry(); the failure's is the activity's alone.
        error = f"FlakyError('attempt {number} of FF-1 failed')"
        assert error in task["exception"]
        assert task["exception"] == error or task["state"] == "RETRY"
        assert 'raise FlakyError(f"attempt {attempt} of {key} failed")' in task["traceback"]
    # Flower's failure list has the last attempt, under its history row's task id.
    status, failed = http("GET", f"{watched.flower_url}/api/tasks?state=FAILURE")
    assert status == 200
    [last] = [task for task in failed.values() if instance_id in task["args"]]
    [event] = watched.romancy.get_history(instance_id)
    assert last["uuid"] == event.task_id == attempts[-1]["uuid"]

    # Nothing came back: each attempt ran once, each message was acknowledged.
    ledger = Ledger(watched.folder / "ledger.log")
    assert ledger.count("flaky:FF-1") == 4
    wait_for(lambda: not unacked_messages_of(instance_id), 10, "the acks")
    # The worker's log: Celery's own retry and failure lines, and ours with tracebacks.
    log = watched.worker.log()
    for task in attempts[:3]:
        assert f"Task flaky[{task['uuid']}] retry: Retry in" in log
    assert f"Task flaky[{last['uuid']}] raised unexpected: FlakyError('attempt 4" in log
    assert f"activity flaky:1 of flaky_flow {instance_id} failed (attempt 4)" in log
    assert f"workflow flaky_flow {instance_id} failed" in log


def test_flower_shows_a_failed_step_and_its_failed_undo_as_failures(watched: Watched) -> None:
    wait_for_flower_worker(watched)
    api_down = watched.folder / "flight-api-down"
    api_down.touch()
    try:
        instance_id = watched.romancy.start_workflow("trip", "FT-1", fail_car=True)
        parked = watched.romancy.wait(instance_id, timeout=30)
    finally:
        api_down.unlink()
    assert parked.status == "compensation_failed"

    def by_name() -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for task in steps_in_flower(watched, instance_id):
            found.setdefault(task["name"], []).append(task["state"])
        return found

    wait_for(
        lambda: by_name().get("cancel_flight") == ["RETRY", "RETRY", "FAILURE"],
        30,
        "Flower to show the undo's attempts",
    )
    assert by_name() == {
        "book_flight": ["SUCCESS"],
        "book_hotel": ["SUCCESS"],
        "book_car": ["FAILURE"],
        "cancel_hotel": ["SUCCESS"],
        "send_apology": ["SUCCESS"],
        "cancel_flight": ["RETRY", "RETRY", "FAILURE"],
    }
    status, failed = http("GET", f"{watched.flower_url}/api/tasks?state=FAILURE")
    assert status == 200
    mine = {t["name"]: t for t in failed.values() if instance_id in t["args"]}
    assert set(mine) == {"book_car", "cancel_flight"}
    assert mine["book_car"]["exception"] == "TerminalError('no car for FT-1')"
    assert mine["cancel_flight"]["exception"] == "ConnectionError('flight API unreachable')"
    assert mine["cancel_flight"]["args"] == (f"trip[{instance_id}] compensation book_flight:1")
    ledger = Ledger(watched.folder / "ledger.log")
    assert ledger.count("book_car:FT-1") == 1
    assert ledger.count("cancel_flight-failed:FT-1") == 3
    wait_for(lambda: not unacked_messages_of(instance_id), 10, "the acks")
    assert f"workflow trip {instance_id} is parked in compensation_failed" in (watched.worker.log())
