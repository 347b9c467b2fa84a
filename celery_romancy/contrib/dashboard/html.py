"""Small pieces of server-side HTML: escaping, times, JSON, the page layout.

Every value from storage goes through ``esc`` (``html.escape``); markup is built with
f-strings around escaped values only.
"""

from __future__ import annotations

import json
from datetime import datetime
from html import escape
from typing import Any

from .http import Request

STATUS_LABELS = {
    "pending": "pending",
    "running": "running",
    "waiting_for_timer": "waiting (timer)",
    "waiting_for_event": "waiting (event)",
    "compensating": "compensating",
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
    "compensation_failed": "compensation failed",
    "compensated": "compensated",
    "continued": "continued",
}


def esc(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def when(moment: datetime | None) -> str:
    """A ``<time>`` in UTC, to the second (the full value in its datetime attribute)."""
    if moment is None:
        return "-"
    shown = moment.strftime("%Y-%m-%d %H:%M:%S")
    return f'<time datetime="{esc(moment.isoformat())}">{shown}</time>'


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.2f} s"
    minutes, rest = divmod(int(value), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours} h"
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {rest} s"


def badge(status: str, element_id: str | None = None) -> str:
    ident = f' id="{esc(element_id)}"' if element_id else ""
    label = STATUS_LABELS.get(status, status)
    return f'<span{ident} class="badge status-{esc(status)}">{esc(label)}</span>'


def pretty_json(value: Any, element_id: str | None = None) -> str:
    ident = f' id="{esc(element_id)}"' if element_id else ""
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str, sort_keys=True)
    return f'<pre class="json"{ident}>{esc(text)}</pre>'


def short_json(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def live(body: str) -> str:
    """The part of a page that auto-refresh replaces with the same part fetched anew."""
    return f'<div id="live" data-refreshable="true">{body}</div>'


def page(request: Request, title: str, body: str, *, refresh: bool = False) -> str:
    """A whole page: header with the dashboard's name, ``body`` as its main landmark.
    ``refresh``: the page offers auto-refresh of its ``live`` part (dashboard.js)."""
    base = esc(request.base)
    refreshing = ' data-refresh="true"' if refresh else ""
    if refresh:
        body = (
            '<p class="refresh"><label><input type="checkbox" id="auto-refresh" checked> '
            'Refresh every 5 s</label> <span id="refreshed-at" aria-live="polite"></span></p>'
            + body
        )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} · Romancy</title>
<link rel="stylesheet" href="{base}/static/dashboard.css">
<script src="{base}/static/dashboard.js" defer></script>
</head>
<body{refreshing}>
<a class="skip" href="#main">Skip to content</a>
<header class="top">
<nav aria-label="Dashboard"><a class="brand" href="{base}/">Romancy</a>
<a href="{base}/">Instances</a> <a href="{base}/api/instances">JSON API</a></nav>
</header>
<main id="main">
{body}
</main>
</body>
</html>
"""
