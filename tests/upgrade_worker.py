"""The app a ``celery -A tests.upgrade_worker worker`` subprocess runs: the release of
the order workflow that ``ROMANCY_TEST_RELEASE`` names (see ``upgrade_flows.py``)."""

from __future__ import annotations

import os
from pathlib import Path

from .upgrade_flows import build_release

app, romancy = build_release(
    os.environ["ROMANCY_TEST_RELEASE"],
    os.environ["ROMANCY_TEST_DB"],
    os.environ["ROMANCY_TEST_BROKER"],
    Path(os.environ["ROMANCY_TEST_DIR"]),
    os.environ["ROMANCY_TEST_QUEUE"],
)
