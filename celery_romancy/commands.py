"""Commands: what a replay decides should run next, stored with each step in flight."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from .states import StepKind


@dataclass(frozen=True)
class ActivityCommand:
    """One step to dispatch.

    ``kind`` is ``activity`` or ``compensation`` (a Celery task named ``name`` runs it),
    ``timer`` (``arguments["fire_at"]``, ISO 8601) or ``wait_event`` (``name`` is the event
    type; ``arguments`` hold ``correlation_id`` and ``timeout_at``). For a compensation,
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
