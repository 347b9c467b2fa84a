"""Retry policies for activities and compensations (retries run as Celery countdowns)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import TerminalError


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how fast a failing step is tried again.

    Attempt ``n`` (1-based) that fails is retried after
    ``min(initial_interval * backoff_coefficient ** (n - 1), max_interval)`` seconds,
    until ``max_attempts`` attempts have been made. ``TerminalError`` and the types in
    ``non_retryable`` fail the step at once.
    """

    max_attempts: int = 5
    initial_interval: float = 1.0
    backoff_coefficient: float = 2.0
    max_interval: float = 60.0
    non_retryable: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_interval < 0 or self.max_interval < 0:
            raise ValueError("retry intervals cannot be negative")
        if self.backoff_coefficient < 1:
            raise ValueError("backoff_coefficient must be at least 1")

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait before the attempt that follows failed attempt ``attempt``."""
        delay = self.initial_interval * self.backoff_coefficient ** (attempt - 1)
        return float(min(delay, self.max_interval))

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        if isinstance(error, (TerminalError, *self.non_retryable)):
            return False
        return attempt < self.max_attempts


DEFAULT_RETRY_POLICY = RetryPolicy()
NO_RETRY = RetryPolicy(max_attempts=1)
