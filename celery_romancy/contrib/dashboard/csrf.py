"""Cross-site request forgery protection for the dashboard's actions.

``SignedDoubleSubmit`` (standalone, Flask): a random value in a cookie (SameSite=Strict,
HttpOnly) and, in each form, that value signed with the dashboard's secret. A POST must
bring both, matching: another site can make a browser send the cookie but cannot read
it, so it cannot write the signed field; and without the secret a planted cookie's
value cannot be signed either. A POST whose ``Origin`` is another host is refused too.

Under Django, the Django view uses Django's own protection (``csrf_protect``) instead.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Protocol
from urllib.parse import urlsplit

from .http import Request

COOKIE = "romancy_csrf"
FIELD = "csrf_token"


class CsrfProtection(Protocol):
    """What the action forms carry and what a POST must show."""

    field: str

    def token(self, request: Request) -> tuple[str, list[tuple[str, str]]]:
        """The form field's value for this request, and headers to send with the page
        (a cookie to set)."""

    def check(self, request: Request) -> bool:
        """True if the POST carries a valid token."""


class SignedDoubleSubmit:
    field = FIELD

    def __init__(self, secret: bytes | None = None) -> None:
        # Per process unless given: several processes serving one dashboard share one.
        self.secret = secret or secrets.token_bytes(32)

    def _sign(self, value: str) -> str:
        return hmac.new(self.secret, value.encode(), hashlib.sha256).hexdigest()

    def token(self, request: Request) -> tuple[str, list[tuple[str, str]]]:
        value = request.cookies.get(COOKIE, "")
        headers: list[tuple[str, str]] = []
        if len(value) != 64:
            value = secrets.token_hex(32)
            path = request.base or "/"
            headers.append(
                ("Set-Cookie", f"{COOKIE}={value}; Path={path}; HttpOnly; SameSite=Strict")
            )
        return self._sign(value), headers

    def check(self, request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin and origin != "null":
            host = request.headers.get("host", "")
            if urlsplit(origin).netloc != host:
                return False
        value = request.cookies.get(COOKIE, "")
        sent = request.form.get(FIELD, "")
        if not value or not sent:
            return False
        return hmac.compare_digest(self._sign(value), sent)
