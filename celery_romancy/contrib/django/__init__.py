"""Django integration; add ``"celery_romancy.contrib.django"`` to ``INSTALLED_APPS``.

- ``DjangoRomancy(app)``: a ``Romancy`` whose history database defaults to Django's
  own (``DATABASES["default"]``), read when first needed, so a test run that swaps in
  a test database gets its history there too. The other settings come from the Celery
  app's config as usual; with ``app.config_from_object("django.conf:settings",
  namespace="CELERY")`` that is ``CELERY_ROMANCY_DATABASE_URL`` and friends.
- ``start_workflow_on_commit(...)``: start a workflow when the view's transaction
  commits, and not at all when it rolls back.
- ``python manage.py romancy_migrate``: create or upgrade the history tables.
- The admin (with ``django.contrib.admin`` installed): workflow instances, read-only,
  with the actions cancel, resume and retry compensation; see ``admin.py``.
- ``project_romancy()``: the ``Romancy`` of the project's Celery app, as the admin finds it.

Activities that use the Django ORM run in Celery workers, where Celery's Django fixup
(active when ``DJANGO_SETTINGS_MODULE`` is set) closes stale connections around every
task, and every step is a task.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import sqlalchemy as sa
from celery import Celery, current_app
from django.db import connections, transaction

from ...app import Romancy
from ...definitions import WorkflowDefinition
from ...errors import ConfigurationError
from ...settings import RomancySettings

__all__ = [
    "DjangoRomancy",
    "database_url_from_django",
    "project_romancy",
    "sqlalchemy_url",
    "start_workflow_on_commit",
]

POSTGRES_ENGINES = ("django.db.backends.postgresql", "django.contrib.gis.db.backends.postgis")
SQLITE_ENGINES = ("django.db.backends.sqlite3", "django.contrib.gis.db.backends.spatialite")
# libpq connection parameters worth carrying over from DATABASES[...]["OPTIONS"].
LIBPQ_OPTIONS = frozenset(
    {
        "sslmode",
        "sslcert",
        "sslkey",
        "sslrootcert",
        "connect_timeout",
        "application_name",
        "options",
        "target_session_attrs",
        "service",
        "passfile",
    }
)


def database_url_from_django(alias: str = "default") -> str:
    """The SQLAlchemy URL of a Django database (PostgreSQL or SQLite)."""
    # The connection's settings: during a Django test run, those of the test database.
    return sqlalchemy_url(connections[alias].settings_dict, alias)


def sqlalchemy_url(entry: Mapping[str, Any], alias: str = "default") -> str:
    """A ``DATABASES`` entry as a SQLAlchemy URL (PostgreSQL or SQLite)."""
    engine = entry.get("ENGINE", "")
    if engine in POSTGRES_ENGINES:
        host = entry.get("HOST") or None
        query = {
            key: str(value)
            for key, value in (entry.get("OPTIONS") or {}).items()
            if key in LIBPQ_OPTIONS and isinstance(value, str | int)
        }
        if host and host.startswith("/"):  # a Unix socket directory
            query["host"], host = host, None
        url = sa.URL.create(
            "postgresql",
            username=entry.get("USER") or None,
            password=entry.get("PASSWORD") or None,
            host=host,
            port=int(entry["PORT"]) if entry.get("PORT") else None,
            database=entry.get("NAME") or None,
            query=query,
        )
        return url.render_as_string(hide_password=False)
    if engine in SQLITE_ENGINES:
        name = entry.get("NAME")
        path = str(name) if isinstance(name, str | PurePath) else ""
        if not path or path == ":memory:" or "mode=memory" in path:
            raise ConfigurationError(
                f"Django database {alias!r} is an in-memory SQLite database, which a Celery "
                "worker cannot share: set CELERY_ROMANCY_DATABASE_URL"
            )
        return f"sqlite:///{path}"
    raise ConfigurationError(
        f"cannot keep workflow history in Django database {alias!r} ({engine}): use "
        "PostgreSQL or SQLite, or set CELERY_ROMANCY_DATABASE_URL"
    )


class DjangoRomancy(Romancy):
    """``Romancy`` whose ``database_url`` falls back to a Django database.

    Order: the ``database_url`` argument, then the app's ``romancy_database_url``
    (``CELERY_ROMANCY_DATABASE_URL``), then ``DATABASES[database_alias]``.
    """

    def __init__(
        self,
        celery_app: Celery,
        database_url: str | None = None,
        worker_id: str | None = None,
        *,
        database_alias: str = "default",
        **settings: Any,
    ) -> None:
        # Set before Romancy.__init__, which may already read the settings.
        self.database_alias = database_alias
        self._given_url = database_url
        self._given = {"worker_id": worker_id, **settings}
        self._resolved: RomancySettings | None = None
        super().__init__(celery_app, database_url, worker_id, **settings)

    @property
    def settings(self) -> RomancySettings:
        if self._resolved is None:
            url = (
                self._given_url
                or self.app.conf.get("romancy_database_url")
                or database_url_from_django(self.database_alias)
            )
            self._resolved = RomancySettings.from_celery(
                self.app.conf, **self._given, database_url=url
            )
        return self._resolved


def project_romancy() -> Romancy:
    """The ``Romancy`` bound to the project's Celery app: the app ``proj/__init__.py``
    imports, as Celery's Django guide sets it up.

    The modules Celery autodiscovers (each app's ``tasks.py``) are imported first, as a
    worker does: the ``Romancy`` may be created there, and its workflows must be
    registered for ``resume`` to replay them.
    """
    app = current_app._get_current_object()
    app.loader.import_default_modules()
    found = getattr(app, "_celery_romancy", None)
    if not isinstance(found, Romancy):
        raise ConfigurationError(
            f"no Romancy is bound to the Celery app {app.main!r}: import the project's Celery "
            "app in proj/__init__.py (Celery's Django guide) and create DjangoRomancy(app) "
            "in that module or one it imports"
        )
    return found


def start_workflow_on_commit(
    romancy: Romancy,
    workflow: WorkflowDefinition[Any, Any] | str,
    /,
    *args: Any,
    instance_id: str | None = None,
    using: str | None = None,
    **kwargs: Any,
) -> str:
    """Start ``workflow`` once the current transaction on ``using`` commits.

    The arguments are checked and converted to JSON now, so bad input raises here, in
    the view; the workflow starts from that snapshot after the commit, and never if the
    transaction rolls back. Returns the instance id at once (chosen now unless given),
    so it can be saved in the same transaction. Outside a transaction it starts at once.
    """
    prepared = romancy.prepare_start(workflow, *args, instance_id=instance_id, **kwargs)
    transaction.on_commit(functools.partial(romancy.start_prepared, prepared), using=using)
    return prepared.instance_id
