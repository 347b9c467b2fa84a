"""The Django admin's workflow instances (``celery_romancy.contrib.django.admin``): a
staff user with Django's test client, a real worker, and the history in Django's own
database or in another one.

Django is set up once per process, and the other Django tests (``test_django.py``) use
the example project's settings in this one; so the admin's checks
(``tests/django_project/admin_checks.py``) run in a pytest process of their own, with
the project in ``tests/django_project`` (docs/integrations.md's layout, with the admin
installed). Each run must pass every check by name.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery, current_app

from celery_romancy import ConfigurationError
from celery_romancy.contrib.django import project_romancy

from .processes import ROOT
from .services import REDIS_URL, create_pg_database, drop_pg_database, redis_client

PROJECT = ROOT / "tests" / "django_project"
CHECKS = {
    "test_only_staff_with_permission_see_the_instances_and_only_change_acts",
    "test_the_list_filters_by_status_workflow_and_date",
    "test_the_list_searches_by_id_and_business_key",
    "test_the_list_pages_newest_first",
    "test_the_detail_page_shows_history_attempts_compensations_and_aware_times",
    "test_the_detail_page_links_children_and_parent",
    "test_the_short_url_leads_to_the_page_and_an_unknown_id_to_the_list",
    "test_cancel_from_the_list_rolls_the_instances_back",
    "test_cancel_from_the_detail_page_keeps_the_reason",
    "test_resume_sends_a_lost_step_again",
    "test_retry_compensation_finishes_a_parked_rollback",
    "test_the_history_database_is_the_configured_one",
}


@pytest.fixture
def other_database() -> Iterator[str]:
    """A PostgreSQL database of its own: Django's stays SQLite."""
    url = create_pg_database()
    yield url
    drop_pg_database(url)


def run_admin_checks(folder: Path, history_url: str | None = None) -> set[str]:
    """Run the admin's checks; return the names of those that passed."""
    queue = f"romancy-admin-{uuid.uuid4().hex[:10]}"
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
    report = folder / "admin-checks.xml"
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
                "admin_checks.py",
            ],
            cwd=PROJECT,
            env=env,
            capture_output=True,
            text=True,
            timeout=280,
            check=False,
        )
    finally:
        redis_client().delete(queue)
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-5000:]
    cases = ET.parse(report).getroot().iter("testcase")
    return {
        case.get("name", "")
        for case in cases
        if not any(child.tag in ("failure", "error", "skipped") for child in case)
    }


def test_the_admin_with_the_history_in_djangos_own_sqlite_database(tmp_path: Path) -> None:
    assert run_admin_checks(tmp_path) == CHECKS


def test_the_admin_with_the_history_in_another_postgresql_database(
    tmp_path: Path, other_database: str
) -> None:
    assert run_admin_checks(tmp_path, other_database) == CHECKS


def test_the_admin_says_when_no_romancy_is_bound_to_the_project_app() -> None:
    previous = current_app._get_current_object()
    bare = Celery("proj_without_romancy", set_as_current=True)
    try:
        with pytest.raises(ConfigurationError, match="proj_without_romancy"):
            project_romancy()
    finally:
        previous.set_current()
        bare.close()
