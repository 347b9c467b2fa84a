"""What an activity sees of its run: ``current_activity()``, like Celery's ``current_task``."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import RomancyError
from .serialization import encode
from .validation import MAX_NAME_LENGTH, check_identifier

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session


@dataclass
class ActivityInfo:
    """What an activity may know about its run; see ``current_activity()``.

    ``session`` (SQLAlchemy ORM) and ``connection`` (Core) belong to the transaction that
    records the step: what the activity writes through them commits together with its
    result, exactly once, or not at all.
    """

    instance_id: str
    workflow_name: str
    step_id: str
    attempt: int
    _open_connection: Callable[[], Connection] = field(repr=False)
    _connection: Connection | None = field(default=None, repr=False)
    _session: Session | None = field(default=None, repr=False)
    outbox: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def publish_event(self, event_type: str, data: Any = None) -> None:
        """Publish through the outbox: the row commits with this step's result, or not at
        all if the step fails. Retried attempts reuse the same CloudEvents ids."""
        check_identifier(event_type, "event_type", MAX_NAME_LENGTH)
        number = len(self.outbox) + 1
        self.outbox.append(
            {
                "event_id": f"{self.idempotency_key}:{number}",
                "event_type": event_type,
                "data": encode(data, path=event_type),
            }
        )

    @property
    def idempotency_key(self) -> str:
        """Stable across retries and redeliveries of this step: pass it to external APIs."""
        return f"{self.instance_id}:{self.step_id}"

    @property
    def connection(self) -> Connection:
        if self._connection is None:
            self._connection = self._open_connection()
            self._connection.begin()
        return self._connection

    @property
    def session(self) -> Session:
        if self._session is None:
            from sqlalchemy.orm import Session

            # The step's commit, not the session, ends this transaction.
            self._session = Session(bind=self.connection, join_transaction_mode="rollback_only")
        return self._session

    def recording_connection(self) -> Connection | None:
        """The open transaction to commit the step on, with the session's writes flushed."""
        if self._session is not None:
            self._session.flush()
        return self._connection

    def close(self) -> None:
        """Release the connection; whatever was not committed is rolled back."""
        if self._session is not None:
            self._session.close()
        if self._connection is not None:
            self._connection.close()
        self._session = self._connection = None


_current_activity: ContextVar[ActivityInfo | None] = ContextVar(
    "celery_romancy_activity", default=None
)


def current_activity() -> ActivityInfo:
    """The running activity's ``ActivityInfo``, like Celery's ``current_task``."""
    info = _current_activity.get()
    if info is None:
        raise RomancyError("current_activity() is only available inside a running activity")
    return info
