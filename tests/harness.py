"""Test harness: the test app on one database, with real workers (thread or subprocess)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery import Celery, signals

from celery_romancy import Romancy
from celery_romancy.testing import worker

from .flows import build
from .ledger import Gate, Ledger, wait_for
from .services import REDIS_URL, redis_client

ROOT = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """A real ``celery worker`` subprocess (its own process group, so it can be killed)."""

    def __init__(self, env: dict[str, str], log_path: Path, pool: str, concurrency: int) -> None:
        self.env = env
        self.log_path = log_path
        self.pool = pool
        self.concurrency = concurrency
        self.process: subprocess.Popen[bytes] | None = None
        self.hostname = f"w{uuid.uuid4().hex[:8]}@localhost"

    def start(self, timeout: float = 60.0) -> WorkerProcess:
        log = self.log_path.open("ab")
        self._log_start = self.log_path.stat().st_size
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tests.worker_app",
                "worker",
                "-P",
                self.pool,
                "-c",
                str(self.concurrency),
                "-l",
                "INFO",
                "-n",
                self.hostname,
                "-Q",
                self.env["ROMANCY_TEST_QUEUE"],
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_for(self._ready, timeout, "the celery worker to be ready")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log()}")
        return "ready." in self.log()[self._log_start :]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole worker: main process and pool children, no cleanup at all."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()


class BeatProcess(WorkerProcess):
    """A real ``celery beat`` subprocess; its schedule file lives in the test's folder."""

    def __init__(self, env: dict[str, str], folder: Path) -> None:
        super().__init__(env, folder / "beat.log", pool="", concurrency=0)
        self.folder = folder

    def start(self, timeout: float = 60.0) -> BeatProcess:
        log = self.log_path.open("ab")
        self._log_start = self.log_path.stat().st_size
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tests.worker_app",
                "beat",
                "-l",
                "DEBUG",
                "-s",
                str(self.folder / "beat-schedule"),
                "--max-interval",
                "1",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_for(self._ready, timeout, "celery beat to start")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"beat exited with {self.process.returncode}:\n{self.log()}")
        return "beat: Starting..." in self.log()[self._log_start :]


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
        self._processes: list[WorkerProcess] = []
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

    def worker_process(self, pool: str = "prefork", concurrency: int = 2) -> WorkerProcess:
        process = WorkerProcess(self._env(), self.folder / "worker.log", pool, concurrency)
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

    def beat_process(self) -> BeatProcess:
        """A real ``celery beat`` subprocess for this app (runs the romancy.* jobs)."""
        process = BeatProcess(self._env(), self.folder)
        self._processes.append(process)
        return process

    def close(self) -> None:
        signals.task_postrun.disconnect(self._on_postrun)
        for process in self._processes:
            process.stop()
        self.redis.delete(self.queue)
        self.romancy.storage.dispose()
