"""The Django app config: the ``romancy_migrate`` command and a read-only admin for
workflow instances (``admin.py``; its model has no table, see ``models.py``)."""

from __future__ import annotations

from django.apps import AppConfig


class RomancyConfig(AppConfig):  # type: ignore[misc]  # Django ships no type hints
    name = "celery_romancy.contrib.django"
    label = "celery_romancy"
    verbose_name = "Celery Romancy"
