"""Commands: what a replay decides should run next, stored as the instance's ``pending``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ActivityCommand:
    """What the instance waits for next.

    ``kind`` is ``activity`` or ``compensation`` (a Celery task named ``name`` runs it),
    ``timer`` (``arguments["fire_at"]``, ISO 8601) or ``wait_event`` (``name`` is the event
    type; ``arguments`` hold ``correlation_id`` and ``timeout_at``). For a compensation,
    ``step_id`` and ``seq`` name the activity step it undoes.
    """

    kind: str
    name: str
    step_id: str
    seq: int
    arguments: dict[str, Any]
    queue: str | None = None
    attempt: int = 1

    @property
    def runs_as_task(self) -> bool:
        return self.kind in ("activity", "compensation")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ActivityCommand:
        return cls(**data)

    def next_attempt(self) -> ActivityCommand:
        return ActivityCommand(**{**asdict(self), "attempt": self.attempt + 1})
