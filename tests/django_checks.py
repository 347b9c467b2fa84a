"""Run one of ``tests/django_project``'s check modules in a pytest process of its own.

Django is set up once per process, and the other Django tests (``test_django.py``) use
the example project's settings in this one; so the admin's and the dashboard's checks
run with the project in ``tests/django_project``, a real worker, and a queue of their
own. Returns the names of the checks that passed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

from .processes import ROOT
from .services import REDIS_URL, redis_client

PROJECT = ROOT / "tests" / "django_project"


def run_django_checks(
    module: str, folder: Path, history_url: str | None = None, timeout: float = 280
) -> set[str]:
    """Run ``module`` (e.g. ``admin_checks.py``); the history in Django's own SQLite
    database, or at ``history_url``."""
    queue = f"romancy-django-{uuid.uuid4().hex[:10]}"
    flags = folder / "flags"
    flags.mkdir()
    env = {
        **os.environ,
        "SHOP_SQLITE_PATH": str(folder / "shop.sqlite3"),
        "SHOP_BROKER_URL": REDIS_URL,
        "SHOP_QUEUE": queue,
        "SHOP_FLAGS_DIR": str(flags),
        "DJANGO_SETTINGS_MODULE": "proj.settings",
        "PYTHONPATH": f"{PROJECT}{os.pathsep}{ROOT}",
    }
    env.pop("SHOP_HISTORY_URL", None)
    if history_url is not None:
        env["SHOP_HISTORY_URL"] = history_url
    report = folder / "checks.xml"
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-n",  # one process: the checks share one Django database
                "0",
                f"--confcutdir={PROJECT}",  # not this suite's conftest: none of its fixtures
                f"--junitxml={report}",
                f"--basetemp={folder / 'checks'}",
                module,
            ],
            cwd=PROJECT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    finally:
        redis_client().delete(queue)
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-5000:]
    return {
        case.get("name", "")
        for case in ET.parse(report).getroot().iter("testcase")
        if not any(child.tag in ("failure", "error", "skipped") for child in case)
    }
