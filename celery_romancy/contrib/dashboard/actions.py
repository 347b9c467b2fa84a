"""The operators' actions: cancel with a reason, resume, retry the compensation, send
an event. Each is a POST to ``/actions/<action>/<instance id>`` that must carry a CSRF
token and pass ``authorize`` (which names who acts); each goes through the
``Romancy`` method of the same name with ``by=`` that name, so it is recorded with the
instance's operator actions."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...states import ACTIVE, PARKED_ERRORS, Status
from ...storage import WorkflowInstance
from .html import esc
from .http import Request

if TYPE_CHECKING:
    from ...app import Romancy

# Who may act: the actor's name (recorded with the action), or None to refuse.
Authorize = Callable[[Request], "str | None"]

ACTIONS = ("cancel", "resume", "retry-compensation", "send-event")
DEFAULT_REASON = "cancelled from the dashboard"


class BadActionError(ValueError):
    """A form the action cannot use; its message says why."""


# What the page says after each action (``?done=<key>``).
NOTICES = {
    "cancel": "cancellation requested",
    "cancel-already": "it was already being cancelled or rolled back: nothing changed",
    "resume": "resumed",
    "retry-compensation": "retrying the compensation",
    "send-event": "event sent",
}


def perform(
    romancy: Romancy, action: str, instance_id: str, form: dict[str, str], actor: str
) -> str:
    """Carry out ``action``; return what happened (a key of ``NOTICES``). The package's
    errors (refused, unknown instance, bad input) pass through to the caller."""
    if action == "cancel":
        reason = form.get("reason", "").strip() or DEFAULT_REASON
        requested = romancy.cancel(instance_id, reason, by=actor)
        return "cancel" if requested else "cancel-already"
    if action == "resume":
        romancy.resume(instance_id, by=actor)
    elif action == "retry-compensation":
        romancy.retry_compensation(instance_id, by=actor)
    elif action == "send-event":
        event_type = form.get("event_type", "").strip()
        if not event_type:
            raise BadActionError("give the event's type")
        data = _data(form.get("data", "").strip() or "null")
        romancy.send_event(event_type, data, instance_id=instance_id, by=actor)
    else:
        raise BadActionError(f"no action {action!r}")
    return action


def _data(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise BadActionError(f"the event's data is not JSON: {exc}") from None


def available(instance: WorkflowInstance) -> list[str]:
    """The actions the instance's status allows."""
    found = []
    status = instance.status
    if status in ACTIVE and instance.cancel_reason is None:
        found.append("cancel")
    parked = status == Status.FAILED and (instance.error or {}).get("type") in PARKED_ERRORS
    if status in (Status.PENDING, Status.RUNNING, Status.COMPENSATING) or parked:
        found.append("resume")
    if status == Status.COMPENSATION_FAILED:
        found.append("retry-compensation")
    if not instance.is_terminal:
        found.append("send-event")
    return found


def render_forms(request: Request, instance: WorkflowInstance, field: str, token: str) -> str:
    """The ``#actions`` section: one form per action the status allows."""
    hidden = f'<input type="hidden" name="{esc(field)}" value="{esc(token)}">'
    forms = []
    for action in available(instance):
        target = esc(request.instance_url(instance.instance_id, f"/actions/{action}/"))
        fields = ""
        label = action.replace("-", " ").capitalize()
        if action == "cancel":
            fields = (
                '<label for="cancel-reason">Reason</label>'
                '<input id="cancel-reason" name="reason" required maxlength="1000" '
                f'value="{DEFAULT_REASON}">'
            )
        elif action == "send-event":
            fields = (
                '<label for="event-type">Event type</label>'
                '<input id="event-type" name="event_type" required maxlength="200">'
                '<label for="event-data">Data (JSON)</label>'
                '<textarea id="event-data" name="data" rows="2">null</textarea>'
            )
        forms.append(
            f'<form id="action-{action}" class="action" method="post" action="{target}">'
            f'{hidden}{fields}<button type="submit">{label}</button></form>'
        )
    if not forms:
        return ""
    return (
        '<section id="actions" aria-labelledby="actions-title">'
        '<h2 id="actions-title">Actions</h2>' + "".join(forms) + "</section>"
    )
