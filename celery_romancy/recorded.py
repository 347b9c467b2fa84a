"""Rows a replay records on its own, without a step: compensation registrations
(``ctx.register_compensation``), outbox rows (``ctx.publish_event``), business keys
(``ctx.set_search_attributes``); they commit with whatever the replay decides next."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import InvalidArgumentsError
from .states import HistoryKind
from .storage import CompensationRecord, HistoryEvent, StepWrite
from .storage.schema import utcnow
from .validation import MAX_ID_LENGTH, MAX_NAME_LENGTH, check_identifier, shorten

# romancy_search: key String(100), value String(200).
MAX_SEARCH_KEY_LENGTH = MAX_ID_LENGTH
MAX_SEARCH_VALUE_LENGTH = MAX_NAME_LENGTH
SEARCH_ATTRIBUTES = "search_attributes"  # the name of their history rows


def checked_search(mapping: object, what: str = "search") -> dict[str, str]:
    """Business keys as given (a mapping of str to str), checked as the search table
    stores them: keys and values 1 to 100 and 200 characters without control
    characters; else ``InvalidArgumentsError`` naming ``what``."""
    if not isinstance(mapping, Mapping):
        raise InvalidArgumentsError(
            f"{what} must be a mapping of str to str, not {type(mapping).__name__}"
        )
    checked: dict[str, str] = {}
    for key, value in mapping.items():
        check_identifier(key, f"a {what} key", MAX_SEARCH_KEY_LENGTH)
        check_identifier(value, f"{what}[{shorten(key)}]", MAX_SEARCH_VALUE_LENGTH)
        checked[key] = value
    return checked


def search_event(seq: int, step_id: str, values: dict[str, str]) -> HistoryEvent:
    """The record of ``ctx.set_search_attributes``: written to the search table with
    the commit that records it (``storage.rows.search_values``), once."""
    return HistoryEvent(
        seq=seq,
        step_id=step_id,
        kind=HistoryKind.SEARCH_ATTRIBUTES,
        name=SEARCH_ATTRIBUTES,
        result=values,
    )


def registration(
    seq: int, step_id: str, name: str, arguments: dict[str, Any], kind: str = "activity"
) -> CompensationRecord:
    """A compensation to run if the workflow rolls back; ``kind="child"`` undoes a child
    workflow (``arguments["instance_id"]``) instead of running a task."""
    return CompensationRecord(
        seq=seq,
        step_id=step_id,
        name=name,
        arguments=arguments,
        status="registered",
        error=None,
        attempts=0,
        created_at=utcnow(),
        finished_at=None,
        kind=kind,
    )


def recorded_rows(events: list[HistoryEvent]) -> StepWrite:
    """The rows to commit for events a replay recorded on its own: the events, and the
    compensations (``ctx.register_compensation``) and outbox rows (``ctx.publish_event``)
    they stand for. Business keys (``ctx.set_search_attributes``) are written from the
    events themselves, whichever commit carries them (``storage.rows.search_values``)."""
    return StepWrite(
        events=list(events),
        registrations=[
            registration(e.seq, e.step_id, e.name, e.result)
            for e in events
            if e.kind == HistoryKind.COMPENSATION_REGISTERED
        ],
        outbox=[
            {"event_id": e.result["event_id"], "event_type": e.name, "data": e.result["data"]}
            for e in events
            if e.kind == HistoryKind.EVENT_PUBLISHED
        ],
    )
