"""``path("romancy/", include("celery_romancy.contrib.django.urls"))``: the dashboard,
staff only; see ``dashboard.py``."""

from __future__ import annotations

from .dashboard import dashboard_urls

urlpatterns = dashboard_urls()
