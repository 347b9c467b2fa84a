"""Rows a replay records on its own, without a step: compensation registrations
(``ctx.register_compensation``), outbox rows (``ctx.publish_event``); they commit with
whatever the replay decides next."""

from __future__ import annotations

from typing import Any

from .states import HistoryKind
from .storage import CompensationRecord, HistoryEvent, StepWrite
from .storage.schema import utcnow


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
    they stand for."""
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
