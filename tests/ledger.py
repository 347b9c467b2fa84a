"""A side-effect ledger outside any worker process: one appended line per effect.

Activities write here; tests count lines. O_APPEND makes each short write atomic, so
several worker processes can share the file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, event: str) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{event}\n".encode())
        finally:
            os.close(fd)

    def events(self) -> list[str]:
        if not self.path.exists():
            return []
        return self.path.read_text().splitlines()

    def count(self, event: str) -> int:
        return self.events().count(event)


class Gate:
    """A file an activity waits for, so a test can hold a step open and observe it."""

    def __init__(self, folder: Path, name: str) -> None:
        self.path = folder / f"gate-{name}"

    def open(self) -> None:
        self.path.touch()

    def wait(self, timeout: float = 60.0) -> None:
        wait_for(self.path.exists, timeout, f"gate {self.path.name} to open")


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``condition`` until it is true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
