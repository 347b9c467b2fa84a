"""docker-compose.yml: well formed, and its topology runs, with its own commands and
health checks, as real processes on this machine (Docker cannot run here).

Only what differs between a container and this machine is rewritten: host names
(``postgres``, ``redis``) become the local services, the database and the queue are
fresh, published ports become free ports, ``/tmp`` becomes the test's folder.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from .ledger import wait_for
from .processes import ROOT, ServiceProcess, free_port, http
from .services import REDIS_URL, create_pg_database, drop_pg_database, redis_client

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
IMAGES = {"postgres", "redis"}  # stock images, run here by the test environment itself
ONE_SHOT = {"migrate"}
APP_ENV = {
    "CELERY_BROKER_URL",
    "ROMANCY_DATABASE_URL",
    "POSTGRES_HOST",
    "POSTGRES_DB",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "DJANGO_SETTINGS_MODULE",
    "FLOWER_UNAUTHENTICATED_API",
}


def startup_order() -> list[str]:
    """Services in an order that respects ``depends_on`` (fails on a cycle)."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        assert name not in visiting, f"depends_on cycle through {name}"
        visiting.add(name)
        for dependency in SERVICES[name].get("depends_on", {}):
            visit(dependency)
        order.append(name)

    for name in SERVICES:
        visit(name)
    return order


def test_compose_file_is_well_formed() -> None:
    assert set(SERVICES) == {
        "postgres",
        "redis",
        "migrate",
        "worker",
        "beat",
        "flower",
        "django",
        "flask",
    }
    startup_order()
    for name, service in SERVICES.items():
        assert ("image" in service) != ("build" in service), name
        if name not in ONE_SHOT:
            assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in SERVICES, (name, dependency)
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[dependency], (name, dependency)
            else:
                assert rule["condition"] == "service_completed_successfully"
                assert dependency in ONE_SHOT
        for mapping in service.get("ports", []):
            published, container = str(mapping).split(":")
            assert published == container
            assert container in " ".join(service["command"]), (name, mapping)
        if "build" in service:
            dockerfile = ROOT / service["build"]["context"] / service["build"]["dockerfile"]
            assert dockerfile.read_text().startswith("# "), dockerfile
            assert set(service["environment"]) == APP_ENV, name
            needs = ("postgres",) if name in ONE_SHOT else ("postgres", "redis", *ONE_SHOT)
            assert set(service["depends_on"]) == set(needs), name

    # The application services agree with the postgres and redis services.
    env = SERVICES["worker"]["environment"]
    history = sa.make_url(env["ROMANCY_DATABASE_URL"])
    assert history.host == env["POSTGRES_HOST"] == "postgres"
    assert (
        history.database == env["POSTGRES_DB"] == SERVICES["postgres"]["environment"]["POSTGRES_DB"]
    )
    assert (
        history.password
        == env["POSTGRES_PASSWORD"]
        == SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD"]
    )
    assert sa.make_url(env["CELERY_BROKER_URL"]).host == "redis"
    assert "-E" in SERVICES["worker"]["command"]  # task events, for Flower


class Topology:
    """The compose services as local processes."""

    def __init__(self, folder: Path, database_url: str) -> None:
        self.folder = folder
        self.queue = f"romancy-compose-{uuid.uuid4().hex[:10]}"
        self.ports = {
            mapping.split(":")[1]: str(free_port())
            for service in SERVICES.values()
            for mapping in service.get("ports", [])
        }
        pg = sa.make_url(database_url)
        local = {
            "CELERY_BROKER_URL": REDIS_URL,
            "ROMANCY_DATABASE_URL": database_url,
            "POSTGRES_HOST": pg.host or "127.0.0.1",
            "POSTGRES_DB": pg.database or "",
            "POSTGRES_USER": pg.username or "postgres",
            "POSTGRES_PASSWORD": pg.password or "",
        }
        bin_dir = os.path.dirname(sys.executable)  # `python`, `celery`, `flask` as in the image
        self.env = {
            **os.environ,
            **SERVICES["worker"]["environment"],
            **local,
            "PORT": "",
            "ORDERS_QUEUE": self.queue,
            "PYTHONPATH": str(ROOT),  # the image's ENV PYTHONPATH=/app
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOSTNAME": socket.gethostname(),  # what Docker sets; `%h` in worker@%h
        }
        self.processes: list[ServiceProcess] = []

    def local(self, text: str) -> str:
        for container, port in self.ports.items():
            text = text.replace(container, port)
        return text.replace("/tmp/", f"{self.folder}/").replace("$$", "$")

    def argv(self, name: str) -> list[str]:
        return [self.local(part) for part in SERVICES[name]["command"]]

    def healthy(self, name: str) -> bool:
        test = SERVICES[name]["healthcheck"]["test"]
        argv = [self.local(part) for part in test[1:]]
        if test[0] == "CMD-SHELL":
            argv = ["sh", "-c", argv[0]]
        done = subprocess.run(
            argv, cwd=ROOT, env=self.env, capture_output=True, timeout=60, check=False
        )
        return done.returncode == 0

    def run_once(self, name: str) -> None:
        done = subprocess.run(
            self.argv(name),
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"{name}: {shlex.join(self.argv(name))}\n{done.stderr}"

    def launch(self, name: str) -> ServiceProcess:
        process = ServiceProcess(name, self.argv(name), self.env, self.folder).launch()
        self.processes.append(process)
        return process

    def url(self, container_port: str) -> str:
        return f"http://127.0.0.1:{self.ports[container_port]}"

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    redis = redis_client()
    database_url = create_pg_database()
    running = Topology(tmp_path, database_url)
    yield running
    running.stop()
    redis.delete(running.queue)
    drop_pg_database(database_url)


def test_the_compose_topology_runs_here(topology: Topology) -> None:
    long_running = []
    for name in startup_order():
        if name in IMAGES:
            continue
        if name in ONE_SHOT:
            topology.run_once(name)  # before everything that depends on it
        else:
            long_running.append((name, topology.launch(name)))
    for name, process in long_running:
        process.wait_ready(lambda _, name=name: topology.healthy(name), timeout=60)

    django, flask, flower = topology.url("8000"), topology.url("5000"), topology.url("5555")
    worker = f"worker@{topology.env['HOSTNAME']}"
    online = f'flower_worker_online{{worker="{worker}"}} 1.0'
    wait_for(lambda: online in str(http("GET", f"{flower}/metrics")[1]), 30, "Flower to see it")

    order_id = f"ORD-{uuid.uuid4().hex[:8]}"
    sample = json.loads((ROOT / "example_project" / "order.json").read_text())
    sample["order_id"] = order_id
    status, body = http("POST", f"{django}/orders", sample)
    assert status == 202, body
    from_django = body["instance_id"]
    status, body = http("POST", f"{flask}/orders", {**sample, "order_id": f"{order_id}-F"})
    assert status == 202, body
    from_flask = body["instance_id"]

    def completed(url: str) -> bool:
        status, body = http("GET", url)
        assert status == 200, body
        return bool(body["status"] == "completed")

    wait_for(lambda: completed(f"{django}/orders/{order_id}"), 60, "the Django order")
    wait_for(lambda: completed(f"{flask}/orders/{from_flask}"), 60, "the Flask order")

    def steps_in_flower() -> bool:  # reserve_inventory, process_payment, ship_order
        found = http("GET", f"{flower}/api/tasks?search={from_django}")[1]
        return isinstance(found, dict) and len(found) == 3

    wait_for(steps_in_flower, 30, "Flower to show the three steps")

    # The operator's view, as `docker compose exec worker celery ... romancy list` gives it.
    listing = subprocess.run(
        [*topology.argv("worker")[:3], "romancy", "list", "--status", "completed"],
        cwd=ROOT,
        env=topology.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listing.returncode == 0, listing.stderr
    assert {line.split()[0] for line in listing.stdout.splitlines()[1:]} == {
        from_django,
        from_flask,
    }
