"""What the instance list shows: its filters (from the query string), one page of
instances with their current steps, the next page's cursor and the counts per status.

Paging is keyset paging on ``(created_at, instance_id)``, newest first: the cursor
names the last instance shown, and the next page starts right after it through the
``created`` indexes, as fast on the thousandth page as on the first. Counts per status
stop at ``COUNT_CAP`` (shown as "1,000+"): each is one index range read no further,
so a million instances cost no more than a thousand (measured on PostgreSQL with a
million instances: the list answers in 15-80 ms; exact counts took 400 ms, and a cap
of 10,000 up to 900 ms with a workflow and a time filter).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ...errors import RomancyError
from ...states import StepKind
from ...storage import STATUSES, StepRecord, WorkflowInstance
from ...validation import MAX_ID_LENGTH, MAX_NAME_LENGTH, is_possible_identifier

if TYPE_CHECKING:
    from ...app import Romancy

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
COUNT_CAP = 1_000


class BadFilterError(ValueError):
    """A query parameter the list cannot use; its message names it."""


@dataclass(frozen=True)
class Filters:
    status: str | None = None
    workflow: str | None = None
    search: tuple[str, str] | None = None  # one business key: (key, value)
    instance_id: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    limit: int = PAGE_SIZE
    after: tuple[datetime, str] | None = None

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> Filters:
        """From a query string: ``status``, ``workflow``, ``search`` (``key=value``),
        ``id``, ``created_after``/``created_before`` (ISO 8601; UTC if no offset),
        ``limit`` and ``after`` (a cursor from a page's ``next``)."""
        status = query.get("status") or None
        if status is not None and status not in STATUSES:
            raise BadFilterError(f"status: no such status {status!r}")
        workflow = query.get("workflow") or None
        if workflow is not None and not is_possible_identifier(workflow, MAX_NAME_LENGTH):
            raise BadFilterError("workflow: not a workflow name")
        search = None
        if query.get("search"):
            key, equals, value = query["search"].strip().partition("=")
            if not equals or not key.strip():
                raise BadFilterError("search: give a business key as key=value")
            search = (key.strip(), value.strip())
        instance_id = query.get("id", "").strip() or None
        if instance_id is not None and len(instance_id) > MAX_ID_LENGTH:
            raise BadFilterError(f"id: at most {MAX_ID_LENGTH} characters")
        try:
            limit = int(query.get("limit") or PAGE_SIZE)
        except ValueError:
            raise BadFilterError("limit: not a number") from None
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise BadFilterError(f"limit: 1 to {MAX_PAGE_SIZE}")
        return cls(
            status=status,
            workflow=workflow,
            search=search,
            instance_id=instance_id,
            created_after=_moment(query, "created_after"),
            created_before=_moment(query, "created_before"),
            limit=limit,
            after=decode_cursor(query["after"]) if query.get("after") else None,
        )

    def query(self, **changes: Any) -> dict[str, str | None]:
        """These filters as query parameters (for links), with ``changes``."""
        values: dict[str, str | None] = {
            "status": self.status,
            "workflow": self.workflow,
            "search": None if self.search is None else "=".join(self.search),
            "id": self.instance_id,
            "created_after": _iso(self.created_after),
            "created_before": _iso(self.created_before),
            "limit": None if self.limit == PAGE_SIZE else str(self.limit),
        }
        values.update(changes)
        return values


@dataclass(frozen=True)
class Row:
    instance: WorkflowInstance
    steps: list[StepRecord] = field(default_factory=list)  # in flight

    @property
    def duration(self) -> float:
        """Seconds from its start to its end, or to now while it runs."""
        end = self.instance.updated_at if self.instance.is_terminal else datetime.now(UTC)
        return max(0.0, (end - self.instance.created_at).total_seconds())

    @property
    def current_step(self) -> str | None:
        """What it is doing now: its steps in flight, e.g. "charge (attempt 2)"."""
        if not self.steps:
            return None
        return ", ".join(_describe(s) for s in self.steps)


@dataclass(frozen=True)
class Page:
    filters: Filters
    rows: list[Row]
    next_cursor: str | None
    counts: dict[str, int]


def read_page(romancy: Romancy, filters: Filters, with_counts: bool = True) -> Page:
    storage = romancy.storage
    if filters.instance_id is not None:
        found = (
            storage.get_instance(filters.instance_id)
            if is_possible_identifier(filters.instance_id)
            else None
        )
        matches = found is not None and _matches(romancy, found, filters)
        instances = [found] if found is not None and matches else []
        more = False
    else:
        try:
            instances = romancy.find_instances(
                status=filters.status,
                workflow=filters.workflow,
                limit=filters.limit + 1,
                search=None if filters.search is None else dict([filters.search]),
                after=filters.after,
                created_after=filters.created_after,
                created_before=filters.created_before,
            )
        except RomancyError as exc:  # a business key that no instance can have
            raise BadFilterError(f"search: {exc}") from None
        more = len(instances) > filters.limit
        instances = instances[: filters.limit]
    steps = storage.get_steps_of([i.instance_id for i in instances])
    rows = [Row(i, steps[i.instance_id]) for i in instances]
    next_cursor = encode_cursor(instances[-1]) if more else None
    counts = read_counts(romancy, filters) if with_counts else {}
    return Page(filters, rows, next_cursor, counts)


def read_counts(romancy: Romancy, filters: Filters) -> dict[str, int]:
    """Instances per status, of the filters' workflow and time range, up to ``COUNT_CAP``."""
    return romancy.storage.count_by_status(
        filters.workflow,
        created_after=filters.created_after,
        created_before=filters.created_before,
        cap=COUNT_CAP,
    )


def _matches(romancy: Romancy, instance: WorkflowInstance, filters: Filters) -> bool:
    """The instance asked for by id, unless another filter leaves it out (the same
    filters as ``find_instances``: the time range includes its start, not its end)."""
    if filters.status not in (None, instance.status):
        return False
    if filters.workflow not in (None, instance.workflow_name):
        return False
    created = instance.created_at
    if filters.created_after is not None and created < filters.created_after:
        return False
    if filters.created_before is not None and created >= filters.created_before:
        return False
    if filters.search is None:
        return True
    key, value = filters.search
    return romancy.storage.get_search_attributes(instance.instance_id).get(key) == value


def _describe(step: StepRecord) -> str:
    name = step.command.name
    if step.kind is StepKind.TIMER:
        if step.dispatch_at is None:
            return "timer"
        return f"timer until {step.dispatch_at:%Y-%m-%d %H:%M:%S} UTC"
    if step.kind is StepKind.WAIT_EVENT:
        return f"waiting for event {name}"
    if step.kind in (StepKind.CHILD, StepKind.UNDO_CHILD):
        verb = "child workflow" if step.kind is StepKind.CHILD else "undoing child"
        return f"{verb} {name}"
    attempt = f" (attempt {step.command.attempt})" if step.command.attempt > 1 else ""
    return f"{step.kind} {name}{attempt}"


def encode_cursor(instance: WorkflowInstance) -> str:
    raw = json.dumps([instance.created_at.isoformat(), instance.instance_id])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, instance_id = json.loads(base64.urlsafe_b64decode(padded))
        moment = datetime.fromisoformat(created)
    except (ValueError, TypeError, binascii.Error):
        raise BadFilterError("after: not a cursor this dashboard made") from None
    if moment.tzinfo is None or not isinstance(instance_id, str):
        raise BadFilterError("after: not a cursor this dashboard made")
    return moment, instance_id


def _moment(query: Mapping[str, str], name: str) -> datetime | None:
    text = query.get(name, "").strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadFilterError(f"{name}: not an ISO 8601 date and time") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
