"""Commands: what a replay decides should run next, stored as the instance's ``pending``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ActivityCommand:
    """Run one activity (``kind="activity"``) or one compensation (``kind="compensation"``).

    For a compensation, ``step_id`` and ``seq`` name the activity step it undoes.
    """

    kind: str
    name: str
    step_id: str
    seq: int
    arguments: dict[str, Any]
    queue: str | None = None
    attempt: int = 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ActivityCommand:
        return cls(**data)

    def next_attempt(self) -> ActivityCommand:
        return ActivityCommand(**{**asdict(self), "attempt": self.attempt + 1})
