"""Test harness: the test app on one database, with real workers (thread or subprocess)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery import Celery, signals

from celery_romancy import Romancy
from celery_romancy.testing import worker

from .flows import build
from .ledger import Gate, Ledger
from .processes import ROOT, CeleryProcess, celery_beat, celery_worker
from .services import REDIS_URL, redis_client


class Harness:
    def __init__(
        self, database_url: str, folder: Path, broker_url: str = REDIS_URL, **conf: Any
    ) -> None:
        self.broker_url = broker_url
        self.redis = redis_client(broker_url)
        self.database_url = database_url
        self.folder = folder
        self.queue = f"romancy-test-{uuid.uuid4().hex[:10]}"
        self.conf = conf
        self.app: Celery
        self.romancy: Romancy
        self.app, self.romancy = build(database_url, broker_url, folder, self.queue, **conf)
        self.ledger = Ledger(folder / "ledger.log")
        self._processes: list[CeleryProcess] = []
        # (task name, instance id, what the runner did) for every step the in-process
        # worker handled: "recorded", "duplicate", "fenced", ...
        self.outcomes: list[tuple[str, str, object]] = []
        signals.task_postrun.connect(self._on_postrun, weak=False)

    def _on_postrun(
        self, sender: Any = None, args: Any = None, retval: Any = None, **_: Any
    ) -> None:
        if sender is not None and sender.app is self.app and args:
            self.outcomes.append((sender.name, args[0], retval))

    def gate(self, name: str) -> Gate:
        return Gate(self.folder, name)

    def queued(self) -> int:
        """Messages waiting in this test's queue on the broker."""
        return int(self.redis.llen(self.queue))

    @contextmanager
    def worker(self) -> Iterator[None]:
        with worker(self.app, pool="threads", concurrency=2):
            yield

    def worker_process(self, pool: str = "prefork", concurrency: int = 2) -> CeleryProcess:
        """A real ``celery worker`` subprocess for this app (not started yet)."""
        process = celery_worker(
            "tests.worker_app", self._env(), self.folder, self.queue, concurrency, pool
        )
        self._processes.append(process)
        return process

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "ROMANCY_TEST_DB": self.database_url,
            "ROMANCY_TEST_BROKER": self.broker_url,
            "ROMANCY_TEST_DIR": str(self.folder),
            "ROMANCY_TEST_QUEUE": self.queue,
            "ROMANCY_TEST_CONF": json.dumps(self.conf),
            "PYTHONPATH": str(ROOT),
        }

    def beat_process(self) -> CeleryProcess:
        """A real ``celery beat`` subprocess for this app (runs the romancy.* jobs)."""
        process = celery_beat("tests.worker_app", self._env(), self.folder)
        self._processes.append(process)
        return process

    def close(self) -> None:
        signals.task_postrun.disconnect(self._on_postrun)
        for process in self._processes:
            process.stop()
        self.redis.delete(self.queue, f"{self.queue}.maintenance")
        self.romancy.storage.dispose()
