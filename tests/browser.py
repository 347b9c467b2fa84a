"""A real browser for the dashboard tests: Debian's Chromium driven by Playwright, and a
real HTTP server in a thread serving the WSGI app it browses.

Playwright launches ``/usr/bin/chromium`` (``executable_path``), so nothing is
downloaded. A missing browser is a missing service (``services.missing``): under
``CI=true`` it fails the run (``.ci/run`` installs it), elsewhere it skips the test.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from .services import missing

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = Path(os.environ.get("ROMANCY_TEST_CHROMIUM", "/usr/bin/chromium"))
# Screenshots the tests keep for a person to look at (ignored by git).
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium, closed afterwards."""
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError as exc:
        missing("Playwright (pip install playwright)", exc)
    if not CHROMIUM.exists():
        missing("Chromium", FileNotFoundError(f"{CHROMIUM} (apt-get install chromium)"))
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        except Error as exc:
            missing("Chromium", exc)
        try:
            yield browser
        finally:
            browser.close()


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # pytest shows what the test asserts, not an access log


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """``app`` (WSGI) behind a real HTTP server on a free local port; yields its URL."""
    server = make_server(
        "127.0.0.1", 0, app, server_class=_ThreadingServer, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="dashboard-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def keep_screenshot(name: str) -> Path:
    """Where to write a screenshot the run keeps: ``test-artifacts/<name>``."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name
