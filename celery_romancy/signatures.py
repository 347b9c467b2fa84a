"""Binding call arguments to a function's signature, as JSON and back, by annotation."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

from .errors import InvalidArgumentsError, SerializationError
from .serialization import decode, encode


class CallShape:
    """A function's parameters and their declared types, resolved once."""

    def __init__(
        self, fn: Callable[..., Any], *, skip_first: bool = False, name: str | None = None
    ) -> None:
        self.fn = fn
        # How errors name the function: its registered name, else its Python name.
        self.qualname = name or getattr(fn, "__qualname__", repr(fn))
        signature = inspect.signature(fn)
        params = list(signature.parameters.values())
        if skip_first:
            if not params:
                raise InvalidArgumentsError(f"{self.qualname} must take the workflow context first")
            params = params[1:]
        self.signature = signature.replace(parameters=params)
        try:
            hints = typing.get_type_hints(fn, include_extras=True)
        except Exception:  # noqa: BLE001 - unresolvable annotations mean "untyped"
            hints = {}
        self.hints: dict[str, Any] = {p.name: hints.get(p.name, Any) for p in params}
        self.return_hint: Any = hints.get("return", Any)
        self.parameter_names = [p.name for p in params]

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Check a call against the signature and the annotations; return its arguments as
        JSON, by name.

        A value fits its annotation when its JSON form decodes as that type, exactly what
        a replay will do with it later; so a call that could not be replayed is refused
        now (``InvalidArgumentsError`` naming the parameter and the path inside it).
        Unannotated and ``Any`` parameters take any value that encodes.
        """
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArgumentsError(f"{self.qualname}(): {exc}") from None
        encoded: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            try:
                encoded[name] = encode(value, path=name)
                self._check_type(name, encoded[name])
            except SerializationError as exc:
                if exc.problem is not None:
                    raise InvalidArgumentsError(
                        f"{self.qualname}(): {exc.path}: {exc.problem}"
                    ) from None
                raise SerializationError(f"{self.qualname}(): {exc}") from None
        return encoded

    def _check_type(self, name: str, data: Any) -> None:
        hint = self.hints[name]
        if hint is Any:
            return
        kind = self.signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:  # the hint types each item
            for i, item in enumerate(data):
                decode(item, hint, path=f"{name}[{i}]")
        elif kind is inspect.Parameter.VAR_KEYWORD:
            for key, item in data.items():
                decode(item, hint, path=key)
        else:
            decode(data, hint, path=name)

    def decode_arguments(self, arguments: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """JSON arguments back to typed positional and keyword arguments for a call."""
        positional: list[Any] = []
        keyword: dict[str, Any] = {}
        # Once a parameter is left to its default, later ones can only go by name.
        by_name = False
        for name, param in self.signature.parameters.items():
            if name not in arguments:
                by_name = True
                continue
            hint = self.hints[name]
            raw = arguments[name]
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                positional.extend(decode(item, hint, path=name) for item in raw)
            elif param.kind is inspect.Parameter.VAR_KEYWORD:
                keyword.update({k: decode(v, hint, path=k) for k, v in raw.items()})
            elif param.kind is inspect.Parameter.POSITIONAL_ONLY or (
                param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and not by_name
            ):
                positional.append(decode(raw, hint, path=name))
            else:
                keyword[name] = decode(raw, hint, path=name)
        return positional, keyword

    def encode_result(self, value: Any) -> Any:
        try:
            return encode(value, path="result")
        except SerializationError as exc:
            raise SerializationError(f"{self.qualname}() returned: {exc}") from None

    def decode_result(self, data: Any) -> Any:
        return decode(data, self.return_hint, path="result")
