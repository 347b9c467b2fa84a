"""Flower, a real process, watching a real worker (``-E``) run a workflow step by step.

Every activity is its own Celery task, and Flower files each step under the activity's
name. The message's ``argsrepr`` reads ``"<workflow>[<instance id>] activity <step id>"``,
so a person sees which saga and which step a task belongs to, and Flower's search by
instance id finds every step of one instance.
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
    yield Watched(romancy, folder, flower_url, worker_name)
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
