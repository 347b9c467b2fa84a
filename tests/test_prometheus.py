"""Prometheus metrics (``celery_romancy.contrib.prometheus``) of sagas run on a real
worker, read back in ``prometheus_client``'s text format; neither extra is imported by
the package itself."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from celery_romancy import RetryPolicy, Romancy, WaitTimeoutError, WorkflowContext
from celery_romancy.contrib.prometheus import (
    InstanceCollector,
    RomancyMetrics,
    instrument,
)

from .harness import Harness
from .ledger import wait_for
from .processes import ROOT, ServiceProcess, celery, free_port, http, log_says
from .services import REDIS_URL, redis_client

NO_RETRY = RetryPolicy(max_attempts=1)
QUICK_RETRY = RetryPolicy(max_attempts=3, initial_interval=0.01)


class CardDeclinedError(Exception):
    pass


def register_metered_saga(romancy: Romancy) -> None:
    """book (undone by unbook) -> flaky (fails its first attempt) -> charge (declined
    when asked: the saga rolls back)."""
    attempts: dict[str, int] = {}
    lock = threading.Lock()

    @romancy.compensation("prom_unbook", retry=NO_RETRY)
    def unbook(key: str) -> None:
        pass

    @romancy.activity("prom_book", compensation=unbook, retry=NO_RETRY)
    def book(key: str) -> str:
        return f"B-{key}"

    @romancy.activity("prom_flaky", retry=QUICK_RETRY)
    def flaky(key: str) -> int:
        with lock:
            attempts[key] = attempts.get(key, 0) + 1
            if attempts[key] == 1:
                raise ConnectionError(f"first attempt of {key} lost")
            return attempts[key]

    @romancy.activity("prom_charge", retry=NO_RETRY)
    def charge(key: str, decline: bool) -> str:
        if decline:
            raise CardDeclinedError(f"card declined for {key}")
        return f"C-{key}"

    @romancy.workflow("prom_saga")
    def saga(ctx: WorkflowContext, key: str, decline: bool) -> str:
        book.execute(ctx, key)
        flaky.execute(ctx, key)
        return charge.execute(ctx, key, decline)


def sample(registry: CollectorRegistry, metric: str, /, **labels: str) -> float | None:
    """The value of one sample in the registry's exposition text, or None."""
    text = generate_latest(registry).decode()
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == metric and found.labels == labels:
                return float(found.value)
    return None


@pytest.fixture
def metered(harness: Harness) -> Iterator[tuple[CollectorRegistry, RomancyMetrics]]:
    registry = CollectorRegistry()
    metrics = instrument(harness.romancy, registry=registry)
    register_metered_saga(harness.romancy)
    yield registry, metrics
    metrics.uninstrument()


def test_sagas_on_a_worker_show_in_the_exposition_text(
    harness: Harness, metered: tuple[CollectorRegistry, RomancyMetrics]
) -> None:
    registry, _ = metered
    romancy = harness.romancy

    def steps(kind: str, name: str, outcome: str) -> float | None:
        return sample(registry, "romancy_steps_total", kind=kind, name=name, outcome=outcome)

    declined = romancy.start_workflow("prom_saga", "P1", True)
    paid = romancy.start_workflow("prom_saga", "P2", False)
    with harness.worker():
        assert romancy.wait(declined, timeout=30).status == "failed"
        assert romancy.result(paid, timeout=30) == "C-P2"

        def both_ended() -> bool:
            # A step is counted after its commit, which may be the one ending the saga.
            finished = "romancy_workflows_finished_total"
            return (
                sample(registry, finished, workflow="prom_saga", status="failed") == 1
                and sample(registry, finished, workflow="prom_saga", status="completed") == 1
                and steps("compensation", "prom_unbook", "completed") == 1
                and steps("activity", "prom_charge", "completed") == 1
            )

        wait_for(both_ended, 30, "both ends and their last steps counted")
    waiting = romancy.start_workflow("prom_saga", "P3", False)  # no worker: stays pending

    assert sample(registry, "romancy_workflows_started_total", workflow="prom_saga") == 3

    assert steps("activity", "prom_book", "completed") == 2
    assert steps("activity", "prom_flaky", "retrying") == 2  # each saga's first attempt
    assert steps("activity", "prom_flaky", "completed") == 2
    assert steps("activity", "prom_charge", "completed") == 1
    assert steps("activity", "prom_charge", "failed") == 1
    assert steps("compensation", "prom_unbook", "completed") == 1

    step_count = "romancy_step_duration_seconds_count"
    labels = {"kind": "activity", "name": "prom_book", "outcome": "completed"}
    assert sample(registry, step_count, **labels) == 2
    assert sample(registry, "romancy_step_duration_seconds_bucket", le="+Inf", **labels) == 2
    step_seconds = sample(registry, "romancy_step_duration_seconds_sum", **labels)
    assert step_seconds is not None and 0 <= step_seconds < 30

    for status in ("failed", "completed"):
        assert (
            sample(
                registry,
                "romancy_workflow_duration_seconds_count",
                workflow="prom_saga",
                status=status,
            )
            == 1
        )

    # The gauge is counted in the database when scraped: the instance started after the
    # worker stopped is there, and every status is reported, 0 included.
    def instances(status: str, workflow: str = "prom_saga") -> float | None:
        return sample(registry, "romancy_instances", workflow=workflow, status=status)

    assert instances("failed") == 1
    assert instances("completed") == 1
    assert instances("pending") == 1
    assert instances("running") == 0
    assert instances("completed", workflow="order_saga") == 0  # registered, never run
    assert sample(registry, "romancy_instances_up") == 1
    assert romancy.get_instance(waiting).status == "pending"

    # Nothing of it is kept in memory: a collector of another process's Romancy, with
    # nothing registered, reads the same numbers from the same database.
    other = Romancy(Celery("elsewhere", broker=harness.broker_url), harness.database_url)
    scraper = CollectorRegistry()
    scraper.register(InstanceCollector(other))
    assert sample(scraper, "romancy_instances", workflow="prom_saga", status="failed") == 1
    assert sample(scraper, "romancy_instances", workflow="prom_saga", status="pending") == 1
    other.storage.dispose()


# The module docstring's prefork recipe, as a worker's app module.
PREFORK_APP = """
import os

from celery import Celery
from celery.signals import worker_init, worker_process_shutdown
from prometheus_client import CollectorRegistry, multiprocess, start_http_server

from celery_romancy import Romancy
from celery_romancy.contrib.prometheus import InstanceCollector, instrument

app = Celery("metered", broker=os.environ["METERED_BROKER"])
app.conf.update(task_default_queue=os.environ["METERED_QUEUE"])
romancy = Romancy(app, database_url=os.environ["METERED_DB"])


@romancy.activity("m_step")
def m_step(x: int) -> int:
    return x + 1


@romancy.workflow("m_flow")
def m_flow(ctx, x: int) -> int:
    return m_step.execute(ctx, x)


instrument(romancy, collect_instances=False)


@worker_init.connect
def serve_metrics(**_):
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(InstanceCollector(romancy))
    start_http_server(int(os.environ["METERED_PORT"]), registry=registry)


@worker_process_shutdown.connect
def forget_child(pid=None, **_):
    multiprocess.mark_process_dead(pid)
"""


def test_a_prefork_worker_serves_the_sum_of_its_children_as_documented(
    database_url: str, tmp_path: Path
) -> None:
    (tmp_path / "metered_app.py").write_text(PREFORK_APP)
    (tmp_path / "multiproc").mkdir()
    queue = f"romancy-metered-{uuid.uuid4().hex[:10]}"
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "multiproc"),
        "METERED_BROKER": REDIS_URL,
        "METERED_QUEUE": queue,
        "METERED_DB": database_url,
        "METERED_PORT": str(port),
    }
    worker = ServiceProcess(
        "metered-worker",
        celery("metered_app", "worker", "-P", "prefork", "-c", "2", "-l", "INFO", "-Q", queue),
        env,
        tmp_path,
    )
    # This process only starts the sagas: the same workflow, registered here too.
    app = Celery("starter", broker=REDIS_URL)
    app.conf.update(task_default_queue=queue)
    starter = Romancy(app, database_url=database_url)

    @starter.activity("m_step")
    def m_step(x: int) -> int:
        return x + 1

    @starter.workflow("m_flow")
    def m_flow(ctx: WorkflowContext, x: int) -> int:
        return m_step.execute(ctx, x)

    try:
        # Serving starts in worker_init, before the worker consumes: wait for both.
        worker.start(log_says(" ready."))
        started = [starter.start_workflow("m_flow", n) for n in range(6)]
        try:
            outputs = [starter.result(i, timeout=60) for i in started]
        except WaitTimeoutError:
            pytest.fail(f"the worker did not run the sagas:\n{worker.log()}")
        assert outputs == [n + 1 for n in range(6)]

        def scraped() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            status, text = http("GET", f"http://127.0.0.1:{port}/metrics")
            assert status == 200
            return {
                (found.name, tuple(sorted(found.labels.items()))): float(found.value)
                for family in text_string_to_metric_families(str(text))
                for found in family.samples
            }

        step = (
            "romancy_steps_total",
            (("kind", "activity"), ("name", "m_step"), ("outcome", "completed")),
        )
        finished = (
            "romancy_workflows_finished_total",
            (("status", "completed"), ("workflow", "m_flow")),
        )
        # Counted in the pool's children, summed by the main process.
        wait_for(lambda: scraped().get(step) == 6, 30, "six steps counted")
        wait_for(lambda: scraped().get(finished) == 6, 30, "six ends counted")
        gauge = ("romancy_instances", (("status", "completed"), ("workflow", "m_flow")))
        assert scraped()[gauge] == 6  # counted once, by the main process, in the database
        assert scraped()[("romancy_instances_up", ())] == 1
    finally:
        worker.stop()
        redis_client().delete(queue)
        starter.storage.dispose()


def test_a_scrape_succeeds_while_the_database_is_away(tmp_path: Path) -> None:
    app = Celery("unreachable", broker="memory://")
    unreachable = Romancy(app, database_url=f"sqlite:///{tmp_path / 'missing' / 'h.db'}")
    registry = CollectorRegistry()
    metrics = instrument(unreachable, registry=registry)  # registering reads nothing
    try:
        assert sample(registry, "romancy_instances_up") == 0
        assert "romancy_workflows_started_total" in generate_latest(registry).decode()
    finally:
        metrics.uninstrument()
    assert generate_latest(registry).decode() == ""  # uninstrument took it all back


def test_the_package_imports_and_runs_without_either_extra(tmp_path: Path) -> None:
    """``import celery_romancy`` (and a workflow run on the embedded worker) with
    opentelemetry and prometheus_client made unimportable."""
    script = f"""
import sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("opentelemetry", "prometheus_client"):
            raise ImportError(f"{{name}} is not installed here")
        return None

sys.meta_path.insert(0, Refuse())

import celery_romancy
from celery_romancy import signals
from celery_romancy.contrib import status
from celery_romancy.testing import embedded_celery, worker

app = embedded_celery("bare", {str(tmp_path)!r})
romancy = celery_romancy.Romancy(app)

@romancy.activity("double")
def double(x: int) -> int:
    return 2 * x

@romancy.workflow("bare")
def bare(ctx, x: int) -> int:
    return double.execute(ctx, x)

with worker(app):
    assert romancy.result(romancy.start_workflow("bare", 21), timeout=30) == 42
assert not [m for m in sys.modules if m.startswith(("opentelemetry", "prometheus_client"))]
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("ok")
