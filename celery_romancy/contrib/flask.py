"""Flask integration: the usual ``init_app`` extension.

    romancy_ext = FlaskRomancy(romancy)          # at import, no app needed

    def create_app():
        app = Flask(__name__)
        app.config["ROMANCY_DATABASE_URL"] = "postgresql://shop@db/shop"
        romancy_ext.init_app(app)
        return app

``init_app`` copies the ``ROMANCY_*`` keys of ``app.config`` into the Celery app's
config (``ROMANCY_DATABASE_URL`` -> ``romancy_database_url``), except where the Celery
config already has a value: the Celery app is shared with the workers, whose config
wins. Call it before the first workflow starts. In a view, ``current_romancy()`` is the
``Romancy`` of the current Flask app.

Activities and compensations run inside the application context of the Flask app
given to ``init_app`` (the last one, if several), as tasks do with the ``FlaskTask`` of
Flask's Celery guide: ``current_app``, ``g`` and extensions such as Flask-SQLAlchemy
work in them, and the context's teardown (which ends a Flask-SQLAlchemy session) runs
after each step. For that the worker must create the Flask app too: name a module
that calls ``create_app()`` in ``celery -A``, as the guide does.

``status_blueprint()`` answers ``GET <url_prefix>/<instance id>`` with the
``contrib.status.status_of`` JSON of that instance, or 404::

    app.register_blueprint(status_blueprint(), url_prefix="/sagas")

``dashboard_blueprint(romancy, authorize=...)`` serves the dashboard
(``contrib.dashboard``) under its ``url_prefix``::

    app.register_blueprint(dashboard_blueprint(romancy, authorize=who), url_prefix="/romancy")
"""

from __future__ import annotations

import dataclasses
from typing import Any

from celery import Task, signals
from flask import Blueprint, Flask, Response, current_app, request

from ..app import Romancy
from ..errors import ConfigurationError, UnknownInstanceError
from ..settings import RomancySettings
from .dashboard import Authorize, Dashboard
from .dashboard import Request as DashboardRequest
from .status import status_of

__all__ = [
    "EXTENSION_KEY",
    "FlaskRomancy",
    "current_romancy",
    "dashboard_blueprint",
    "status_blueprint",
]

EXTENSION_KEY = "celery_romancy"
KNOWN_KEYS = frozenset(f"ROMANCY_{f.name.upper()}" for f in dataclasses.fields(RomancySettings))


# Where a step task's request keeps the application context pushed for it.
PUSHED_CONTEXT = "_romancy_flask_context"


class FlaskRomancy:
    def __init__(self, romancy: Romancy | None = None, app: Flask | None = None) -> None:
        self.romancy = romancy
        # The app whose context activities run in: the last one given to init_app.
        self.flask_app: Flask | None = None
        # Weak receivers (bound methods): they go with this extension.
        signals.task_prerun.connect(self._enter_app_context)
        signals.task_postrun.connect(self._leave_app_context)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, romancy: Romancy | None = None) -> None:
        """Bind to ``app``: settings from ``app.config``, itself in ``app.extensions``."""
        romancy = romancy or self.romancy
        if romancy is None:
            raise ConfigurationError(
                "FlaskRomancy needs a Romancy: FlaskRomancy(romancy) or init_app(app, romancy)"
            )
        self.romancy = romancy
        unknown = sorted(k for k in app.config if k.startswith("ROMANCY_") and k not in KNOWN_KEYS)
        if unknown:
            raise ConfigurationError(
                f"unknown settings {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_KEYS))}"
            )
        conf = romancy.app.conf
        for key in sorted(KNOWN_KEYS & set(app.config)):
            name = key.lower()
            if app.config[key] is not None and conf.get(name) is None:
                conf[name] = app.config[key]
        app.extensions[EXTENSION_KEY] = self
        self.flask_app = app

    def _runs_a_step(self, task: Task) -> bool:
        """``task`` runs an activity or a compensation of this extension's Romancy."""
        romancy = self.romancy
        if romancy is None or task.app is not romancy.app:
            return False
        registry = romancy.registry
        return task.name in registry.activities or task.name in registry.compensations

    def _enter_app_context(self, task: Task | None = None, **_: Any) -> None:
        flask_app = self.flask_app
        if task is None or flask_app is None or not self._runs_a_step(task):
            return
        context = flask_app.app_context()
        context.push()
        # The request is this task call's own (per thread), from prerun to postrun.
        setattr(task.request, PUSHED_CONTEXT, context)

    def _leave_app_context(self, task: Task | None = None, **_: Any) -> None:
        if task is None:
            return
        context = getattr(task.request, PUSHED_CONTEXT, None)
        if context is not None:
            delattr(task.request, PUSHED_CONTEXT)
            context.pop()


def current_romancy() -> Romancy:
    """The ``Romancy`` bound to the current Flask app (in a request or app context)."""
    extension = current_app.extensions.get(EXTENSION_KEY)
    if not isinstance(extension, FlaskRomancy) or extension.romancy is None:
        raise ConfigurationError("FlaskRomancy.init_app(app) was not called for this app")
    return extension.romancy


def status_blueprint(romancy: Romancy | None = None, name: str = "romancy_status") -> Blueprint:
    """A blueprint answering ``GET /<instance id>`` (under its ``url_prefix``) with the
    instance's ``status_of`` JSON, and 404 with ``{"error": ...}`` for an id that no
    instance has. ``romancy``: default, the current app's (``current_romancy()``).

    It shows a workflow's output and errors to whoever reaches it: register it behind
    your own authentication where those are not public."""
    blueprint = Blueprint(name, __name__)

    @blueprint.get("/<path:instance_id>")
    def instance_status(instance_id: str) -> tuple[dict[str, Any], int]:
        try:
            return status_of(romancy or current_romancy(), instance_id), 200
        except UnknownInstanceError as exc:
            return {"error": str(exc)}, 404

    return blueprint


def dashboard_blueprint(
    romancy: Romancy | None = None,
    *,
    flower_url: str | None = None,
    read_only: bool = False,
    authorize: Authorize | None = None,
    secret: bytes | None = None,
    name: str = "romancy_dashboard",
) -> Blueprint:
    """The dashboard as a blueprint: register it with a ``url_prefix``. ``romancy``:
    default, the current app's (``current_romancy()``). Actions need ``authorize``
    (given the dashboard's ``Request``, whose ``native`` is Flask's request: return who
    acts, or None); POSTs carry the dashboard's own CSRF token (``secret``: give the
    same to every process). It shows workflows' data to whoever reaches it: register
    it behind your own authentication."""
    blueprint = Blueprint(name, __name__)
    built: list[Dashboard] = []

    def dashboard() -> Dashboard:
        if not built:
            built.append(
                Dashboard(
                    romancy or current_romancy(),
                    flower_url=flower_url,
                    read_only=read_only,
                    authorize=authorize,
                    secret=secret,
                )
            )
        return built[0]

    @blueprint.route("/", defaults={"rest": ""}, methods=["GET", "POST"])
    @blueprint.route("/<path:rest>", methods=["GET", "POST"])
    def serve(rest: str) -> Response:
        path = request.path
        base = path[: len(path) - len(rest)] if rest and path.endswith(rest) else path
        answer = dashboard().handle(
            DashboardRequest(
                method=request.method,
                path="/" + rest,
                base=(request.script_root + base).rstrip("/"),
                query=request.args.to_dict(flat=True),
                form=request.form.to_dict(flat=True),
                headers={k.lower(): v for k, v in request.headers.items()},
                cookies=request.cookies.to_dict(flat=True),
                native=request,
            )
        )
        response = Response(answer.body, status=answer.status, content_type=answer.content_type)
        for header, value in answer.all_headers():
            if header.lower() not in ("content-type", "content-length"):
                response.headers.add(header, value)
        return response

    return blueprint
