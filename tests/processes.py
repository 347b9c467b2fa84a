"""Real service processes for the integration tests: celery worker, beat, Flower, web servers.

Each runs in its own process group with its output in a log file, is waited for with a
readiness check (a log line or an HTTP answer) under a deadline, and is stopped with
SIGTERM (SIGKILL if it does not go).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
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

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


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
