"""Shared-secret signatures for the CloudEvents intake.

The sender signs the raw request body with HMAC-SHA256 and sends
``X-Romancy-Signature: sha256=<hex digest>``; the intake checks it::

    intake = CloudEventsIntake(romancy, authorize=hmac_authorizer(os.environ["EVENTS_SECRET"]))

    # the sender
    body = json.dumps(event).encode()
    requests.post(url, data=body, headers={
        "Content-Type": "application/cloudevents+json",
        "X-Romancy-Signature": signature(secret, body),
    })

A request without the header is answered 401, one with a wrong signature 403. The
signature covers the body only: a captured request can be replayed, which the intake
answers as a duplicate while the event is kept (``romancy_event_retention``).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from ..errors import ConfigurationError
from .cloudevents import BODY_KEY, Authorize, NotAuthenticatedError

__all__ = ["hmac_authorizer", "signature"]

PREFIX = "sha256="


def signature(secret: str | bytes, body: bytes) -> str:
    """The header value that signs ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return PREFIX + hmac.new(_key(secret), body, hashlib.sha256).hexdigest()


def hmac_authorizer(secret: str | bytes, header: str = "X-Romancy-Signature") -> Authorize:
    """An ``authorize`` for ``CloudEventsIntake`` that accepts a body signed with ``secret``."""
    key = _key(secret)
    environ_key = "HTTP_" + header.upper().replace("-", "_")
    challenge = f'HMAC-SHA256 header="{header}"'

    def authorize(environ: dict[str, Any], event: dict[str, Any]) -> bool:
        sent = environ.get(environ_key)
        if not sent:
            raise NotAuthenticatedError(f"missing {header} header", challenge)
        expected = signature(key, environ[BODY_KEY])
        # Constant time: how much of a guess matched must not show in the answer's timing.
        return hmac.compare_digest(sent.strip().encode(), expected.encode())

    return authorize


def _key(secret: str | bytes) -> bytes:
    key = secret.encode() if isinstance(secret, str) else secret
    if not isinstance(key, bytes) or not key:
        raise ConfigurationError("the signing secret must be a non-empty str or bytes")
    return key
