"""Helpers for users' own tests: a real Celery worker in a thread, no eager mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from celery.contrib.testing.worker import start_worker


@contextmanager
def worker(
    app: Celery, *, pool: str = "threads", concurrency: int = 2, **options: Any
) -> Iterator[Any]:
    """Run a worker for ``app`` in this process while the block runs.

    Steps then execute exactly as in production (messages through the broker, history
    in the database), which eager mode would not show.
    """
    with start_worker(
        app,
        pool=pool,
        concurrency=concurrency,
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=30.0,
        **options,
    ) as running:
        yield running
