"""The dashboard as its own web server: ``celery -A proj romancy dashboard``.

wsgiref's server, one thread per request: enough for the few operators who look at
it. With ``--basic-auth user:password`` or ``--token T`` every page asks for HTTP
basic auth (for a token: any user name, the token as password), as ``celery flower
--basic_auth`` does; with ``--allow-actions`` too, the signed-in user may act, and
the name they signed in with is recorded with each action.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from .http import Request

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Login:
    """Who may sign in: one user with a password, or anyone with the token."""

    def __init__(self, *, basic_auth: str | None = None, token: str | None = None) -> None:
        if basic_auth is not None:
            user, colon, password = basic_auth.partition(":")
            if not colon or not user or not password:
                raise ValueError("--basic-auth takes user:password")
            self.user: str | None = user
            self.password = password
        elif token:
            self.user, self.password = None, token
        else:
            raise ValueError("give --basic-auth user:password or --token")

    def check(self, header: str) -> str | None:
        """The user named by an ``Authorization: Basic`` header, if its password fits."""
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        # Digests compared, both always: compare_digest on texts of different lengths
        # returns at once, which would tell the password's length.
        password_fits = hmac.compare_digest(_digest(password), _digest(self.password))
        user_fits = self.user is None or hmac.compare_digest(_digest(user), _digest(self.user))
        if not (password_fits and user_fits):
            return None
        return user or "token"


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def signed_in(app: WSGIApp, login: Login) -> WSGIApp:
    """``app`` behind HTTP basic auth; the user is passed on as ``REMOTE_USER``."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        user = login.check(str(environ.get("HTTP_AUTHORIZATION", "")))
        if user is None:
            start_response(
                "401 Unauthorized",
                [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("WWW-Authenticate", 'Basic realm="Romancy dashboard", charset="UTF-8"'),
                ],
            )
            return [b"sign in to see the dashboard"]
        environ["REMOTE_USER"] = user
        return app(environ, start_response)

    return guarded


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def loopback_only(app: WSGIApp) -> WSGIApp:
    """``app`` answering only requests that name this host as a loopback address. Without
    a login, listening on 127.0.0.1 is what keeps the pages private; a web page whose
    name an attacker points at 127.0.0.1 (DNS rebinding) would read them otherwise,
    and its requests carry its own name as ``Host``."""

    def checked(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        host = urlsplit(f"//{environ.get('HTTP_HOST', '')}").hostname
        if host not in LOOPBACK:
            start_response("403 Forbidden", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"this dashboard answers to its loopback address only (127.0.0.1)"]
        return app(environ, start_response)

    return checked


def remote_user(request: Request) -> str | None:
    """``authorize`` for a dashboard behind ``signed_in``: the signed-in user."""
    environ = request.native if isinstance(request.native, dict) else {}
    user = environ.get("REMOTE_USER")
    return str(user) if user else None


class ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    """wsgiref's line per request on stderr, except for the style sheet and script."""

    def log_message(self, format: str, *args: Any) -> None:
        if "/static/" not in str(args[:1]):
            super().log_message(format, *args)


def make_dashboard_server(app: WSGIApp, address: str, port: int) -> WSGIServer:
    return make_server(address, port, app, ThreadingServer, QuietHandler)
