"""The instance list: counts per status, filters, one page of instances, the next."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from ...storage import STATUSES
from .html import STATUS_LABELS, badge, esc, live, page, seconds, when
from .http import Request
from .listing import COUNT_CAP, Filters, Page, Row

# The order the counts and the status filter show the statuses in: as a run goes.
STATUS_ORDER = [s for s in STATUS_LABELS if s in STATUSES]


def render_list(
    request: Request, listing: Page, workflows: Sequence[str], problem: str | None = None
) -> str:
    filters = listing.filters
    parts = ["<h1>Workflow instances</h1>", _filter_form(filters, workflows)]
    if problem is not None:
        parts.append(f'<p id="notice" class="notice error" role="alert">{esc(problem)}</p>')
    parts.append(
        live(_counts(request, listing) + _table(request, listing.rows) + _pager(request, listing))
    )
    return page(request, "Workflow instances", "\n".join(parts), refresh=True)


def _counts(request: Request, listing: Page) -> str:
    filters = listing.filters
    items = []
    total = 0
    for status in STATUS_ORDER:
        count = listing.counts.get(status, 0)
        total += count
        shown = f"{count:,}+" if count >= COUNT_CAP else f"{count:,}"
        link = request.url("/", **filters.query(status=status, after=None, id=None))
        current = ' aria-current="true"' if filters.status == status else ""
        items.append(
            f'<li><a href="{esc(link)}" data-status="{status}"{current}>'
            f'{badge(status)} <span class="count">{shown}</span></a></li>'
        )
    everything = request.url("/", **filters.query(status=None, id=None))
    items.insert(
        0,
        f'<li><a href="{esc(everything)}" data-status="">all '
        f'<span class="count">{total:,}{"+" if total >= COUNT_CAP else ""}</span></a></li>',
    )
    return (
        '<nav id="status-counts" aria-label="Instances by status"><ul>'
        + "".join(items)
        + "</ul></nav>"
    )


def _local(moment: datetime | None) -> str:
    """The value of a datetime-local input (UTC)."""
    return "" if moment is None else moment.strftime("%Y-%m-%dT%H:%M")


def _filter_form(filters: Filters, workflows: Sequence[str]) -> str:
    statuses = "".join(
        f'<option value="{s}"{" selected" if filters.status == s else ""}>'
        f"{esc(STATUS_LABELS[s])}</option>"
        for s in STATUS_ORDER
    )
    names = sorted(set(workflows) | ({filters.workflow} if filters.workflow else set()))
    options = "".join(
        f'<option value="{esc(n)}"{" selected" if filters.workflow == n else ""}>{esc(n)}</option>'
        for n in names
    )
    search = "" if filters.search is None else "=".join(filters.search)
    return f"""<form id="filters" method="get" action="" role="search"
 aria-label="Filter instances">
<div class="field"><label for="filter-status">Status</label>
<select id="filter-status" name="status"><option value="">any</option>{statuses}</select></div>
<div class="field"><label for="filter-workflow">Workflow</label>
<select id="filter-workflow" name="workflow"><option value="">any</option>{options}</select></div>
<div class="field"><label for="filter-search">Business key</label>
<input id="filter-search" name="search" placeholder="order_id=ORD-4" value="{esc(search)}"></div>
<div class="field"><label for="filter-id">Instance id</label>
<input id="filter-id" name="id" value="{esc(filters.instance_id)}"></div>
<div class="field"><label for="filter-created-after">Started from (UTC)</label>
<input id="filter-created-after" name="created_after" type="datetime-local"
 value="{_local(filters.created_after)}"></div>
<div class="field"><label for="filter-created-before">Started before (UTC)</label>
<input id="filter-created-before" name="created_before" type="datetime-local"
 value="{_local(filters.created_before)}"></div>
<div class="buttons"><button type="submit">Filter</button> <a href="?">Clear</a></div>
</form>"""


def _table(request: Request, rows: Sequence[Row]) -> str:
    body = "".join(_row(request, row) for row in rows)
    if not rows:
        body = '<tr id="instances-empty"><td colspan="6">No instances match.</td></tr>'
    return f"""<div class="scroll"><table id="instances">
<caption class="visually-hidden">Workflow instances, newest first</caption>
<thead><tr><th scope="col">Instance</th><th scope="col">Workflow</th>
<th scope="col">Status</th><th scope="col">Started (UTC)</th><th scope="col">Duration</th>
<th scope="col">Current step</th></tr></thead>
<tbody>{body}</tbody></table></div>"""


def _row(request: Request, row: Row) -> str:
    instance = row.instance
    link = request.instance_url(instance.instance_id)
    return (
        f'<tr data-instance-id="{esc(instance.instance_id)}" data-status="{esc(instance.status)}">'
        f'<th scope="row"><a href="{esc(link)}">{esc(instance.instance_id)}</a></th>'
        f'<td data-label="Workflow">{esc(instance.workflow_name)}</td>'
        f'<td data-label="Status">{badge(instance.status)}</td>'
        f'<td data-label="Started">{when(instance.created_at)}</td>'
        f'<td data-label="Duration">{seconds(row.duration)}</td>'
        f'<td data-label="Current step">{esc(row.current_step or "")}</td></tr>'
    )


def _pager(request: Request, listing: Page) -> str:
    parts = []
    if listing.filters.after is not None:
        first = request.url("/", **listing.filters.query())
        parts.append(f'<a id="first-page" href="{esc(first)}">Newest</a>')
    if listing.next_cursor is not None:
        following = request.url("/", **listing.filters.query(after=listing.next_cursor))
        parts.append(f'<a id="next-page" rel="next" href="{esc(following)}">Older →</a>')
    return f'<nav class="pager" aria-label="Pages">{" ".join(parts)}</nav>'
