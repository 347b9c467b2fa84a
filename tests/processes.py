"""Real service processes for the integration tests: celery worker, beat, Flower, web servers.

Each runs in its own process group with its output in a log file, is waited for with a
readiness check (a log line or an HTTP answer) under a deadline, and is stopped with
SIGTERM (SIGKILL if it does not go).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .ledger import wait_for

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def celery(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", module, *args]


class ServiceProcess:
    def __init__(
        self, name: str, argv: list[str], env: Mapping[str, str], folder: Path, cwd: Path = ROOT
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env)
        self.cwd = cwd
        self.log_path = folder / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.hostname: str | None = None  # a worker's node name

    def start(
        self, ready: Callable[[ServiceProcess], bool], timeout: float = 60.0
    ) -> ServiceProcess:
        self.launch()
        return self.wait_ready(ready, timeout)

    def launch(self) -> ServiceProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_ready(
        self, ready: Callable[[ServiceProcess], bool], timeout: float = 60.0
    ) -> ServiceProcess:
        wait_for(lambda: self._ready(ready), timeout, f"{self.name} to be ready")
        return self

    def _ready(self, ready: Callable[[ServiceProcess], bool]) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log()}")
        return ready(self)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        """The main process; with ``start_new_session`` it also names the process group."""
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL the whole group (a worker's pool children too): no cleanup at all."""
        assert self.process is not None
        self.signal_group(signal.SIGKILL)
        self.process.wait(timeout=30)

    def pause(self) -> None:
        self.signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal_group(signal.SIGCONT)

    def stop(self) -> None:
        """Warm shutdown if it can, SIGKILL if it will not; never leaves a child behind."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.signal_group(signal.SIGCONT)  # a paused process cannot handle SIGTERM
            self.signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=15)
        self.signal_group(signal.SIGKILL)  # pool children that outlived their parent
        if self.process.poll() is None:
            self.process.wait(timeout=30)


class CeleryProcess(ServiceProcess):
    """``celery -A <module> ...``, ready when its log says ``ready_marker``."""

    def __init__(
        self,
        module: str,
        args: list[str],
        env: Mapping[str, str],
        folder: Path,
        name: str,
        ready_marker: str,
    ) -> None:
        super().__init__(name, celery(module, *args), env, folder)
        self.ready_marker = ready_marker

    def start(
        self, ready: Callable[[ServiceProcess], bool] | None = None, timeout: float = 60.0
    ) -> CeleryProcess:
        super().start(ready or log_says(self.ready_marker), timeout)
        return self


def celery_worker(
    module: str,
    env: Mapping[str, str],
    folder: Path,
    queue: str,
    concurrency: int = 2,
    pool: str = "prefork",
) -> CeleryProcess:
    """A real ``celery worker`` with its own node name and log file."""
    name = f"w{uuid.uuid4().hex[:8]}"
    worker = CeleryProcess(
        module,
        [
            "worker",
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-l",
            "INFO",
            "-n",
            f"{name}@localhost",
            "-Q",
            queue,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        env,
        folder,
        f"worker-{name}",
        ready_marker=" ready.",
    )
    worker.hostname = f"{name}@localhost"
    return worker


def celery_beat(module: str, env: Mapping[str, str], folder: Path) -> CeleryProcess:
    """A real ``celery beat`` (schedule file in ``folder``), ticking at least every second."""
    name = uuid.uuid4().hex[:8]
    return CeleryProcess(
        module,
        ["beat", "-l", "DEBUG", "-s", str(folder / f"beat-schedule-{name}"), "--max-interval", "1"],
        env,
        folder,
        f"beat-{name}",
        ready_marker="beat: Starting...",
    )


def log_says(marker: str) -> Callable[[ServiceProcess], bool]:
    return lambda service: marker in service.log()


def answers(url: str) -> Callable[[ServiceProcess], bool]:
    def ready(_: ServiceProcess) -> bool:
        try:
            return http("GET", url)[0] == 200
        except OSError:  # refused, reset: not listening yet
            return False

    return ready


def http(method: str, url: str, payload: Any = None) -> tuple[int, Any]:
    """(status, decoded JSON body) of one request; HTTP errors are answers too."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")
