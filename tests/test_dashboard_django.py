"""The dashboard in Django: ``tests/django_project/dashboard_checks.py`` run in a pytest
process of its own (as ``test_django_admin.py`` runs the admin's), with the history in
Django's own SQLite database and a real worker. Each run must pass every check by name."""

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
CHECKS = {
    "test_only_staff_with_permission_see_it_and_only_change_acts",
    "test_an_operator_acts_with_djangos_csrf_token_and_is_recorded",
}


def test_the_dashboard_in_django(tmp_path: Path) -> None:
    queue = f"romancy-dashboard-{uuid.uuid4().hex[:10]}"
    flags = tmp_path / "flags"
    flags.mkdir()
    env = {
        **os.environ,
        "SHOP_SQLITE_PATH": str(tmp_path / "shop.sqlite3"),
        "SHOP_BROKER_URL": REDIS_URL,
        "SHOP_QUEUE": queue,
        "SHOP_FLAGS_DIR": str(flags),
        "DJANGO_SETTINGS_MODULE": "proj.settings",
        "PYTHONPATH": f"{PROJECT}{os.pathsep}{ROOT}",
    }
    env.pop("SHOP_HISTORY_URL", None)
    report = tmp_path / "dashboard-checks.xml"
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-n",  # one process: the checks share one Django database
                "0",
                f"--confcutdir={PROJECT}",
                f"--junitxml={report}",
                f"--basetemp={tmp_path / 'checks'}",
                "dashboard_checks.py",
            ],
            cwd=PROJECT,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
    finally:
        redis_client().delete(queue)
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-5000:]
    passed = {
        case.get("name", "")
        for case in ET.parse(report).getroot().iter("testcase")
        if not any(child.tag in ("failure", "error", "skipped") for child in case)
    }
    assert passed == CHECKS
