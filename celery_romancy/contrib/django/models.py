"""The admin's stand-in for workflow instances: a model with no table of its own.

The history is written by SQLAlchemy, in Django's database or in another one
(``CELERY_ROMANCY_DATABASE_URL``), so the admin (``admin.py``) reads and acts through the
``Romancy`` API and never queries this model. It exists for what Django hangs on a
model: the admin index entry, the URLs (``admin:celery_romancy_workflowinstance_...``),
the ``view`` and ``change`` permissions staff users are given, and admin log entries.
"""

from __future__ import annotations

from django.db import models


class WorkflowInstance(models.Model):  # type: ignore[misc]  # Django ships no type hints
    instance_id = models.CharField(max_length=100, primary_key=True)

    class Meta:
        managed = False  # no migration creates or touches a table for it
        verbose_name = "workflow instance"
        verbose_name_plural = "workflow instances"
        # "change" allows the operator actions (cancel, resume, retry compensation).
        default_permissions = ("view", "change")

    def __str__(self) -> str:
        return str(self.instance_id)
