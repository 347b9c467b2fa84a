"""Errors recorded as JSON and raised again, with their original type, on replay."""

from __future__ import annotations

import importlib
import traceback
from typing import Any

from .errors import ActivityError
from .serialization import SerializationError, encode


def describe_error(error: BaseException, step_id: str | None = None) -> dict[str, Any]:
    """The JSON record of an error: enough to rebuild it and to show it to a person."""
    cls = type(error)
    try:
        args = encode(list(error.args))
    except SerializationError:
        args = None
    return {
        "type": f"{cls.__module__}.{cls.__qualname__}",
        "message": str(error),
        "args": args,
        "step": step_id,
        "traceback": "".join(traceback.format_exception(error)),
    }


def rebuild_error(record: dict[str, Any]) -> BaseException:
    """The recorded error as an instance of its original type, where that can be made.

    A type that no longer imports, or will not take its recorded args, comes back as
    ``ActivityError`` carrying the original type name and message.
    """
    type_name = str(record.get("type", "Exception"))
    message = str(record.get("message", ""))
    cls = _import_type(type_name)
    args = record.get("args")
    if cls is not None and isinstance(args, list):
        try:
            return cls(*args)
        except Exception:  # noqa: BLE001 - any constructor failure means "cannot rebuild"
            pass
    if cls is not None:
        try:
            return cls(message)
        except Exception:  # noqa: BLE001
            pass
    return ActivityError(type_name, message)


def _import_type(type_name: str) -> type[BaseException] | None:
    module_name, _, qualname = type_name.rpartition(".")
    # Nested classes: try the longest importable module prefix.
    while module_name:
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError:
            module_name, _, head = module_name.rpartition(".")
            qualname = f"{head}.{qualname}"
            continue
        for part in qualname.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                return None
        if isinstance(obj, type) and issubclass(obj, BaseException):
            return obj
        return None
    return None
