"""JSON codec driven by type hints.

Workflow arguments, activity results and events are stored in the database and read
back on replay, possibly by another process running a newer version of the code. So
values are stored as plain JSON only (never pickle: no code runs on load, the stored
data stays readable and portable), and the Python type of a value is not stored with
it: ``decode`` rebuilds it from the annotation the code declares (parameter types,
return types, dataclass fields).

``encode`` turns supported values into JSON data; ``decode(data, hint)`` turns JSON data
back into a value of the hinted type. Both raise ``SerializationError`` naming the path
of the offending part, e.g. ``order.items[2].price``.

Stored forms: datetime/date/time as ISO 8601 strings (UTC offset kept), timedelta as float
seconds, Decimal and UUID as strings, enums as their value, dataclasses (``init`` fields
only) and TypedDicts as objects, NamedTuples, tuples and sets (sorted) as arrays, pydantic
models as ``model_dump(mode="json")``. Dict keys are stored as strings (int and enum keys
too). Decoding ignores unknown keys, so a field removed from a dataclass stays readable.

Strings holding NUL (``\\u0000``) or a lone surrogate are refused by ``encode``, on every
backend alike: PostgreSQL cannot use the first in JSON text, nor store the second as UTF-8.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import functools
import inspect
import json
import math
import re
import sys
import types
import typing
import uuid
from collections import abc
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias, TypeVar, cast, overload

from celery_romancy.errors import SerializationError

__all__ = ["JSONValue", "SerializationError", "check_json", "decode", "encode"]

JSONValue: TypeAlias = bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"] | None

_T = TypeVar("_T")
_NoneType = type(None)

# Value types stored as a JSON scalar: (datetime before date: it is a subclass).
_SCALAR_ENCODERS: tuple[tuple[type, Callable[[Any], JSONValue]], ...] = (
    (dt.datetime, dt.datetime.isoformat),
    (dt.date, dt.date.isoformat),
    (dt.time, dt.time.isoformat),
    (dt.timedelta, dt.timedelta.total_seconds),
    (decimal.Decimal, str),
    (uuid.UUID, str),
)
# Hint -> (JSON types accepted, converter). bool is never accepted as a number.
_SCALAR_DECODERS: dict[object, tuple[tuple[type, ...], Callable[[Any], object]]] = {
    bool: ((bool,), bool),
    int: ((int,), int),
    float: ((int, float), float),
    str: ((str,), str),
    dt.datetime: ((str,), dt.datetime.fromisoformat),
    dt.date: ((str,), dt.date.fromisoformat),
    dt.time: ((str,), dt.time.fromisoformat),
    dt.timedelta: ((int, float), lambda seconds: dt.timedelta(seconds=seconds)),
    decimal.Decimal: ((str, int, float), lambda number: decimal.Decimal(str(number))),
    uuid.UUID: ((str,), uuid.UUID),
}
# Bare or abstract container hints -> the concrete hint they decode as.
_BARE: dict[object, object] = {
    list: list[Any],
    tuple: tuple[Any, ...],
    set: set[Any],
    frozenset: frozenset[Any],
    dict: dict[Any, Any],
    abc.Sequence: list[Any],
    abc.MutableSequence: list[Any],
    abc.Collection: list[Any],
    abc.Iterable: list[Any],
    abc.Set: set[Any],
    abc.MutableSet: set[Any],
    abc.Mapping: dict[Any, Any],
    abc.MutableMapping: dict[Any, Any],
}
# NUL and lone surrogates: see the module docstring.
_UNSTORABLE_CHAR = re.compile("[\x00\ud800-\udfff]")
_LIST_ORIGINS = (list, abc.Sequence, abc.MutableSequence, abc.Collection, abc.Iterable)
_SET_ORIGINS = (set, frozenset, abc.Set, abc.MutableSet)
_DICT_ORIGINS = (dict, abc.Mapping, abc.MutableMapping)


def encode(value: object, *, path: str = "value") -> JSONValue:
    """Turn ``value`` into JSON data; ``path`` names it in error messages."""
    try:
        return _encode(value, path)
    except RecursionError:
        raise SerializationError(f"cannot encode {path}: nested too deeply (circular?)") from None


def check_json(value: object, *, path: str = "value") -> None:
    """Raise ``SerializationError`` if ``encode(value)`` would fail."""
    encode(value, path=path)


@overload
def decode(data: JSONValue, type_hint: type[_T], *, path: str = "value") -> _T: ...
@overload
def decode(data: JSONValue, type_hint: object, *, path: str = "value") -> object: ...
def decode(data: JSONValue, type_hint: object, *, path: str = "value") -> object:
    """Rebuild a value of ``type_hint`` from JSON ``data``.

    ``Any``, ``object``, ``None`` and ``inspect.Parameter.empty`` mean "no annotation":
    the data is returned unchanged (use ``type(None)`` to demand ``None``).
    """
    return _decode(data, type_hint, path)


def _encode(value: object, path: str) -> JSONValue:
    if isinstance(value, enum.Enum):
        return _encode(value.value, path)
    if isinstance(value, str):
        return _checked_str(value, path)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SerializationError(f"cannot encode {path}: float {value} is not valid JSON")
        return float(value)
    for cls, to_json in _SCALAR_ENCODERS:
        if isinstance(value, cls):
            return to_json(value)
    if isinstance(value, (list, tuple)):
        return [_encode(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if _is_pydantic_model(type(value)):
        try:
            dumped = cast(JSONValue, cast(Any, value).model_dump(mode="json"))
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"cannot encode {path}: {exc}") from exc
        _check_strings(dumped, path)
        return dumped
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _encode(getattr(value, f.name), f"{path}.{f.name}")
            for f in dataclasses.fields(value)
            if f.init
        }
    if isinstance(value, Mapping):
        return _encode_mapping(value, path)
    if isinstance(value, abc.Set):  # sorted: set order differs between processes
        items = [_encode(item, f"{path}[{i}]") for i, item in enumerate(value)]
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))
    if isinstance(value, abc.Sequence) and not isinstance(value, (bytes, bytearray, memoryview)):
        return [_encode(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise SerializationError(f"cannot encode {path}: unsupported type {_name(type(value))}")


def _checked_str(value: str, path: str) -> str:
    if value.isascii() and "\x00" not in value:  # the common case, without a regex
        return value
    bad = _UNSTORABLE_CHAR.search(value)
    if bad is not None:
        raise SerializationError(
            f"cannot encode {path}: the string holds {bad.group()!r} at index {bad.start()}, "
            "which cannot be stored"
        )
    return value


def _check_strings(data: JSONValue, path: str) -> None:
    """Apply the string check to JSON made by someone else (pydantic's ``model_dump``)."""
    if isinstance(data, str):
        _checked_str(data, path)
    elif isinstance(data, list):
        for i, item in enumerate(data):
            _check_strings(item, f"{path}[{i}]")
    elif isinstance(data, dict):
        for key, item in data.items():
            _checked_str(key, f"{path} key {key[:40]!r}")
            _check_strings(item, f"{path}[{key!r}]")


def _encode_mapping(value: Mapping[object, object], path: str) -> dict[str, JSONValue]:
    out: dict[str, JSONValue] = {}
    for key, item in value.items():
        name = _encode_key(key, path)
        if name in out:
            raise SerializationError(f"cannot encode {path}: two keys are both stored as {name!r}")
        out[name] = _encode(item, f"{path}[{name!r}]")
    return out


def _encode_key(key: object, path: str) -> str:
    """JSON keys are strings: int keys and values stored as str or int (enums...) qualify."""
    if type(key) is str:
        return _checked_str(key, f"{path} key {key[:40]!r}")
    try:
        name = _encode(key, path)
    except SerializationError:
        name = None
    if isinstance(name, int) and not isinstance(name, bool):
        return str(name)
    if isinstance(name, str):
        return name
    raise SerializationError(
        f"cannot encode {path}: dict key {key!r} of type {_name(type(key))} "
        "is not stored as a string (use str, int or enum keys)"
    )


def _decode(data: object, hint: object, path: str) -> object:
    if hint is Any or hint is object or hint is None or hint is inspect.Parameter.empty:
        return data
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is None:
        return _decode_plain(data, hint, path)
    if origin in (typing.Annotated, typing.Required, typing.NotRequired, typing.Final):
        return _decode(data, args[0], path)
    if origin is typing.Union or origin is types.UnionType:
        return _decode_union(data, args, hint, path)
    if origin is typing.Literal:
        return _decode_literal(data, args, hint, path)
    if origin is tuple:
        return _decode_tuple(data, args, hint, path)
    if origin in _LIST_ORIGINS:
        return _decode_list(data, args[0] if args else Any, hint, path)
    if origin in _SET_ORIGINS:
        items = _decode_list(data, args[0] if args else Any, hint, path)
        try:
            return frozenset(items) if origin is frozenset else set(items)
        except TypeError as exc:
            raise _mismatch(data, hint, path, str(exc)) from exc
    if origin in _DICT_ORIGINS:
        return _decode_dict(data, args or (Any, Any), hint, path)
    if isinstance(origin, type):  # a parametrised user generic, e.g. Box[int]
        return _decode_plain(data, origin, path)
    raise SerializationError(f"cannot decode {path}: unsupported type hint {_name(hint)}")


def _decode_plain(data: object, hint: object, path: str) -> object:
    if hint is _NoneType:
        if data is None:
            return None
        raise _mismatch(data, hint, path)
    if isinstance(hint, typing.NewType):
        return _decode(data, hint.__supertype__, path)
    if isinstance(hint, TypeVar):
        return _decode(data, hint.__bound__ or Any, path)
    if isinstance(hint, (str, typing.ForwardRef)):
        raise SerializationError(f"cannot decode {path}: unresolved forward reference {hint!r}")
    if not isinstance(hint, type):
        raise SerializationError(f"cannot decode {path}: unsupported type hint {_name(hint)}")
    if hint in _BARE:
        return _decode(data, _BARE[hint], path)
    if hint in _SCALAR_DECODERS:
        accepted, convert = _SCALAR_DECODERS[hint]
        if not isinstance(data, accepted) or (isinstance(data, bool) and hint is not bool):
            raise _mismatch(data, hint, path)
        try:
            return convert(data)
        except (ValueError, ArithmeticError) as exc:
            raise _mismatch(data, hint, path, str(exc)) from exc
    if issubclass(hint, enum.Enum):
        return _decode_enum(data, hint, path)
    if _is_pydantic_model(hint):
        try:  # JSON mode: the exact inverse of model_dump(mode="json"), also for strict models
            return cast(Any, hint).model_validate_json(json.dumps(data))
        except (TypeError, ValueError) as exc:
            raise _mismatch(data, hint, path, str(exc)) from exc
    if dataclasses.is_dataclass(hint):
        return _decode_dataclass(data, hint, path)
    if typing.is_typeddict(hint):
        return _decode_typeddict(data, hint, path)
    if issubclass(hint, tuple) and hasattr(hint, "_fields"):
        return _decode_namedtuple(data, hint, path)
    raise SerializationError(f"cannot decode {path}: unsupported type hint {_name(hint)}")


def _decode_union(data: object, args: tuple[Any, ...], hint: object, path: str) -> object:
    if data is None and _NoneType in args:
        return None
    if type(data) in (bool, int, float) and type(data) in args:  # `float | int` keeps 5 an int
        return data
    errors = []
    for arg in args:
        try:
            return _decode(data, arg, path)
        except SerializationError as exc:
            errors.append(str(exc))
    raise _mismatch(data, hint, path, "no member fits (" + "; ".join(errors) + ")")


def _decode_literal(data: object, args: tuple[Any, ...], hint: object, path: str) -> object:
    for option in args:
        stored = _encode(option, path)
        if stored == data and type(stored) is type(data):
            return option
    raise _mismatch(data, hint, path)


def _decode_list(data: object, item_hint: object, hint: object, path: str) -> list[object]:
    if not isinstance(data, (list, tuple)):
        raise _mismatch(data, hint, path)
    return [_decode(item, item_hint, f"{path}[{i}]") for i, item in enumerate(data)]


def _decode_tuple(
    data: object, args: tuple[Any, ...], hint: object, path: str
) -> tuple[object, ...]:
    if hint is typing.Tuple or (len(args) == 2 and args[1] is Ellipsis):  # noqa: UP006 (bare Tuple)
        return tuple(_decode_list(data, args[0] if args else Any, hint, path))
    if not isinstance(data, (list, tuple)) or len(data) != len(args):
        reason = f"expected a list of {len(args)} items, got {_short(data)}"
        raise _mismatch(data, hint, path, reason)
    pairs = enumerate(zip(data, args, strict=True))
    return tuple(_decode(item, arg, f"{path}[{i}]") for i, (item, arg) in pairs)


def _decode_dict(data: object, args: tuple[Any, ...], hint: object, path: str) -> dict[Any, Any]:
    if not isinstance(data, dict):
        raise _mismatch(data, hint, path)
    key_hint, value_hint = args
    return {
        _decode_key(key, key_hint, path): _decode(item, value_hint, f"{path}[{key!r}]")
        for key, item in data.items()
    }


def _decode_key(key: object, key_hint: object, path: str) -> object:
    """Keys are stored as strings, so an int key (or an enum of ints) comes back from digits."""
    try:
        return _decode(key, key_hint, f"{path} key")
    except SerializationError as exc:
        try:
            number = int(key) if isinstance(key, str) else None
        except ValueError:
            number = None
        if number is None:
            raise exc from None
    return _decode(number, key_hint, f"{path} key")


def _decode_enum(data: object, cls: type[enum.Enum], path: str) -> enum.Enum:
    try:
        return cls(data)
    except ValueError:
        pass
    for member in cls:  # values stored in another shape, e.g. a tuple stored as a list
        if _encode(member.value, path) == data:
            return member
    raise _mismatch(data, cls, path)


def _decode_dataclass(data: object, cls: type, path: str) -> object:
    if not isinstance(data, dict):
        raise _mismatch(data, cls, path)
    hints = _type_hints(cls)
    kwargs = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        if field.name in data:
            kwargs[field.name] = _decode(
                data[field.name], hints.get(field.name, Any), f"{path}.{field.name}"
            )
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise _mismatch(data, cls, path, f"missing field {field.name!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # e.g. a check in __post_init__
        raise _mismatch(data, cls, path, str(exc)) from exc


def _decode_typeddict(data: object, cls: type, path: str) -> dict[str, object]:
    if not isinstance(data, dict):
        raise _mismatch(data, cls, path)
    required: frozenset[str] = getattr(cls, "__required_keys__", frozenset())
    out: dict[str, object] = {}
    for key, key_hint in _type_hints(cls).items():
        if key in data:
            out[key] = _decode(data[key], key_hint, f"{path}[{key!r}]")
            continue
        # checks the hint too: under `from __future__ import annotations` 3.11 misses NotRequired
        wrapper = typing.get_origin(key_hint)
        if wrapper is typing.Required or (key in required and wrapper is not typing.NotRequired):
            raise _mismatch(data, cls, path, f"missing key {key!r}")
    return out


def _decode_namedtuple(data: object, cls: Any, path: str) -> object:
    fields: tuple[str, ...] = cls._fields
    defaults: dict[str, object] = cls._field_defaults
    if not isinstance(data, (list, tuple)) or len(data) > len(fields):
        reason = f"expected a list of up to {len(fields)} items, got {_short(data)}"
        raise _mismatch(data, cls, path, reason)
    missing = [name for name in fields[len(data) :] if name not in defaults]
    if missing:
        raise _mismatch(data, cls, path, f"missing field {missing[0]!r}")
    hints = _type_hints(cls)
    return cls(
        *(
            _decode(item, hints.get(name, Any), f"{path}.{name}")
            for name, item in zip(fields, data, strict=False)
        )
    )


@functools.lru_cache(maxsize=512)
def _type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls, include_extras=True)
    except (NameError, TypeError) as exc:
        raise SerializationError(f"cannot resolve the type hints of {_name(cls)}: {exc}") from exc


def _is_pydantic_model(cls: type) -> bool:
    """Without importing pydantic: a pydantic model exists only if pydantic is loaded."""
    pydantic = sys.modules.get("pydantic")
    base = getattr(pydantic, "BaseModel", None) if pydantic is not None else None
    return isinstance(base, type) and isinstance(cls, type) and issubclass(cls, base)


def _mismatch(data: object, hint: object, path: str, reason: str = "") -> SerializationError:
    reason = reason or f"got {_short(data)}"
    expected = _name(hint)
    joint = ", " if reason.startswith("got ") else ": "
    problem = f"expected {expected}{joint}{reason}"
    return SerializationError(
        f"cannot decode {path} as {expected}: {reason}", path=path, problem=problem
    )


def _short(data: object) -> str:
    text = repr(data)
    return f"{type(data).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _name(hint: object) -> str:
    if isinstance(hint, type):
        module = "" if hint.__module__ == "builtins" else hint.__module__ + "."
        return module + hint.__qualname__
    return repr(hint).replace("typing.", "")
