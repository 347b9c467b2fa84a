"""Errors recorded as JSON and raised again, with their original type, on replay.

A record holds the error's type name, message, ``args``, a JSON snapshot of its instance
attributes (``state``), the step and the traceback. Message and traceback are capped at
``MAX_ERROR_TEXT`` characters each, cut with a ``…[truncated N chars]`` marker: the
message keeps its head; the traceback keeps its tail (where the raise is), with a long
message inside it cut to 4 KiB. ``args`` and each attribute are left out when their JSON
is longer than ``MAX_ERROR_TEXT`` or not JSON at all; NUL and lone surrogates in the
message and traceback are stored escaped (``\\x00``).

Rebuilding never runs code chosen by the stored data. The type name is only looked up
among modules the process has **already imported** (``sys.modules``; nothing is
imported) and must name a subclass of ``Exception``: never ``SystemExit``,
``KeyboardInterrupt``, ``GeneratorExit`` or other ``BaseException``-only types, and never
the engine's own signals. The instance is made like this:

- exception classes with a ``__init__`` written in Python (yours, the engine's) are made
  without calling ``__init__``: ``cls.__new__(cls, *args)``, then ``args`` is set and the
  recorded attributes are put back, decoded by the class's annotations where it has them
  (else in their JSON form: a ``Decimal`` attribute comes back as ``str``), so
  ``except CardDeclined as e: e.amount`` works whatever ``__init__`` takes;
- built-in exception classes (``ValueError``, ``KeyError``, ``OSError``...) are called
  with their recorded ``args`` (or the message when the args were not kept).

What cannot be rebuilt comes back as ``ActivityError`` carrying the type name and the
message: a type from a module not imported in this process, a name that is not an
``Exception`` subclass, a class whose ``__new__`` refuses the recorded args, a built-in
class that refuses them. Attributes that were not JSON-encodable (or too long) are missing
from the rebuilt error, as are attributes of classes with ``__slots__``, values a built-in
keeps outside ``args`` (``OSError.filename``), and the ``__cause__`` / ``__context__``
chain (kept as text in the traceback only).
"""

from __future__ import annotations

import inspect
import json
import sys
import traceback
import types
import typing
from typing import Any

from .errors import ActivityError, LeaseHeldError, SerializationError
from .serialization import decode, encode

# Characters kept of a message and of a traceback, each; longer ones are cut with a marker.
MAX_ERROR_TEXT = 64 * 1024

_MESSAGE_IN_TRACEBACK = 4 * 1024  # characters of the message repeated in the traceback
_LEFT_OUT = object()  # an argument or attribute not kept in the record

# Exception subclasses that steer the engine itself: never made from a record.
_ENGINE_SIGNALS = (LeaseHeldError,)


def describe_error(error: BaseException, step_id: str | None = None) -> dict[str, Any]:
    """The JSON record of an error: enough to rebuild it and to show it to a person."""
    cls = type(error)
    full_message = _text_of(error)
    message = _storable(_cut_head(full_message, MAX_ERROR_TEXT))
    try:
        text = "".join(traceback.format_exception(error))
    except Exception:  # noqa: BLE001 - a broken __str__ elsewhere in the chain
        text = f"{cls.__qualname__}: {full_message}\n"
    if len(full_message) > _MESSAGE_IN_TRACEBACK:
        # The message ends the traceback and is kept in full above: a long one would
        # push the frames out of the traceback's tail.
        text = text.replace(full_message, _cut_head(full_message, _MESSAGE_IN_TRACEBACK))
    return {
        "type": f"{cls.__module__}.{cls.__qualname__}",
        "message": message,
        "args": _args_of(error),
        "state": _state_of(error),
        "step": step_id,
        "traceback": _storable(_cut_tail(text)),
    }


def rebuild_error(record: dict[str, Any]) -> Exception:
    """The recorded error as an instance of its original type, where that is allowed and
    can be made; otherwise ``ActivityError`` carrying the type name and message."""
    type_name = str(record.get("type", "Exception"))
    message = str(record.get("message", ""))
    cls = _loaded_exception_class(type_name)
    if cls is not None:
        recorded_args = record.get("args")
        args = tuple(recorded_args) if isinstance(recorded_args, list) else (message,)
        state = record.get("state")
        try:
            return _instantiate(cls, args, state if isinstance(state, dict) else {})
        except Exception:  # noqa: BLE001 - whatever the class refuses means "cannot rebuild"
            pass
    return ActivityError(type_name, message)


# -- describing ---------------------------------------------------------------------------


def _text_of(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the failure
        return f"<{type(error).__qualname__}: str() failed>"


def _cut_head(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[truncated {len(text) - limit} chars]"


def _cut_tail(text: str) -> str:
    if len(text) <= MAX_ERROR_TEXT:
        return text
    return f"…[truncated {len(text) - MAX_ERROR_TEXT} chars]{text[-MAX_ERROR_TEXT:]}"


def _storable(text: str) -> str:
    """Text a JSON column stores on every backend: NUL and lone surrogates escaped."""
    if text.isascii() and "\x00" not in text:
        return text
    escaped = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return escaped.replace("\x00", "\\x00")


def _json_within_cap(value: object) -> Any:
    """``value`` as JSON, or ``_LEFT_OUT`` when it does not encode or its JSON is too long."""
    try:
        data = encode(value)
    except SerializationError:
        return _LEFT_OUT
    return data if len(json.dumps(data)) <= MAX_ERROR_TEXT else _LEFT_OUT


def _args_of(error: BaseException) -> list[Any] | None:
    data = _json_within_cap(list(error.args))
    return None if data is _LEFT_OUT else typing.cast(list[Any], data)


def _state_of(error: BaseException) -> dict[str, Any]:
    """The error's instance attributes that encode, within one ``MAX_ERROR_TEXT`` budget."""
    state: dict[str, Any] = {}
    budget = MAX_ERROR_TEXT
    for name, value in (getattr(error, "__dict__", None) or {}).items():
        data = _json_within_cap(value)
        if data is _LEFT_OUT:
            continue
        size = len(json.dumps(data))
        if size <= budget:
            state[name] = data
            budget -= size
    return state


# -- rebuilding ---------------------------------------------------------------------------


def _loaded_exception_class(type_name: str) -> type[Exception] | None:
    """The class ``type_name`` names in an already imported module, if it is an
    ``Exception`` subclass the engine may raise in a workflow; else None."""
    module_name, _, qualname = type_name.rpartition(".")
    # Nested classes: the longest imported module prefix holds the rest of the name.
    while module_name and module_name not in sys.modules:
        module_name, _, head = module_name.rpartition(".")
        qualname = f"{head}.{qualname}"
    module = sys.modules.get(module_name) if module_name else None
    if module is None:
        return None
    found: Any = module
    for part in qualname.split("."):
        # getattr_static: no module __getattr__ (lazy imports) and no descriptor runs.
        found = inspect.getattr_static(found, part, None)
        if found is None:
            return None
    if not isinstance(found, type) or not issubclass(found, Exception):
        return None
    if issubclass(found, _ENGINE_SIGNALS):
        return None
    return found


def _instantiate(cls: type[Exception], args: tuple[Any, ...], state: dict[str, Any]) -> Exception:
    if _has_python_init(cls):
        error = cls.__new__(cls, *args)  # never the __init__: it may take other arguments
        error.args = args
    else:
        error = cls(*args)  # a built-in __init__: the recorded args are its arguments
    attributes = getattr(error, "__dict__", None)
    if attributes is not None:  # None for classes with __slots__ only
        hints = _attribute_hints(cls)
        for name, data in state.items():
            attributes[name] = _decoded_or_json(data, hints.get(name, Any), name)
    return error


def _decoded_or_json(data: Any, hint: object, name: str) -> Any:
    try:
        return decode(data, hint, path=name)
    except SerializationError:
        return data  # the annotation changed since the error was recorded: keep the JSON


def _has_python_init(cls: type) -> bool:
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            return isinstance(vars(klass)["__init__"], types.FunctionType)
    return False


def _attribute_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable annotations: attributes stay JSON
        return {}
