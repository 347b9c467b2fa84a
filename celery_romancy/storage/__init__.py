"""History storage: one interface (``Store``), one schema, one backend per dialect."""

from __future__ import annotations

import sqlalchemy as sa

from ..errors import ConfigurationError
from .records import (
    STATUSES,
    TERMINAL_STATUSES,
    AttemptRecord,
    ChildIdTakenError,
    ChildStart,
    Claim,
    CommitResult,
    CompensationRecord,
    EventRecord,
    HistoryEvent,
    NewStep,
    OperatorAction,
    OutboxRecord,
    Snapshot,
    StepRecord,
    StepRef,
    StepWrite,
    WorkflowInstance,
)
from .store import Store
from .sweeps import SweptStep

__all__ = [
    "STATUSES",
    "TERMINAL_STATUSES",
    "AttemptRecord",
    "ChildIdTakenError",
    "ChildStart",
    "Claim",
    "CommitResult",
    "CompensationRecord",
    "EventRecord",
    "HistoryEvent",
    "NewStep",
    "OperatorAction",
    "OutboxRecord",
    "Snapshot",
    "StepRecord",
    "StepRef",
    "StepWrite",
    "Store",
    "SweptStep",
    "WorkflowInstance",
    "open_store",
]


def open_store(url: str, prepared_statements: bool = True) -> Store:
    """The backend for a database URL; nothing connects until first use.

    ``prepared_statements``: PostgreSQL prepares its per-step statements (see
    ``storage/prepared.py``); off behind PgBouncer in transaction mode.
    """
    backend = sa.make_url(url).get_backend_name()
    if backend == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(url)
    if backend == "postgresql":
        from .postgres import PostgresStore

        return PostgresStore(url, prepared_statements)
    raise ConfigurationError(
        f"unsupported history database {backend!r}: use postgresql:// or sqlite://"
    )
