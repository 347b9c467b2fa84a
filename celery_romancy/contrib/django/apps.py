"""The Django app config: no models, only the ``romancy_migrate`` command."""

from __future__ import annotations

from django.apps import AppConfig


class RomancyConfig(AppConfig):  # type: ignore[misc]  # Django ships no type hints
    name = "celery_romancy.contrib.django"
    label = "celery_romancy"
    verbose_name = "Celery Romancy"
