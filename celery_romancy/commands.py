"""Commands: what a replay decides should run next, stored with each step in flight."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from .states import StepKind
from .validation import MAX_ID_LENGTH

if TYPE_CHECKING:
    from .definitions import ChildSignature


@dataclass(frozen=True)
class ActivityCommand:
    """One step to dispatch.

    ``kind`` is ``activity`` or ``compensation`` (a Celery task named ``name`` runs it),
    ``timer`` (``arguments["fire_at"]``, ISO 8601), ``wait_event`` (``name`` is the event
    type; ``arguments`` hold ``correlation_id`` and ``timeout_at``), ``child`` (``name``
    is the child workflow; ``arguments`` hold its ``instance_id``, ``parent_close`` and,
    until it is started, its ``input``) or ``undo_child``. For a compensation,
    ``step_id`` and ``seq`` name the activity step it undoes. The branches of one
    ``ctx.gather`` share a ``group_id`` (Celery's, so Flower shows the fan-out).
    """

    kind: StepKind
    name: str
    step_id: str
    seq: int
    arguments: dict[str, Any]
    queue: str | None = None
    attempt: int = 1
    group_id: str | None = None
    # The gather's max_concurrency (None: every branch was sent at once).
    group_limit: int | None = None

    @property
    def runs_as_task(self) -> bool:
        return self.kind.runs_as_task

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = str(self.kind)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ActivityCommand:
        return cls(**{**data, "kind": StepKind(data["kind"])})

    def next_attempt(self) -> ActivityCommand:
        return replace(self, attempt=self.attempt + 1)

    def first_attempt(self) -> ActivityCommand:
        return replace(self, attempt=1)


def child_command(
    parent_id: str,
    signature: ChildSignature[Any],
    position: int,
    step_id: str,
    group_id: str | None,
    limit: int | None,
) -> ActivityCommand:
    """The step that starts a child workflow and waits for its end."""
    instance_id = signature.instance_id or derived_child_id(parent_id, step_id)
    return ActivityCommand(
        kind=StepKind.CHILD,
        name=signature.workflow.name,
        step_id=step_id,
        seq=position,
        arguments={
            "instance_id": instance_id,
            "parent_close": signature.parent_close,
            "input": signature.arguments,
        },
        group_id=group_id,
        group_limit=limit,
    )


def derived_child_id(parent_id: str, step_id: str) -> str:
    """``<parent id>/<step id>``: the same on every replay and redelivery, so the child is
    started once; hashed when too long for the column (deep trees)."""
    candidate = f"{parent_id}/{step_id}"
    if len(candidate) <= MAX_ID_LENGTH:
        return candidate
    digest = hashlib.sha256(candidate.encode()).hexdigest()[:32]
    return f"{digest}/{step_id}"[:MAX_ID_LENGTH]
