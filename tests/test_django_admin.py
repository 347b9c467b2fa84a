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

from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery, current_app

from celery_romancy import ConfigurationError
from celery_romancy.contrib.django import project_romancy

from .django_checks import run_django_checks
from .services import create_pg_database, drop_pg_database

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


def test_the_admin_with_the_history_in_djangos_own_sqlite_database(tmp_path: Path) -> None:
    assert run_django_checks("admin_checks.py", tmp_path) == CHECKS


def test_the_admin_with_the_history_in_another_postgresql_database(
    tmp_path: Path, other_database: str
) -> None:
    assert run_django_checks("admin_checks.py", tmp_path, other_database) == CHECKS


def test_the_admin_says_when_no_romancy_is_bound_to_the_project_app() -> None:
    previous = current_app._get_current_object()
    bare = Celery("proj_without_romancy", set_as_current=True)
    try:
        with pytest.raises(ConfigurationError, match="proj_without_romancy"):
            project_romancy()
    finally:
        previous.set_current()
        bare.close()
