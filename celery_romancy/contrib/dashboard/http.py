"""The dashboard's own request and response: plain data, no web framework.

The pages, the JSON API and the actions are functions from a ``Request`` to a
``Response``; ``Dashboard.__call__`` (WSGI), the Django view and the Flask blueprint
only translate their framework's request into one and the response back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, urlencode


@dataclass(frozen=True)
class Request:
    """One request as the dashboard sees it.

    ``path``: below the dashboard's mount point, starting with ``/``; ``base``: the
    mount point itself (``""`` or e.g. ``/romancy``), to build links with. ``query``
    and ``form``: the first value of each parameter. ``native``: the framework's own
    request (a WSGI environ, a Django ``HttpRequest``, Flask's ``request``), for an
    ``authorize`` callable that needs more (a user, a session).
    """

    method: str
    path: str
    base: str = ""
    query: Mapping[str, str] = field(default_factory=dict)
    form: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)  # names lower-cased
    cookies: Mapping[str, str] = field(default_factory=dict)
    native: Any = None

    def url(self, path: str, **query: str | None) -> str:
        """A link to ``path`` (below the mount point), with the given query parameters
        (None left out)."""
        given = {k: v for k, v in query.items() if v not in (None, "")}
        return self.base + path + (f"?{urlencode(given)}" if given else "")

    def instance_url(self, instance_id: str, below: str = "/instances/") -> str:
        return self.url(below + quote(instance_id, safe=""))


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def status_line(self) -> str:
        return f"{self.status} {HTTPStatus(self.status).phrase}"

    def all_headers(self) -> list[tuple[str, str]]:
        return [
            ("Content-Type", self.content_type),
            ("Content-Length", str(len(self.body))),
            # Operators' data: never cached by a proxy, never framed by another site.
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            ("X-Frame-Options", "DENY"),
            ("Content-Security-Policy", CSP),
            ("Referrer-Policy", "same-origin"),
            *self.headers,
        ]


# Only the dashboard's own script and style sheet: no inline script, nothing remote.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def html(text: str, status: int = 200) -> Response:
    return Response(status, text.encode())


def as_json(document: Any, status: int = 200) -> Response:
    body = json.dumps(document, indent=2, default=str, ensure_ascii=False).encode()
    return Response(status, body, "application/json")


def redirect(location: str) -> Response:
    """After a POST: the browser GETs ``location`` (303 See Other)."""
    return Response(303, b"", "text/plain; charset=utf-8", [("Location", location)])


def error(status: int, message: str, api: bool = False) -> Response:
    if api:
        return as_json({"error": message}, status)
    return Response(status, message.encode(), "text/plain; charset=utf-8")
