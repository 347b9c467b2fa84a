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
"""

from __future__ import annotations

import dataclasses

from flask import Flask, current_app

from ..app import Romancy
from ..errors import ConfigurationError
from ..settings import RomancySettings

__all__ = ["EXTENSION_KEY", "FlaskRomancy", "current_romancy"]

EXTENSION_KEY = "celery_romancy"
KNOWN_KEYS = frozenset(f"ROMANCY_{f.name.upper()}" for f in dataclasses.fields(RomancySettings))


class FlaskRomancy:
    def __init__(self, romancy: Romancy | None = None, app: Flask | None = None) -> None:
        self.romancy = romancy
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


def current_romancy() -> Romancy:
    """The ``Romancy`` bound to the current Flask app (in a request or app context)."""
    extension = current_app.extensions.get(EXTENSION_KEY)
    if not isinstance(extension, FlaskRomancy) or extension.romancy is None:
        raise ConfigurationError("FlaskRomancy.init_app(app) was not called for this app")
    return extension.romancy
