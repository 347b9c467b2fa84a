"""The dashboard (``contrib.dashboard``) as a Django view, for ``urls.py``.

    # urls.py
    path("romancy/", include("celery_romancy.contrib.django.urls"))

Staff only (``staff_member_required``), and as in the admin: staff with the ``view`` or
``change`` permission on workflow instances see them, those with ``change`` may act
(recorded under their user name). POSTs pass
Django's own CSRF check (``csrf_protect``, with or without the middleware). Settings:
``ROMANCY_DASHBOARD_FLOWER_URL`` (steps link to their task in Flower) and
``ROMANCY_DASHBOARD_READ_ONLY``. For other choices build the view yourself::

    path("ops/", include(dashboard_urls(authorize=my_check, login=login_required)))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import get_token
from django.urls import re_path
from django.views.decorators.csrf import csrf_protect

from ...app import Romancy
from ..dashboard import Authorize, Dashboard, Request
from . import project_romancy

__all__ = ["DjangoCsrf", "dashboard_urls", "dashboard_view", "staff_with_change_permission"]

CHANGE_PERMISSION = "celery_romancy.change_workflowinstance"
VIEW_PERMISSION = "celery_romancy.view_workflowinstance"


class DjangoCsrf:
    """Django's token in the forms; the check itself is ``csrf_protect``'s, done before
    the dashboard sees the POST."""

    field = "csrfmiddlewaretoken"

    def token(self, request: Request) -> tuple[str, list[tuple[str, str]]]:
        return str(get_token(request.native)), []

    def check(self, request: Request) -> bool:
        return True


def staff_with_change_permission(request: Request) -> str | None:
    user = getattr(request.native, "user", None)
    if user is None or not (user.is_active and user.is_staff):
        return None
    return str(user.get_username()) if user.has_perm(CHANGE_PERMISSION) else None


def dashboard_view(
    romancy: Romancy | None = None,
    *,
    flower_url: str | None = None,
    read_only: bool | None = None,
    authorize: Authorize | None = staff_with_change_permission,
    login: Callable[[Any], Any] | None = staff_member_required,
    permission: bool = True,
) -> Callable[..., HttpResponse]:
    """A view for ``re_path(r"^(?P<rest>.*)$", ...)``: ``rest`` is the path below the
    mount point. ``romancy``: default, that of Celery's current app (read at the first
    request); ``flower_url`` and ``read_only``: default, the settings above; ``login``:
    a decorator that lets only signed-in users through; ``permission``: they also need
    the view or change permission on workflow instances (403 otherwise)."""
    built: list[Dashboard] = []

    def dashboard() -> Dashboard:
        if not built:
            built.append(
                Dashboard(
                    romancy or project_romancy(),
                    flower_url=flower_url
                    or getattr(settings, "ROMANCY_DASHBOARD_FLOWER_URL", None),
                    read_only=bool(
                        getattr(settings, "ROMANCY_DASHBOARD_READ_ONLY", False)
                        if read_only is None
                        else read_only
                    ),
                    authorize=authorize,
                    csrf=DjangoCsrf(),
                )
            )
        return built[0]

    def view(request: HttpRequest, rest: str = "") -> HttpResponse:
        user = getattr(request, "user", None)
        if permission and not (
            user is not None
            and (user.has_perm(VIEW_PERMISSION) or user.has_perm(CHANGE_PERMISSION))
        ):
            return HttpResponse(
                b"you may not see workflow instances", status=403, content_type="text/plain"
            )
        path = str(request.path)
        base = path[: len(path) - len(rest)] if rest and path.endswith(rest) else path
        answer = dashboard().handle(
            Request(
                method=str(request.method),
                path="/" + rest,
                base=base.rstrip("/"),
                query={k: request.GET[k] for k in request.GET},
                form={k: request.POST[k] for k in request.POST},
                headers={k.lower(): str(v) for k, v in request.headers.items()},
                cookies=dict(request.COOKIES),
                native=request,
            )
        )
        response = HttpResponse(answer.body, status=answer.status, content_type=answer.content_type)
        for name, value in answer.all_headers():
            if name.lower() not in ("content-type", "content-length"):
                response[name] = value
        return response

    protected: Callable[..., HttpResponse] = csrf_protect(view)
    if login is None:
        return protected
    guarded: Callable[..., HttpResponse] = login(protected)
    return guarded


def dashboard_urls(romancy: Romancy | None = None, **options: Any) -> list[Any]:
    """URL patterns for ``include(...)``: the whole dashboard below one prefix."""
    return [
        re_path(r"^(?P<rest>.*)$", dashboard_view(romancy, **options), name="romancy_dashboard")
    ]
