"""The app ``celery -A tests.cli_app ...`` loads in the CLI tests (settings from env)."""

from __future__ import annotations

import os
from pathlib import Path

from .cli_flows import build_cli

app, romancy = build_cli(
    os.environ["ROMANCY_TEST_DB"],
    os.environ["ROMANCY_TEST_BROKER"],
    Path(os.environ["ROMANCY_TEST_DIR"]),
    os.environ["ROMANCY_TEST_QUEUE"],
)
