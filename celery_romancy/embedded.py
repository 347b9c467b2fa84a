"""The embedded setup: no server to run. SQLite history, a filesystem broker, and a
worker inside the current process. For demos, scripts and tests, not for production.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery import Celery
from celery.contrib.testing.worker import start_worker
from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class AtomicFilesystemChannel(filesystem.Channel):
    """kombu's filesystem channel, with each message written whole before it shows.

    kombu creates a message's file under its final name and then writes it, so a
    consumer polling the same folder can take the file while it is still empty or half
    written: the message fails to decode and is lost. Here it is written under a name
    no consumer takes, then renamed into place (a rename is atomic).
    """

    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        final = Path(self.data_folder_out) / (
            f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        )
        # Starts with "." : ``_get`` takes only names of the form "<id>.<queue>.msg".
        staging = final.with_name(f".{final.name}.writing")
        try:
            staging.write_bytes(str_to_bytes(dumps(payload)))  # type: ignore[no-untyped-call]
            os.replace(staging, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {str(final)!r} to directory") from exc


class AtomicFilesystemTransport(filesystem.Transport):
    Channel = AtomicFilesystemChannel


def embedded_celery(main: str, folder: str | Path) -> Celery:
    """A Celery app whose broker is a folder of files and whose history is a SQLite file."""
    root = Path(folder).resolve()
    messages = root / "broker"
    messages.mkdir(parents=True, exist_ok=True)
    app = Celery(main, broker="filesystem://localhost//")
    app.conf.update(
        broker_transport=f"{__name__}:AtomicFilesystemTransport",
        broker_transport_options={
            "data_folder_in": str(messages),
            "data_folder_out": str(messages),
            "control_folder": str(root / "control"),
            "store_processed": False,
            "polling_interval": 0.05,
        },
        broker_connection_retry_on_startup=True,
        romancy_database_url=f"sqlite:///{root / 'romancy.db'}",
        worker_hijack_root_logger=False,
    )
    return app


@contextmanager
def in_process_worker(
    app: Celery, *, pool: str = "threads", concurrency: int = 2, **options: Any
) -> Iterator[Any]:
    """Run a real Celery worker for ``app`` in a thread while the block runs.

    Messages still go through the broker and every step is recorded in the database,
    exactly as with ``celery worker``; only the process is shared.
    """
    with start_worker(
        app,
        pool=pool,
        concurrency=concurrency,
        perform_ping_check=False,
        loglevel=options.pop("loglevel", "WARNING"),
        shutdown_timeout=30.0,
        **options,
    ) as running:
        yield running
