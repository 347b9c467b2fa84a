"""``python manage.py romancy_migrate``: create or upgrade the workflow history tables.

Which database: ``--database-url``; else the one of the ``Romancy`` bound to the
project's Celery app (the app ``proj/__init__.py`` imports, as Celery's Django guide
sets up); else ``CELERY_ROMANCY_DATABASE_URL``; else ``DATABASES[--database]``.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from celery import current_app
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from celery_romancy import Romancy, RomancyError
from celery_romancy.contrib.django import database_url_from_django
from celery_romancy.settings import masked_url
from celery_romancy.storage import open_store
from celery_romancy.storage.migrate import current_revision


class Command(BaseCommand):  # type: ignore[misc]  # Django ships no type hints
    help = "Create or upgrade the celery_romancy workflow history tables."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--database-url", help="the history database, as a SQLAlchemy URL")
        parser.add_argument(
            "--database",
            default="default",
            help="the Django database to use when no history database is configured",
        )

    def handle(self, *args: Any, database_url: str | None, database: str, **options: Any) -> None:
        try:
            url = database_url or self._configured_url(database)
            store = open_store(url)
            try:
                with store.engine.connect() as conn:  # opening the engine migrates
                    revision = current_revision(conn)
            finally:
                store.dispose()
        except (RomancyError, sa.exc.SQLAlchemyError) as exc:
            raise CommandError(str(exc)) from exc
        shown = masked_url(url)
        self.stdout.write(f"history schema at revision {revision} ({shown})")

    def _configured_url(self, alias: str) -> str:
        app = current_app._get_current_object()
        app.loader.import_default_modules()  # autodiscovered modules may create the Romancy
        romancy = getattr(app, "_celery_romancy", None)
        if isinstance(romancy, Romancy):
            return romancy.settings.database_url
        configured = getattr(settings, "CELERY_ROMANCY_DATABASE_URL", None)
        return configured or database_url_from_django(alias)
