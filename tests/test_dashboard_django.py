"""The dashboard in Django: ``tests/django_project/dashboard_checks.py`` run in a pytest
process of its own (as ``test_django_admin.py`` runs the admin's), with the history in
Django's own SQLite database and a real worker. Each run must pass every check by name."""

from __future__ import annotations

from pathlib import Path

from .django_checks import run_django_checks

CHECKS = {
    "test_only_staff_with_permission_see_it_and_only_change_acts",
    "test_an_operator_acts_with_djangos_csrf_token_and_is_recorded",
}


def test_the_dashboard_in_django(tmp_path: Path) -> None:
    assert run_django_checks("dashboard_checks.py", tmp_path, timeout=240) == CHECKS
