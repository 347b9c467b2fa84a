"""Prometheus metrics for sagas: ``pip install celery-romancy[prometheus]``.

::

    from celery_romancy.contrib.prometheus import instrument

    instrument(romancy)  # or instrument(romancy, registry=my_registry)

Metrics (``prometheus_client``'s text format, served by ``start_http_server`` or any of
its exporters):

- ``romancy_workflows_started_total{workflow}``: instances created;
- ``romancy_workflows_finished_total{workflow,status}``: instances that ended,
  ``status`` one of ``completed``, ``failed``, ``cancelled``, ``compensation_failed``;
- ``romancy_steps_total{kind,name,outcome}``: steps recorded (``kind``: ``activity``,
  ``compensation``, ``timer``, ``wait_event``...; ``name``: the activity, compensation,
  timer or event; ``outcome``: ``completed``, ``failed``, ``retrying``);
- ``romancy_step_duration_seconds{kind,name,outcome}``: a histogram of each step's
  time from its start to its record (for a wait: how long it waited);
- ``romancy_workflow_duration_seconds{workflow,status}``: a histogram of each ended
  instance's time from its creation to its end;
- ``romancy_instances{workflow,status}``: the instances in the history database by
  workflow and status, counted by a query **at scrape time** (nothing kept in memory,
  so every process serving it reports the same numbers, and a restart loses nothing);
  every registered workflow reports each status, 0 included. It counts every instance
  kept, so purge ended instances you no longer need to keep the query short.
  ``romancy_instances_up`` is 1 when that query answered, 0 when the database did not
  (the scrape still succeeds, with the other metrics).

The counters and histograms come from ``celery_romancy.signals``, so each process counts
what it committed: workers count steps and ends, the web processes that start workflows
count starts. Scrape every process that records, or sum them (below).

Scraping a worker
-----------------
A worker with the ``threads`` or ``solo`` pool is one process: serve its registry on a
port of its own once the worker starts::

    from celery.signals import worker_init
    from prometheus_client import start_http_server

    instrument(romancy)

    @worker_init.connect
    def serve_metrics(**_):
        start_http_server(9808)  # http://worker-host:9808/metrics

With the ``prefork`` pool the steps run in child processes, each with its own memory:
use ``prometheus_client``'s multiprocess mode. Set ``PROMETHEUS_MULTIPROC_DIR`` to an
empty folder before the worker starts (the same for all its processes), count in every
process, and serve from the main one a registry that sums the children's files, plus
the instance gauge (which must not be counted per process)::

    from celery.signals import worker_init, worker_process_shutdown
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    from celery_romancy.contrib.prometheus import InstanceCollector, instrument

    instrument(romancy, collect_instances=False)  # every process counts its steps

    @worker_init.connect
    def serve_metrics(**_):  # the main process, before it forks its children
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(InstanceCollector(romancy))
        start_http_server(9808, registry=registry)

    @worker_process_shutdown.connect
    def forget_child(pid=None, **_):
        multiprocess.mark_process_dead(pid)

Run only one exporter of ``romancy_instances`` per database if you sum across targets
(every one of them reports the whole database), or aggregate it with ``max``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import signals as romancy_signals
from ..states import Status
from ..storage.schema import instances

if TYPE_CHECKING:
    from ..app import Romancy

logger = logging.getLogger(__name__)

# Steps last milliseconds (an activity) to days (a wait for an event).
STEP_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    21600.0,
    86400.0,
)
WORKFLOW_BUCKETS = (
    0.1,
    0.5,
    1.0,
    5.0,
    15.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    14400.0,
    86400.0,
    604800.0,
)


def instrument(
    romancy: Romancy,
    registry: CollectorRegistry | None = None,
    *,
    collect_instances: bool = True,
) -> RomancyMetrics:
    """Count ``romancy``'s workflows and steps into ``registry`` (default: the global
    ``REGISTRY``), and, with ``collect_instances``, register the ``romancy_instances``
    gauge read from the database. ``uninstrument()`` on the result disconnects it."""
    metrics = RomancyMetrics(romancy, REGISTRY if registry is None else registry)
    if collect_instances:
        metrics.registry.register(metrics.instance_collector)
    metrics.connect()
    return metrics


class InstanceCollector(Collector):
    """``romancy_instances{workflow,status}``: counted in the database when scraped."""

    def __init__(self, romancy: Romancy) -> None:
        self.romancy = romancy

    def describe(self) -> Iterable[Metric]:
        # Names only: registering must not query the database (the default registry
        # calls ``collect`` at registration unless there is a ``describe``).
        return [_instances_family(), _up_family()]

    def collect(self) -> Iterable[Metric]:
        family, up = _instances_family(), _up_family()
        try:
            counts = self.count()
        except sa.exc.SQLAlchemyError as exc:
            # A scrape must not fail because the history database is away: the other
            # metrics still come, and ``romancy_instances_up`` says why these did not.
            logger.warning("celery_romancy: could not count instances for Prometheus: %s", exc)
            up.add_metric([], 0)
            return [up]
        workflows = set(self.romancy.registry.workflows) | {w for w, _ in counts}
        statuses = [str(s) for s in Status] + sorted(
            {s for _, s in counts} - {str(s) for s in Status}
        )
        for workflow in sorted(workflows):
            for status in statuses:
                family.add_metric([workflow, status], counts.get((workflow, status), 0))
        up.add_metric([], 1)
        return [family, up]

    def count(self) -> dict[tuple[str, str], int]:
        """Instances by (workflow, status), from the ``(workflow_name, status)`` index."""
        query = sa.select(instances.c.workflow_name, instances.c.status, sa.func.count()).group_by(
            instances.c.workflow_name, instances.c.status
        )
        with self.romancy.storage.connect() as conn:
            return {(str(w), str(s)): int(n) for w, s, n in conn.execute(query)}


def _instances_family() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "romancy_instances",
        "Workflow instances in the history database, by workflow and status",
        labels=["workflow", "status"],
    )


def _up_family() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "romancy_instances_up", "1 if the history database answered the instance count"
    )


class RomancyMetrics:
    """The counters and histograms of one ``Romancy``, fed by its signals."""

    def __init__(self, romancy: Romancy, registry: CollectorRegistry) -> None:
        self.romancy = romancy
        self.registry = registry
        self.workflows_started = Counter(
            "romancy_workflows_started",
            "Workflow instances created",
            ["workflow"],
            registry=registry,
        )
        self.workflows_finished = Counter(
            "romancy_workflows_finished",
            "Workflow instances that ended, by status",
            ["workflow", "status"],
            registry=registry,
        )
        self.steps = Counter(
            "romancy_steps",
            "Steps recorded, by kind, name and outcome",
            ["kind", "name", "outcome"],
            registry=registry,
        )
        self.step_duration = Histogram(
            "romancy_step_duration_seconds",
            "Time from a step's start to its record",
            ["kind", "name", "outcome"],
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        self.workflow_duration = Histogram(
            "romancy_workflow_duration_seconds",
            "Time from an instance's creation to its end",
            ["workflow", "status"],
            buckets=WORKFLOW_BUCKETS,
            registry=registry,
        )
        self.instance_collector = InstanceCollector(romancy)
        self._connections: list[tuple[Any, Any]] = []

    def connect(self) -> None:
        wiring = [
            (romancy_signals.workflow_started, self._started),
            (romancy_signals.workflow_completed, self._completed),
            (romancy_signals.workflow_failed, self._failed),
            (romancy_signals.workflow_cancelled, self._cancelled),
            (romancy_signals.step_recorded, self._step_recorded),
        ]
        for signal, receiver in wiring:
            signal.connect(receiver, sender=self.romancy, weak=False)
        self._connections = wiring

    def uninstrument(self) -> None:
        for signal, receiver in self._connections:
            signal.disconnect(receiver, sender=self.romancy)
        self._connections = []
        # Not registered here when collect_instances=False.
        with contextlib.suppress(KeyError):
            self.registry.unregister(self.instance_collector)
        for metric in self._metrics():
            self.registry.unregister(metric)

    def _metrics(self) -> Iterator[Any]:
        yield from (
            self.workflows_started,
            self.workflows_finished,
            self.steps,
            self.step_duration,
            self.workflow_duration,
        )

    # -- receivers ------------------------------------------------------------------------

    def _started(self, workflow: str = "", **_: Any) -> None:
        self.workflows_started.labels(workflow).inc()

    def _completed(self, instance_id: str = "", workflow: str = "", **_: Any) -> None:
        self._ended(instance_id, workflow, "completed")

    def _failed(
        self, instance_id: str = "", workflow: str = "", status: str = "failed", **_: Any
    ) -> None:
        self._ended(instance_id, workflow, str(status))

    def _cancelled(self, instance_id: str = "", workflow: str = "", **_: Any) -> None:
        self._ended(instance_id, workflow, "cancelled")

    def _ended(self, instance_id: str, workflow: str, status: str) -> None:
        self.workflows_finished.labels(workflow, status).inc()
        # The signal has no start time: one read of the row that just ended (its
        # ``updated_at`` is the end's commit).
        instance = self.romancy.storage.get_instance(instance_id)
        if instance is not None:
            self.workflow_duration.labels(workflow, status).observe(
                _seconds(instance.created_at, instance.updated_at)
            )

    def _step_recorded(
        self,
        kind: Any = "",
        name: str = "",
        outcome: str = "",
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
        **_: Any,
    ) -> None:
        labels = (str(kind), name, outcome)
        self.steps.labels(*labels).inc()
        if started_at is not None and finished_at is not None:
            self.step_duration.labels(*labels).observe(_seconds(started_at, finished_at))


def _seconds(start: datetime, end: datetime) -> float:
    return max((end - start).total_seconds(), 0.0)
