"""One settings object, read from Celery's config (``romancy_*`` keys) when first needed."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, fields
from typing import Any

import sqlalchemy as sa

from .errors import ConfigurationError

DEFAULT_DATABASE_URL = "sqlite:///romancy.db"


# Settings where a None set in the Celery config is a choice, not "use the default".
_NONE_MEANS_SOMETHING = frozenset({"maintenance_queue"})


@dataclass(frozen=True)
class RomancySettings:
    """Every knob, with its default; the Celery key is ``romancy_<field name>``."""

    database_url: str = DEFAULT_DATABASE_URL
    worker_id: str | None = None
    lease_timeout: float = 300.0
    recovery_interval: float = 60.0
    # A dispatched step nobody picked up for this long is presumed lost and re-sent.
    dispatch_timeout: float = 300.0
    # A step whose worker died this many times in a row parks the instance.
    max_step_crashes: int = 5
    timer_interval: float = 10.0
    # The process that commits outbox rows publishes them right after the commit; beat's
    # relay is only the fallback for rows a crash or a broker outage left behind (and
    # rows whose relayer died while it held them), so it runs seldom.
    outbox_interval: float = 60.0
    # Where the outbox relay publishes (a topic exchange; routing key = event type).
    outbox_exchange: str = "romancy.events"
    outbox_source: str = "celery-romancy"
    # Queue for the beat jobs (romancy.recover, romancy.fire_timers, romancy.relay_outbox):
    # a queue of their own keeps them clear of a backlog of steps. Every worker of the app
    # consumes it, whatever its -Q (tasks.worker_startup_step adds it), so it is never
    # left unconsumed. None: Celery's default queue.
    maintenance_queue: str | None = "romancy.maintenance"  # None set in the config counts
    # A worker refuses to start while the app accepts pickle or YAML messages (see
    # tasks.refuse_unsafe_content); True accepts that risk knowingly.
    allow_unsafe_content: bool = False
    # PostgreSQL: prepare the per-step statements once per connection. Turn off behind
    # PgBouncer in transaction mode, which moves a session between server connections.
    prepared_statements: bool = True
    # The largest JSON form (UTF-8 bytes) accepted for a value the caller hands in to be
    # stored: a workflow's input, an event's data.
    max_payload_bytes: int = 1 << 20
    # Events older than this (seconds) are purged, consumed or not: an event nobody
    # waits for is not kept forever. Also how long a CloudEvent's redelivery is a duplicate.
    event_retention: float = 7 * 24 * 3600.0
    # Finished instances (completed, failed, cancelled, compensated, continued) that
    # ended longer ago than this (seconds) are purged with all their rows, by the beat
    # job romancy.purge that runs every purge_interval seconds (see retention.py).
    retention: float = 30 * 24 * 3600.0
    purge_interval: float = 24 * 3600.0

    def __repr__(self) -> str:
        # Settings end up in logs and tracebacks: never with the database password.
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["database_url"] = masked_url(self.database_url)
        return f"RomancySettings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @classmethod
    def from_celery(cls, conf: Any, **overrides: Any) -> RomancySettings:
        """Defaults, then the app's ``romancy_*`` config, then explicit non-None overrides."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = f"romancy_{f.name}"
            configured = conf.get(key)
            if configured is not None or (f.name in _NONE_MEANS_SOMETHING and key in conf):
                values[f.name] = configured
            if overrides.get(f.name) is not None:
                values[f.name] = overrides[f.name]
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        numbers = (
            "lease_timeout",
            "recovery_interval",
            "dispatch_timeout",
            "max_step_crashes",
            "timer_interval",
            "outbox_interval",
            "max_payload_bytes",
            "event_retention",
            "retention",
            "purge_interval",
        )
        for name in numbers:
            value = getattr(self, name)
            if not isinstance(value, int | float) or value <= 0:
                raise ConfigurationError(f"romancy_{name} must be a positive number, not {value!r}")
        queue = self.maintenance_queue
        if queue is not None and (not isinstance(queue, str) or not queue.strip()):
            raise ConfigurationError(
                f"romancy_maintenance_queue must be a queue name or None, not {queue!r}"
            )
        for name in ("prepared_statements", "allow_unsafe_content"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigurationError(
                    f"romancy_{name} must be True or False, not {getattr(self, name)!r}"
                )
        self._validate_database_url()

    def _validate_database_url(self) -> None:
        url = self.database_url
        if not isinstance(url, str) or "://" not in url:
            shown = masked_url(url) if isinstance(url, str) else f"a {type(url).__name__}"
            raise ConfigurationError(f"romancy_database_url must be a database URL, not {shown!r}")
        try:
            sa.make_url(url)
        except (sa.exc.ArgumentError, ValueError) as exc:
            # SQLAlchemy's message never holds the URL; ours must not hold its password.
            raise ConfigurationError(
                f"romancy_database_url {masked_url(url)!r} is not a valid database URL: {exc}"
            ) from None

    def resolved_worker_id(self) -> str:
        """The lease holder's name; read per process, as prefork children differ in pid."""
        return self.worker_id or f"{socket.gethostname()}:{os.getpid()}"


# A password passed as a query parameter (libpq accepts ``?password=``).
_QUERY_PASSWORD = re.compile(r"(?P<key>[?&]password=)[^&]*", re.IGNORECASE)


def masked_url(url: str) -> str:
    """A database URL fit for a log line or an error message: any password is ``***``.

    Done on the text, not with SQLAlchemy, so that a URL SQLAlchemy cannot parse is
    masked too, and a password holding an unescaped ``@`` is hidden whole (SQLAlchemy
    cuts it at the first ``@`` and shows the rest as the host). Where the text is
    ambiguous it hides too much rather than too little.
    """
    scheme, separator, rest = url.partition("://")
    head, body = (scheme + separator, rest) if separator else ("", url)
    userinfo, at, host = body.rpartition("@")
    if at and ":" in userinfo and not userinfo.startswith("/"):  # "/": a SQLite path
        body = f"{userinfo.partition(':')[0]}:***@{host}"
    return _QUERY_PASSWORD.sub(r"\g<key>***", head + body)
