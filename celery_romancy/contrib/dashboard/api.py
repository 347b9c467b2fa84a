"""The JSON the API answers (``/api/...``): the list page's and the instance page's
data, for scripts and for the pages' own refresh. Times are ISO 8601 in UTC,
durations in seconds."""

from __future__ import annotations

import dataclasses
from typing import Any

from ...inspection import InstanceRecord
from ..status import instance_status
from .listing import COUNT_CAP, Page, Row
from .timeline import timeline, undo_path


def page_json(page: Page) -> dict[str, Any]:
    """``GET /api/instances``: ``instances`` (newest first) and ``next``, the cursor
    of the following page (pass it as ``after=``; None on the last page)."""
    return {"instances": [row_json(row) for row in page.rows], "next": page.next_cursor}


def counts_json(counts: dict[str, int]) -> dict[str, Any]:
    """``GET /api/counts``: instances per status (none: left out); a count equal to
    ``cap`` means at least that many."""
    return {"counts": counts, "cap": COUNT_CAP}


def row_json(row: Row) -> dict[str, Any]:
    return {
        **instance_status(row.instance),
        "duration": round(row.duration, 3),
        "current_step": row.current_step,
    }


def instance_json(record: InstanceRecord) -> dict[str, Any]:
    """``GET /api/instances/<id>``: the instance (its input, output and error with the
    traceback), business keys, ``steps`` (the timeline: a gather's ``branches`` inside
    it, operator actions in their place), ``compensations`` (the undo path, newest
    first, with ``state``, ``task_id`` and ``failed_attempts``), child workflows,
    outbox events and operator actions."""
    instance = record.instance
    return {
        "instance": {
            **dataclasses.asdict(instance),
            "finished": instance.is_terminal,
            "created_at": instance.created_at.isoformat(),
            "updated_at": instance.updated_at.isoformat(),
        },
        "search": record.search,
        "steps": [entry.to_json() for entry in timeline(record)],
        "compensations": [undo.to_json() for undo in undo_path(record)],
        "children": [instance_status(c) for c in record.children],
        "more_children": record.more_children,
        "outbox": [dataclasses.asdict(o) for o in record.outbox],
        "operator_actions": [dataclasses.asdict(a) for a in record.operator_actions],
    }
