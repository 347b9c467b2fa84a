"""One instance: its summary, input and output, the saga as a timeline (a gather's
branches side by side, child workflows linked, each step's times, attempts, worker,
result or error, its Celery task in Flower), the undo path, child workflows, outbox
events, and the operators' actions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from ...inspection import InstanceRecord
from ...storage import AttemptRecord, OutboxRecord, WorkflowInstance
from ..status import duration
from .html import badge, esc, live, page, pretty_json, seconds, short_json, when
from .http import Request
from .timeline import Entry, Undo, timeline, undo_path

STATE_LABELS = {
    "registered": "not run",
    "completed": "done",
    "failed": "failed",
    "open": "in progress",
    "running": "running",
    "sent": "sent, not started yet",
    "retrying": "retry due",
    "waiting": "waiting",
    "parked": "parked: needs an operator",
    "not_sent": "not sent",
    "done": "done",
}


def render_instance(
    request: Request,
    record: InstanceRecord,
    *,
    flower_url: str | None,
    actions: str = "",
    notice: tuple[str, str] | None = None,
) -> str:
    """``actions``: the action forms (``actions.render_forms``), or "" when read-only;
    ``notice``: (kind, message) after an action: "done" or "error"."""
    instance = record.instance
    parts = []
    if notice is not None:
        kind, message = notice
        role = "alert" if kind == "error" else "status"
        parts.append(f'<p id="notice" class="notice {esc(kind)}" role="{role}">{esc(message)}</p>')
    # The headline and the actions change with the status: refreshed with the rest.
    details = [
        f'<h1>Instance <span class="id">{esc(instance.instance_id)}</span> '
        f"{badge(instance.status, 'status')}</h1>",
        _summary(request, record),
        actions,
        _error(instance),
        '<section aria-labelledby="timeline-title"><h2 id="timeline-title">Steps</h2>'
        + _timeline(request, timeline(record), flower_url)
        + "</section>",
        _undo_path(request, undo_path(record), flower_url),
        _children(request, record),
        _outbox(record.outbox),
        '<section aria-labelledby="data-title"><h2 id="data-title">Input and output</h2>'
        '<div class="columns"><div><h3>Input</h3>'
        + pretty_json(instance.input_data, "input")
        + "</div><div><h3>Output</h3>"
        + pretty_json(instance.output_data, "output")
        + "</div></div></section>",
    ]
    parts.append(live("\n".join(p for p in details if p)))
    return page(
        request,
        f"{instance.workflow_name} {instance.instance_id}",
        "\n".join(p for p in parts if p),
        refresh=not instance.is_terminal,
    )


def _summary(request: Request, record: InstanceRecord) -> str:
    instance = record.instance
    end = instance.updated_at if instance.is_terminal else None
    rows: list[tuple[str, str]] = [
        ("Workflow", esc(instance.workflow_name)),
        ("Status", badge(instance.status)),
        ("Started", when(instance.created_at)),
        ("Updated", when(instance.updated_at)),
        ("Duration", seconds(duration(instance.created_at, end)) if end else "running"),
    ]
    if instance.workflow_version:
        rows.append(("Version", esc(instance.workflow_version)))
    for label, other in (
        ("Parent", instance.parent_instance_id),
        ("Root", instance.root_instance_id),
        ("Continues", instance.continued_from),
    ):
        if other and (label != "Root" or other != instance.parent_instance_id):
            rows.append((label, f'<a href="{esc(request.instance_url(other))}">{esc(other)}</a>'))
    if record.search:
        keys = ", ".join(f"{esc(k)}={esc(v)}" for k, v in sorted(record.search.items()))
        rows.append(("Business keys", keys))
    if instance.cancel_reason is not None:
        rows.append(("Cancel reason", esc(instance.cancel_reason)))
    items = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in rows)
    return f'<dl id="instance" class="summary">{items}</dl>'


def _error(instance: WorkflowInstance) -> str:
    if not instance.error:
        return ""
    parts = [_error_block(instance.error, "error-traceback")]
    undo = instance.error.get("compensation_error")
    if isinstance(undo, dict):
        parts.append("<h3>The compensation that failed</h3>")
        parts.append(_error_block(undo, "undo-traceback"))
    return (
        '<section id="error" aria-labelledby="error-title" class="error">'
        '<h2 id="error-title">Error</h2>' + "".join(parts) + "</section>"
    )


def _error_block(error: dict[str, Any], element_id: str | None = None) -> str:
    where = f" in step {esc(error['step'])}" if error.get("step") else ""
    text = (
        f'<p><strong class="error-type">{esc(error.get("type"))}</strong>: '
        f"{esc(error.get('message'))}{where}</p>"
    )
    if error.get("traceback"):
        ident = f' id="{esc(element_id)}"' if element_id else ""
        text += (
            f"<details{ident}><summary>Traceback</summary>"
            f'<pre class="traceback">{esc(error["traceback"])}</pre></details>'
        )
    return text


def _timeline(request: Request, entries: Sequence[Entry], flower_url: str | None) -> str:
    if not entries:
        return '<p id="timeline-empty">Nothing recorded yet.</p><ol id="timeline" hidden></ol>'
    items = "".join(_entry(request, e, flower_url) for e in entries)
    return f'<ol id="timeline" class="timeline">{items}</ol>'


def _entry(request: Request, entry: Entry, flower_url: str | None) -> str:
    attributes = (
        f'class="entry kind-{esc(entry.kind)} state-{esc(entry.state)}" '
        f'data-kind="{esc(entry.kind)}" data-state="{esc(entry.state)}"'
    )
    if entry.step_id is not None:
        attributes += f' data-step-id="{esc(entry.step_id)}"'
    if entry.kind == "operator":
        who = esc(entry.actor or "someone")
        detail = ""
        if entry.detail:
            detail = f" <span class='detail'>{esc(short_json(entry.detail))}</span>"
        return (
            f"<li {attributes}><span class='what'>{who} did <strong>"
            f"{esc(entry.name.replace('_', ' '))}</strong></span>{detail} "
            f"<span class='times'>{when(entry.started_at)}</span></li>"
        )
    head = (
        f'<span class="what"><span class="kind">{esc(entry.kind.replace("_", " "))}</span> '
        f"<strong>{esc(entry.name)}</strong></span> "
        f'<span class="state">{esc(STATE_LABELS.get(entry.state, entry.state))}</span>'
    )
    facts: list[tuple[str, str]] = []
    if entry.step_id is not None:
        facts.append(("step", esc(entry.step_id)))
    if entry.attempt is not None and entry.kind in ("activity", "compensation"):
        facts.append(("attempt", str(entry.attempt)))
    if entry.state != "not_sent":
        facts.append(("started", when(entry.started_at)))
    if entry.finished_at is not None:
        facts.append(("ended", when(entry.finished_at)))
        facts.append(("took", seconds(entry.duration)))
    if entry.until is not None:
        facts.append(("until", when(entry.until)))
    if entry.detail is not None:
        facts.append(("correlation id", esc(entry.detail)))
    facts += _where_it_ran(request, entry.worker, entry.task_id, entry.child_id, flower_url)
    body = _facts(facts)
    if entry.kind == "gather":
        branches = "".join(f"<li>{_branch(request, b, flower_url)}</li>" for b in entry.branches)
        body += f'<ul class="branches" aria-label="Parallel branches">{branches}</ul>'
    elif entry.error is not None:
        body += _error_block(entry.error)
    elif entry.state in ("completed",) and entry.result is not None:
        body += f"<details><summary>Result</summary>{pretty_json(entry.result)}</details>"
    body += _failed_attempts(entry.attempts)
    return f"<li {attributes}>{head}{body}</li>"


def _facts(facts: Sequence[tuple[str, str]]) -> str:
    return '<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"


def _where_it_ran(
    request: Request,
    worker: str | None,
    task_id: str | None,
    child_id: str | None,
    flower_url: str | None,
) -> list[tuple[str, str]]:
    """A step's or a compensation's worker, Celery task and child workflow, as facts."""
    facts = []
    if worker:
        facts.append(("worker", esc(worker)))
    if task_id:
        facts.append(("task", _task(task_id, flower_url)))
    if child_id:
        link = esc(request.instance_url(child_id))
        facts.append(("child", f'<a class="child" href="{link}">{esc(child_id)}</a>'))
    return facts


def _task(task_id: str, flower_url: str | None) -> str:
    """A step's Celery task id, linked to the task's page in Flower when it is known."""
    if not flower_url:
        return esc(task_id)
    # One path segment, whatever the id holds ("/", "?", "#"): Flower's page of this task.
    target = esc(f"{flower_url.rstrip('/')}/task/{quote(task_id, safe='')}")
    return f'<a class="flower" href="{target}">{esc(task_id)}</a>'


def _failed_attempts(attempts: Sequence[AttemptRecord]) -> str:
    if not attempts:
        return ""
    failed = "".join(
        f"<li>attempt {a.attempt}, {when(a.created_at)}"
        + (f" on {esc(a.worker_id)}" if a.worker_id else "")
        + (f", retry in {a.retry_in:g} s" if a.retry_in is not None else "")
        + _error_block(a.error)
        + "</li>"
        for a in attempts
    )
    plural = "s" if len(attempts) > 1 else ""
    return (
        f'<details class="attempts"><summary>{len(attempts)} failed attempt{plural}</summary>'
        f"<ol>{failed}</ol></details>"
    )


def _branch(request: Request, entry: Entry, flower_url: str | None) -> str:
    # A branch is drawn like a step, in a column of its own.
    inner = _entry(request, entry, flower_url)
    return f'<ol class="branch">{inner}</ol>'


def _undo_path(request: Request, path: Sequence[Undo], flower_url: str | None) -> str:
    if not path:
        return ""
    items = "".join(_undo(request, undo, flower_url) for undo in path)
    return (
        '<section aria-labelledby="undo-title"><h2 id="undo-title">Undo path</h2>'
        "<p>Compensations in the order a rollback runs them: newest step first.</p>"
        f'<ol id="compensations" class="undo-path">{items}</ol></section>'
    )


def _undo(request: Request, undo: Undo, flower_url: str | None) -> str:
    c = undo.compensation
    facts = [("attempts", str(c.attempts)), ("ended", when(c.finished_at))]
    facts += _where_it_ran(request, undo.worker, undo.task_id, undo.child_id, flower_url)
    return (
        f'<li class="undo state-{esc(undo.state)}" data-step-id="{esc(c.step_id)}" '
        f'data-status="{esc(c.status)}"><span class="what"><span class="kind">'
        f"{'undo child' if c.kind == 'child' else 'compensation'}</span> "
        f"<strong>{esc(c.name)}</strong> undoes {esc(c.step_id)}</span> "
        f'<span class="state">{esc(STATE_LABELS.get(undo.state, undo.state))}</span>'
        + _facts(facts)
        + (_error_block(c.error) if c.error else "")
        + _failed_attempts(undo.attempts)
        + "</li>"
    )


def _children(request: Request, record: InstanceRecord) -> str:
    if not record.children:
        return ""
    rows = "".join(
        f'<tr data-instance-id="{esc(c.instance_id)}"><th scope="row">'
        f'<a href="{esc(request.instance_url(c.instance_id))}">{esc(c.instance_id)}</a></th>'
        f'<td data-label="Workflow">{esc(c.workflow_name)}</td>'
        f'<td data-label="Status">{badge(c.status)}</td>'
        f'<td data-label="Started">{when(c.created_at)}</td></tr>'
        for c in record.children
    )
    more = " (newest 200 shown)" if record.more_children else ""
    return (
        '<section aria-labelledby="children-title">'
        f'<h2 id="children-title">Child workflows{more}</h2><div class="scroll">'
        '<table id="children"><thead><tr><th scope="col">Instance</th>'
        '<th scope="col">Workflow</th><th scope="col">Status</th><th scope="col">Started</th>'
        f"</tr></thead><tbody>{rows}</tbody></table></div></section>"
    )


def _outbox(outbox: Sequence[OutboxRecord]) -> str:
    if not outbox:
        return ""
    rows = "".join(
        f'<tr><th scope="row">{esc(o.event_type)}</th>'
        f'<td data-label="Event id">{esc(o.event_id)}</td>'
        f'<td data-label="Status">{esc(o.status)}</td>'
        f'<td data-label="Created">{when(o.created_at)}</td>'
        f'<td data-label="Published">{when(o.published_at)}</td>'
        f'<td data-label="Data"><details><summary>{esc(short_json(o.data, 40))}</summary>'
        f"{pretty_json(o.data)}</details></td></tr>"
        for o in outbox
    )
    return (
        '<section aria-labelledby="outbox-title"><h2 id="outbox-title">Published events</h2>'
        '<div class="scroll"><table id="outbox"><thead><tr><th scope="col">Type</th>'
        '<th scope="col">Event id</th><th scope="col">Status</th><th scope="col">Created</th>'
        '<th scope="col">Published</th><th scope="col">Data</th></tr></thead>'
        f"<tbody>{rows}</tbody></table></div></section>"
    )
