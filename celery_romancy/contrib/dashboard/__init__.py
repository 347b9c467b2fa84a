"""A web dashboard of workflow instances: a WSGI application.

    from celery_romancy.contrib.dashboard import Dashboard

    application = Dashboard(romancy, flower_url="http://localhost:5555")

Run it alone (``celery -A proj romancy dashboard --port 5557``), in Django
(``path("romancy/", include("celery_romancy.contrib.django.urls"))``), in Flask
(``celery_romancy.contrib.flask.dashboard_blueprint``) or under any WSGI server. The
pages are server-rendered HTML with one small script and one style sheet shipped in
the package: nothing is fetched from elsewhere. See ``app.py`` for the routes.

Actions (cancel, resume, retry the compensation, send an event) need
``authorize=``: a callable given the request that returns who acts (recorded with
the action) or None to refuse; without it, or with ``read_only=True``, there are none.
"""

from __future__ import annotations

from .actions import Authorize
from .app import Dashboard
from .http import Request, Response

__all__ = ["Authorize", "Dashboard", "Request", "Response"]
