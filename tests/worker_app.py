"""The app a ``celery -A tests.worker_app worker`` subprocess runs (settings from env)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .flows import build

app, romancy = build(
    os.environ["ROMANCY_TEST_DB"],
    os.environ["ROMANCY_TEST_BROKER"],
    Path(os.environ["ROMANCY_TEST_DIR"]),
    os.environ["ROMANCY_TEST_QUEUE"],
    **json.loads(os.environ.get("ROMANCY_TEST_CONF", "{}")),
)
