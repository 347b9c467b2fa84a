"""HTTP intake for CloudEvents: a small WSGI app that Flask and Django can mount.

    POST /  (structured: Content-Type application/cloudevents+json, the event as JSON;
             binary: ce-specversion / ce-id / ce-source / ce-type headers, body = data)

The target comes from the CloudEvents extension attributes ``romancyinstanceid`` or
``romancycorrelationid`` (headers ``ce-romancyinstanceid`` / ``ce-romancycorrelationid``
in binary mode); each must be a string.

Safe by default: ``CloudEventsIntake(romancy, authorize=check)`` calls
``check(environ, event)`` for every well-formed event before anything is looked up or
written; ``event`` is the parsed event (its attributes and ``data``) and
``environ["romancy.body"]`` holds the raw body bytes, for signature checks (see
``contrib.signing.hmac_authorizer``). ``check`` returns True to accept, False to refuse
(403), or raises ``NotAuthenticatedError`` when the request carries no usable credentials
(401). An intake without ``authorize`` needs ``allow_anonymous=True``, said out loud.

Limits: a body larger than ``max_body_bytes`` (default 1 MiB) is refused with 413, from
its Content-Length before anything is read; the body is read in bounded chunks, never
more than the limit + 1 bytes whatever the headers claim. Event data is also capped by
``romancy_max_payload_bytes``.

Answers: 202 accepted (``duplicate: true`` for a repeat of an event already kept: same
source + id, type, target and data); 400 malformed; 401/403 refused by ``authorize``;
404 unknown instance; 405 other methods; 409 finished instance, or an event id already
used for this target and type with other data; 413 too large. Nothing is written unless
the answer is 202.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..errors import (
    ConfigurationError,
    EventConflictError,
    InstanceStateError,
    InvalidArgumentsError,
    PayloadTooLargeError,
    SerializationError,
    UnknownInstanceError,
)
from ..events import send_event

if TYPE_CHECKING:
    from ..app import Romancy

__all__ = ["BODY_KEY", "CloudEventsIntake", "MalformedEventError", "NotAuthenticatedError", "parse"]

StartResponse = Callable[..., Any]
Authorize = Callable[[dict[str, Any], dict[str, Any]], bool]
REQUIRED = ("specversion", "id", "source", "type")
TARGETS = ("romancyinstanceid", "romancycorrelationid")
STRUCTURED = "application/cloudevents+json"
BODY_KEY = "romancy.body"
CHUNK = 64 * 1024


class MalformedEventError(ValueError):
    """The request is not a CloudEvent this intake can take (answered 400)."""


class BodyTooLargeError(ValueError):
    """The body is larger than ``max_body_bytes`` (answered 413)."""


class NotAuthenticatedError(Exception):
    """Raised by an ``authorize`` callable when the request carries no usable
    credentials; answered 401, with ``challenge`` as the WWW-Authenticate header."""

    def __init__(self, message: str = "authentication required", challenge: str = "") -> None:
        super().__init__(message)
        self.challenge = challenge


class CloudEventsIntake:
    """``CloudEventsIntake(romancy, authorize=check)`` is a WSGI application."""

    def __init__(
        self,
        romancy: Romancy,
        *,
        authorize: Authorize | None = None,
        allow_anonymous: bool = False,
        max_body_bytes: int = 1 << 20,
    ) -> None:
        if authorize is None and allow_anonymous is not True:
            raise ConfigurationError(
                "CloudEventsIntake needs authorize=<callable(environ, event) -> bool> to "
                "decide who may send events (e.g. contrib.signing.hmac_authorizer(secret)), "
                "or allow_anonymous=True to accept events from anyone who can reach it"
            )
        if authorize is not None and allow_anonymous:
            raise ConfigurationError(
                "give CloudEventsIntake authorize= or allow_anonymous=True, not both"
            )
        if authorize is not None and not callable(authorize):
            raise ConfigurationError(f"authorize must be callable, not {authorize!r}")
        if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int):
            raise ConfigurationError(f"max_body_bytes must be an int, not {max_body_bytes!r}")
        if max_body_bytes <= 0:
            raise ConfigurationError(f"max_body_bytes must be positive, not {max_body_bytes}")
        self.romancy = romancy
        self.authorize = authorize
        self.max_body_bytes = max_body_bytes

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST":
            return _answer(start_response, "405 Method Not Allowed", {"error": "POST only"})
        try:
            environ[BODY_KEY] = read_body(environ, self.max_body_bytes)
            event = parse(environ)
            if self.authorize is not None and not self.authorize(environ, event):
                return _answer(start_response, "403 Forbidden", {"error": "not authorized"})
            stored = _send(self.romancy, event)
        except NotAuthenticatedError as exc:
            challenge = [("WWW-Authenticate", exc.challenge)] if exc.challenge else []
            return _answer(start_response, "401 Unauthorized", {"error": str(exc)}, challenge)
        except (BodyTooLargeError, PayloadTooLargeError) as exc:
            return _answer(start_response, "413 Content Too Large", {"error": str(exc)})
        except (MalformedEventError, InvalidArgumentsError, SerializationError) as exc:
            return _answer(start_response, "400 Bad Request", {"error": str(exc)})
        except UnknownInstanceError as exc:
            return _answer(start_response, "404 Not Found", {"error": str(exc)})
        except (InstanceStateError, EventConflictError) as exc:
            return _answer(start_response, "409 Conflict", {"error": str(exc)})
        return _answer(
            start_response, "202 Accepted", {"accepted": event["id"], "duplicate": not stored}
        )


def _send(romancy: Romancy, event: dict[str, Any]) -> bool:
    return send_event(
        romancy,
        event["type"],
        event.get("data"),
        event.get("romancyinstanceid"),
        event.get("romancycorrelationid"),
        dedupe_key=json.dumps([event["source"], event["id"]]),
    )


def parse(environ: dict[str, Any]) -> dict[str, Any]:
    """The event's attributes and ``data`` from a structured or binary mode request
    whose body was read into ``environ["romancy.body"]``."""
    content_type = (environ.get("CONTENT_TYPE") or "").split(";")[0].strip().lower()
    body: bytes = environ[BODY_KEY]
    if content_type == STRUCTURED:
        event = _json(body, "the structured event")
        if not isinstance(event, dict):
            raise MalformedEventError("a structured CloudEvent must be a JSON object")
    else:
        event = {
            key[len("HTTP_CE_") :].lower(): value
            for key, value in environ.items()
            if key.startswith("HTTP_CE_")
        }
        if body:
            if content_type not in ("application/json", "") and not content_type.endswith("+json"):
                raise MalformedEventError(f"data of type {content_type!r} is not JSON")
            event["data"] = _json(body, "the event data")
    missing = [name for name in REQUIRED if not isinstance(event.get(name), str) or not event[name]]
    if missing:
        raise MalformedEventError(f"missing CloudEvents attributes: {', '.join(missing)}")
    if event["specversion"] != "1.0":
        raise MalformedEventError(f"unsupported specversion {event['specversion']!r}")
    for name in TARGETS:
        if event.get(name) is not None and not isinstance(event[name], str):
            raise MalformedEventError(f"the {name} attribute must be a string")
    return event


def read_body(environ: dict[str, Any], limit: int) -> bytes:
    """At most ``limit`` bytes of body, read in chunks; ``BodyTooLargeError`` beyond.

    With a Content-Length, exactly that many bytes are asked for (a longer body is not
    read); without one, the body is read to its end only if the server says it ends
    (``wsgi.input_terminated``, e.g. a chunked request), else it is taken as empty.
    """
    declared = environ.get("CONTENT_LENGTH") or ""
    if declared:
        length = _content_length(declared, limit)
    elif environ.get("wsgi.input_terminated"):
        length = limit + 1  # read to the end, but one byte past the limit is enough
    else:
        return b""
    stream = environ["wsgi.input"]
    parts: list[bytes] = []
    received = 0
    while received < length:
        part = stream.read(min(CHUNK, length - received))
        if not part:
            break
        parts.append(part)
        received += len(part)
    if received > limit:
        raise BodyTooLargeError(f"the body is larger than the limit of {limit} bytes")
    return b"".join(parts)


def _content_length(declared: str, limit: int) -> int:
    """A Content-Length that is a plain decimal number no larger than ``limit``."""
    declared = declared.strip()
    if not (declared.isascii() and declared.isdigit()):
        raise MalformedEventError(f"bad Content-Length {declared[:40]!r}")
    digits = declared.lstrip("0") or "0"
    # Compared as text first: int() of an absurd header is needless work (or an error).
    if len(digits) > len(str(limit)) or int(digits) > limit:
        raise BodyTooLargeError(
            f"Content-Length {digits[:40]} is larger than the limit of {limit} bytes"
        )
    return int(digits)


def _json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except RecursionError:
        raise MalformedEventError(f"{what} is nested too deeply") from None
    except ValueError as exc:
        raise MalformedEventError(f"{what} is not valid JSON: {exc}") from None


def _answer(
    start_response: StartResponse,
    status: str,
    payload: dict[str, Any],
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    body = json.dumps(payload).encode()
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            *(headers or []),
        ],
    )
    return [body]
