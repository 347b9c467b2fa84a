"""HTTP intake for CloudEvents: a small WSGI app that Flask and Django can mount.

    POST /  (structured: Content-Type application/cloudevents+json, the event as JSON;
             binary: ce-specversion / ce-id / ce-source / ce-type headers, body = data)

The target comes from the CloudEvents extension attributes ``romancyinstanceid`` or
``romancycorrelationid`` (headers ``ce-romancyinstanceid`` / ``ce-romancycorrelationid``
in binary mode). Answers: 202 accepted (also for a repeat of the same source + id, which
is stored once), 400 malformed, 404 unknown instance, 409 finished instance, 405 other
methods. Nothing is written unless the answer is 202.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..errors import (
    InstanceStateError,
    InvalidArgumentsError,
    SerializationError,
    UnknownInstanceError,
)
from ..events import send_event

if TYPE_CHECKING:
    from ..app import Romancy

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
REQUIRED = ("specversion", "id", "source", "type")
STRUCTURED = "application/cloudevents+json"


class MalformedEventError(ValueError):
    pass


class CloudEventsIntake:
    """``CloudEventsIntake(romancy)`` is a WSGI application."""

    def __init__(self, romancy: Romancy) -> None:
        self.romancy = romancy

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST":
            return _answer(start_response, "405 Method Not Allowed", {"error": "POST only"})
        try:
            event = parse(environ)
            instance_id = event.get("romancyinstanceid")
            correlation_id = event.get("romancycorrelationid")
            stored = _send(self.romancy, event, instance_id, correlation_id)
        except (MalformedEventError, InvalidArgumentsError, SerializationError) as exc:
            return _answer(start_response, "400 Bad Request", {"error": str(exc)})
        except UnknownInstanceError as exc:
            return _answer(start_response, "404 Not Found", {"error": str(exc)})
        except InstanceStateError as exc:
            return _answer(start_response, "409 Conflict", {"error": str(exc)})
        return _answer(
            start_response, "202 Accepted", {"accepted": event["id"], "duplicate": not stored}
        )


def _send(romancy: Romancy, event: dict[str, Any], instance_id: Any, correlation_id: Any) -> bool:
    return send_event(
        romancy,
        event["type"],
        event.get("data"),
        instance_id,
        correlation_id,
        dedupe_key=f"{event['source']} {event['id']}",
    )


def parse(environ: dict[str, Any]) -> dict[str, Any]:
    """The event's attributes and ``data`` from a structured or binary mode request."""
    content_type = (environ.get("CONTENT_TYPE") or "").split(";")[0].strip().lower()
    body = _body(environ)
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
    return event


def _body(environ: dict[str, Any]) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise MalformedEventError("bad Content-Length") from None
    return bytes(environ["wsgi.input"].read(length)) if length > 0 else b""


def _json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise MalformedEventError(f"{what} is not valid JSON: {exc}") from None


def _answer(start_response: StartResponse, status: str, payload: dict[str, Any]) -> list[bytes]:
    body = json.dumps(payload).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]
