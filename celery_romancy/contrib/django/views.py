"""A ready-made JSON status view for one workflow instance::

    # urls.py
    from django.urls import path
    from celery_romancy.contrib.django.views import InstanceStatusView

    urlpatterns = [path("sagas/<path:instance_id>", InstanceStatusView.as_view())]

``GET`` answers the instance's ``contrib.status.status_of`` JSON, and 404 with
``{"error": ...}`` for an id that no instance has. The ``Romancy`` is that of Celery's
current app (the one ``proj/celery.py`` creates and ``proj/__init__.py`` imports), or
the one given: ``InstanceStatusView.as_view(romancy=romancy)``.

It shows a workflow's output and errors to whoever reaches it: wrap it in
``login_required``, ``staff_member_required`` or your own check where those are not
public.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views import View

from ...app import Romancy
from ...errors import UnknownInstanceError
from ..status import status_of
from . import project_romancy

__all__ = ["InstanceStatusView"]


class InstanceStatusView(View):  # type: ignore[misc]  # Django ships no type hints
    """GET only: a status view answers, it never acts."""

    romancy: Romancy | None = None

    def get(self, request: HttpRequest, instance_id: str) -> JsonResponse:
        romancy = self.romancy or project_romancy()
        try:
            status: dict[str, Any] = status_of(romancy, instance_id)
        except UnknownInstanceError as exc:
            return JsonResponse({"error": str(exc)}, status=404)
        return JsonResponse(status)
