"""A WSGI environ as the dashboard's ``Request``."""

from __future__ import annotations

from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl

from .http import Request

# The largest form an action takes (an event's data, with room for its encoding).
MAX_FORM_BYTES = 4 << 20


def request_of(environ: dict[str, Any]) -> Request:
    method = str(environ.get("REQUEST_METHOD", "GET")).upper()
    headers = {
        key[5:].replace("_", "-").lower(): str(value)
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }
    if environ.get("CONTENT_TYPE"):
        headers["content-type"] = str(environ["CONTENT_TYPE"])
    form: dict[str, str] = {}
    if method == "POST" and headers.get("content-type", "").startswith(
        "application/x-www-form-urlencoded"
    ):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(min(length, MAX_FORM_BYTES)) if length > 0 else b""
        form = _first(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    return Request(
        method=method,
        path=_text(environ.get("PATH_INFO", "")) or "/",
        base=_text(environ.get("SCRIPT_NAME", "")).rstrip("/"),
        query=_first(parse_qsl(_text(environ.get("QUERY_STRING", "")), keep_blank_values=True)),
        form=form,
        headers=headers,
        cookies=_cookies(headers.get("cookie", "")),
        native=environ,
    )


def _text(value: Any) -> str:
    """WSGI hands paths over as latin-1 decoded bytes: decode them as the UTF-8 they are."""
    return str(value).encode("latin-1", "replace").decode("utf-8", "replace")


def _first(pairs: list[tuple[str, str]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in pairs:
        found.setdefault(key, value)
    return found


def _cookies(header: str) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return {}
    return {name: morsel.value for name, morsel in jar.items()}
