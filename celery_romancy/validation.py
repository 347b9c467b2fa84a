"""Checks on caller-given strings that are stored in limited text columns.

Done at the call, so bad input is an ``InvalidArgumentsError`` naming the argument, and
never a driver error from deep inside a write: PostgreSQL refuses NUL in text and
values longer than a ``VARCHAR(n)``, and no database stores a lone surrogate as UTF-8.
SQLite accepts all three, so without these checks the backends would disagree.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import InvalidArgumentsError, PayloadTooLargeError

__all__ = [
    "MAX_ID_LENGTH",
    "MAX_NAME_LENGTH",
    "check_identifier",
    "check_text",
    "is_possible_identifier",
    "shorten",
]

MAX_ID_LENGTH = 100  # workflow_instances.instance_id
MAX_NAME_LENGTH = 200  # workflow, activity and event type names, correlation ids

# C0 and C1 control characters (NUL, newline, escape...) and lone UTF-16 surrogates.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# What text columns cannot hold: NUL, and lone surrogates (not encodable as UTF-8).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def check_identifier(value: object, what: str, max_length: int = MAX_ID_LENGTH) -> str:
    """``value`` if it is a string of 1 to ``max_length`` characters without control
    characters (ids, names, event types); else ``InvalidArgumentsError`` naming ``what``."""
    if not isinstance(value, str):
        raise InvalidArgumentsError(f"{what} must be a string, not {type(value).__name__}")
    if not 0 < len(value) <= max_length:
        raise InvalidArgumentsError(
            f"{what} must be 1 to {max_length} characters long, not {len(value)}"
        )
    bad = _CONTROL.search(value)
    if bad is not None:
        raise InvalidArgumentsError(
            f"{what} must not contain control characters: {bad.group()!r} at index {bad.start()}"
        )
    return value


def check_text(value: object, what: str) -> str:
    """``value`` if it is a string a text column can store (no NUL, no lone surrogate)."""
    if not isinstance(value, str):
        raise InvalidArgumentsError(f"{what} must be a string, not {type(value).__name__}")
    bad = _UNSTORABLE.search(value)
    if bad is not None:
        raise InvalidArgumentsError(
            f"{what} must not contain {bad.group()!r} (at index {bad.start()}): "
            "it cannot be stored as text"
        )
    return value


def is_possible_identifier(value: object, max_length: int = MAX_ID_LENGTH) -> bool:
    """True if ``check_identifier`` accepts ``value``: lookups answer "unknown" otherwise."""
    return (
        isinstance(value, str) and 0 < len(value) <= max_length and _CONTROL.search(value) is None
    )


def shorten(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: for error messages about huge input."""
    if isinstance(value, str | bytes) and len(value) > limit:
        value = value[:limit]  # no repr of a huge string just to cut it
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def check_payload_size(payload: Any, limit: int, what: str) -> None:
    """Refuse a value whose compact JSON form (UTF-8) is larger than ``limit`` bytes."""
    try:
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    except RecursionError:
        raise InvalidArgumentsError(f"{what} is nested too deeply") from None
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise PayloadTooLargeError(
            f"{what} is {size} bytes as JSON; the limit (romancy_max_payload_bytes) is {limit}"
        )
