"""A read-only Django admin for workflow instances, with the operator actions.

Listed under "Celery Romancy" in the admin index: a list of instances (newest first)
with filters by status, workflow and creation date and a search by instance id or
business key (``order_id=ORD-4``, or only the value), and a page per instance with its
steps (history), failed attempts, compensations, child workflows and the steps in
flight. Staff users with the ``change`` permission can cancel, resume or retry a failed
compensation, on the list (several at once) or on an instance's page: the same calls as
``romancy.cancel`` / ``resume`` / ``retry_compensation``, each logged in the admin log.

The history is read through the ``Romancy`` of the project's Celery app
(``project_romancy``), over its own SQLAlchemy connection, so it works the same whether
the history lives in Django's database or another one (``CELERY_ROMANCY_DATABASE_URL``):
no Django database entry, router or migration is needed for it. The model registered
here (``models.WorkflowInstance``) has no table and is never queried. Subclass
``WorkflowInstanceAdmin`` and override ``get_romancy`` for a project with several Celery
apps.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, QueryDict
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from ...app import Romancy
from ...errors import RomancyError, UnknownInstanceError
from ...operations import MOVING
from ...states import ACTIVE, PARKED_ERRORS, Status
from ...storage import WorkflowInstance as StoredInstance
from ...storage import schema
from ...storage.rows import instance_of
from . import project_romancy
from .models import WorkflowInstance

PAGE_SIZE = 100
# An instance's page lists this many child workflows at most (newest), like ``show``.
CHILDREN_SHOWN = 200
# Query string and form names (the search and the selection are Django admin's).
SEARCH_VAR = "q"
STATUS_VAR = "status"
WORKFLOW_VAR = "workflow"
CREATED_VAR = "created"
PAGE_VAR = "p"
ACTION_VAR = "action"
SELECTED_VAR = "_selected_action"
REASON_VAR = "reason"
CREATED_CHOICES = (
    ("today", "Today"),
    ("7d", "Past 7 days"),
    ("month", "This month"),
    ("year", "This year"),
)


@dataclass(frozen=True)
class Action:
    """An operator action: its form value, its label, and what it calls."""

    name: str
    label: str  # in the list's action menu
    button: str  # on an instance's page
    done: str  # for the message: "Resumed 2 workflow instances"
    applies: Callable[[StoredInstance], bool]


def can_cancel(instance: StoredInstance) -> bool:
    return instance.status in ACTIVE and instance.cancel_reason is None


def can_resume(instance: StoredInstance) -> bool:
    parked = (
        instance.status == Status.FAILED and (instance.error or {}).get("type") in PARKED_ERRORS
    )
    return instance.status in MOVING or parked


def can_retry_compensation(instance: StoredInstance) -> bool:
    return instance.status == Status.COMPENSATION_FAILED


ACTIONS = (
    Action(
        "cancel", "Cancel selected workflow instances", "Cancel", "cancel requested for", can_cancel
    ),
    Action("resume", "Resume selected workflow instances", "Resume", "resumed", can_resume),
    Action(
        "retry_compensation",
        "Retry the failed compensation of selected workflow instances",
        "Retry compensation",
        "compensation retried for",
        can_retry_compensation,
    ),
)
ACTIONS_BY_NAME = {action.name: action for action in ACTIONS}


@dataclass(frozen=True)
class ListQuery:
    """What the list shows: the filters and search from the query string, and the page."""

    status: str | None = None
    workflow: str | None = None
    created: str | None = None
    search: str = ""
    page: int = 0

    @classmethod
    def from_params(cls, params: QueryDict) -> ListQuery:
        status = params.get(STATUS_VAR) or None
        created = params.get(CREATED_VAR) or None
        try:
            page = max(int(params.get(PAGE_VAR, "0")), 0)
        except ValueError:
            page = 0
        return cls(
            status=status if status in set(Status) else None,
            workflow=params.get(WORKFLOW_VAR) or None,
            created=created if created in dict(CREATED_CHOICES) else None,
            search=params.get(SEARCH_VAR, "").strip(),
            page=page,
        )


def created_since(choice: str | None, now: datetime) -> datetime | None:
    """The start of a creation-date filter's period, in the current time zone (as
    Django's date filters count days), or None for any date."""
    local: datetime = timezone.localtime(now)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if choice == "today":
        return midnight
    if choice == "7d":
        return midnight - timedelta(days=7)
    if choice == "month":
        return midnight.replace(day=1)
    if choice == "year":
        return midnight.replace(month=1, day=1)
    return None


def search_clause(text: str) -> sa.ColumnElement[bool]:
    """Instances whose id is ``text`` or starts with it, or with a business key whose
    value is ``text``; ``key=value`` also finds that key's value (through its index)."""
    t, keys = schema.instances, schema.search
    # One set of candidate ids, each part found its own way, rather than an OR the
    # database would test on every instance row.
    parts = [
        sa.select(t.c.instance_id).where(t.c.instance_id.startswith(text, autoescape=True)),
        # Any key's value: no index leads there, but the table holds only the keys.
        sa.select(keys.c.instance_id).where(keys.c.value == text),
    ]
    key, equals, value = text.partition("=")
    if equals and key.strip():
        parts.append(
            sa.select(keys.c.instance_id).where(
                keys.c.key == key.strip(), keys.c.value == value.strip()
            )
        )
    return t.c.instance_id.in_(sa.union(*parts))


def find_page(
    romancy: Romancy, query: ListQuery, size: int = PAGE_SIZE
) -> tuple[list[StoredInstance], bool]:
    """One page of instances, newest first, and whether another page follows (no
    count: counting a large history on every page view costs more than it tells)."""
    t = schema.instances
    stmt = (
        sa.select(t)
        .order_by(t.c.created_at.desc(), t.c.instance_id)
        .offset(query.page * size)
        .limit(size + 1)
    )
    if query.status is not None:
        stmt = stmt.where(t.c.status == query.status)
    if query.workflow is not None:
        stmt = stmt.where(t.c.workflow_name == query.workflow)
    since = created_since(query.created, datetime.now(UTC))  # aware, even without USE_TZ
    if since is not None:
        stmt = stmt.where(t.c.created_at >= since)
    if query.search:
        stmt = stmt.where(search_clause(query.search))
    with romancy.storage.engine.connect() as conn:
        found = [instance_of(row._mapping) for row in conn.execute(stmt)]
    return found[:size], len(found) > size


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max((end - start).total_seconds(), 0.0)


@admin.register(WorkflowInstance)
class WorkflowInstanceAdmin(admin.ModelAdmin):  # type: ignore[misc]  # no Django type hints
    change_list_template = "celery_romancy/admin/workflowinstance_list.html"
    change_form_template = "celery_romancy/admin/workflowinstance_detail.html"
    page_size = PAGE_SIZE
    filter_vars = (STATUS_VAR, WORKFLOW_VAR, CREATED_VAR)

    _romancy: Romancy | None = None

    def get_romancy(self, request: HttpRequest) -> Romancy:
        """The ``Romancy`` whose history this admin shows (looked up once: the lookup
        imports the modules Celery autodiscovers)."""
        if self._romancy is None:
            self._romancy = project_romancy()
        return self._romancy

    # -- permissions: read-only, actions need "change" --------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> Any:
        return self.model.objects.none()  # the history is not in the ORM: see the docstring

    # -- URLs --------------------------------------------------------------------------

    def get_urls(self) -> list[Any]:
        info = self.opts.app_label, self.opts.model_name

        def view(function: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
            # The actions commit in the history database on their own; a Django request
            # transaction (ATOMIC_REQUESTS) around them would only hold Django's.
            wrapped: Callable[..., HttpResponse] = self.admin_site.admin_view(function)
            return transaction.non_atomic_requests(wrapped)  # type: ignore[no-any-return]

        return [
            path("", view(self.changelist_view), name="{}_{}_changelist".format(*info)),
            path(
                "<path:object_id>/change/",
                view(self.change_view),
                name="{}_{}_change".format(*info),
            ),
            path("<path:object_id>/", view(self.redirect_to_change)),
        ]

    def redirect_to_change(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return HttpResponseRedirect(self.change_url(unquote(object_id)))

    def changelist_url(self) -> str:
        info = self.opts.app_label, self.opts.model_name
        return str(
            reverse("admin:{}_{}_changelist".format(*info), current_app=self.admin_site.name)
        )

    def change_url(self, instance_id: str) -> str:
        info = self.opts.app_label, self.opts.model_name
        return str(
            reverse(
                "admin:{}_{}_change".format(*info),
                args=(quote(instance_id),),
                current_app=self.admin_site.name,
            )
        )

    # -- the list ------------------------------------------------------------------------

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            selected = request.POST.getlist(SELECTED_VAR)
            self.run_action(request, request.POST.get(ACTION_VAR, ""), selected)
            return HttpResponseRedirect(request.get_full_path())
        romancy = self.get_romancy(request)
        query = ListQuery.from_params(request.GET)
        instances, more = find_page(romancy, query, self.page_size)
        workflows = sorted({*romancy.registry.workflows, *filter(None, [query.workflow])})
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Workflow instances",
            "romancy_query": query,
            "search_var": SEARCH_VAR,
            "hidden_params": [
                (name, value) for name, value in request.GET.items() if name in self.filter_vars
            ],
            "filters": [
                self.filter_spec(request, "status", STATUS_VAR, [(s, s) for s in Status]),
                self.filter_spec(request, "workflow", WORKFLOW_VAR, [(w, w) for w in workflows]),
                self.filter_spec(request, "creation date", CREATED_VAR, list(CREATED_CHOICES)),
            ],
            "has_active_filters": any(request.GET.get(name) for name in self.filter_vars),
            "clear_filters_url": self.query_string(
                request, {name: None for name in self.filter_vars}
            ),
            "rows": [(instance, self.change_url(instance.instance_id)) for instance in instances],
            "actions": ACTIONS if self.has_change_permission(request) else (),
            "action_var": ACTION_VAR,
            "selected_var": SELECTED_VAR,
            "previous_page_url": self.query_string(request, {PAGE_VAR: query.page - 1 or None})
            if query.page > 0
            else None,
            "next_page_url": self.query_string(request, {PAGE_VAR: query.page + 1})
            if more
            else None,
            "page_number": query.page + 1,
            **(extra_context or {}),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.change_list_template, context)

    def filter_spec(
        self, request: HttpRequest, title: str, name: str, choices: Sequence[tuple[str, str]]
    ) -> dict[str, Any]:
        current = request.GET.get(name) or None
        options = [(None, "All"), *choices]
        return {
            "title": title,
            "choices": [
                {
                    "display": display,
                    "selected": value == current,
                    "query_string": self.query_string(request, {name: value, PAGE_VAR: None}),
                }
                for value, display in options
            ],
        }

    @staticmethod
    def query_string(request: HttpRequest, changes: dict[str, Any]) -> str:
        params = request.GET.copy()
        for name, value in changes.items():
            if value is None:
                params.pop(name, None)
            else:
                params[name] = str(value)
        return f"?{params.urlencode()}" if params else "?"

    # -- one instance ----------------------------------------------------------------------

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        instance_id = unquote(object_id)
        if request.method == "POST":
            self.run_action(request, request.POST.get(ACTION_VAR, ""), [instance_id])
            return HttpResponseRedirect(request.get_full_path())
        romancy = self.get_romancy(request)
        try:
            instance = romancy.get_instance(instance_id)
        except UnknownInstanceError:
            self.message_user(
                request, f"No workflow instance with id {instance_id!r}.", messages.WARNING
            )
            return HttpResponseRedirect(self.changelist_url())
        storage = romancy.storage
        history = storage.get_history(instance_id)
        children = romancy.find_instances(parent=instance_id, limit=CHILDREN_SHOWN + 1)
        error = instance.error or {}
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Workflow instance {instance_id}",
            "instance": instance,
            "input_json": pretty_json(instance.input_data),
            "output_json": None
            if instance.output_data is None
            else pretty_json(instance.output_data),
            "error": error or None,
            "compensation_error": error.get("compensation_error")
            if isinstance(error.get("compensation_error"), dict)
            else None,
            "search_attributes": romancy.search_attributes(instance_id),
            "parent_url": self.change_url(instance.parent_instance_id)
            if instance.parent_instance_id
            else None,
            "root_url": self.change_url(instance.root_instance_id)
            if instance.root_instance_id
            else None,
            "history": [
                {
                    "event": event,
                    "result_json": None if event.error else pretty_json(event.result),
                    "seconds": seconds_between(event.started_at, event.created_at),
                }
                for event in history
            ],
            "attempts": storage.get_attempts(instance_id),
            "compensations": [
                {"record": record, "arguments_json": pretty_json(record.arguments)}
                for record in storage.get_compensations(instance_id)
            ],
            "steps": storage.get_steps(instance_id),
            "children": [
                (child, self.change_url(child.instance_id)) for child in children[:CHILDREN_SHOWN]
            ],
            "more_children": len(children) > CHILDREN_SHOWN,
            "actions": [a for a in ACTIONS if a.applies(instance)]
            if self.has_change_permission(request)
            else [],
            "action_var": ACTION_VAR,
            "reason_var": REASON_VAR,
            "changelist_url": self.changelist_url(),
            **(extra_context or {}),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.change_form_template, context)

    # -- actions ---------------------------------------------------------------------------

    def run_action(self, request: HttpRequest, name: str, instance_ids: Sequence[str]) -> None:
        """Run action ``name`` on each instance and tell the user how each went."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        action = ACTIONS_BY_NAME.get(name)
        if action is None:
            self.message_user(request, "No action selected.", messages.WARNING)
            return
        if not instance_ids:
            self.message_user(
                request,
                "Items must be selected in order to perform actions on them.",
                messages.WARNING,
            )
            return
        romancy = self.get_romancy(request)
        reason = request.POST.get(REASON_VAR, "").strip() or (
            f"cancelled by {request.user.get_username()} in the Django admin"
        )
        done: list[str] = []
        for instance_id in instance_ids:
            try:
                note = self.apply_action(romancy, action, instance_id, reason)
            except RomancyError as exc:
                self.message_user(request, f"{instance_id}: {exc}", messages.ERROR)
                continue
            if note is not None:
                self.message_user(request, f"{instance_id}: {note}", messages.WARNING)
                continue
            done.append(instance_id)
            message = f"{action.name.replace('_', ' ')}" + (
                f": {reason}" if action.name == "cancel" else ""
            )
            self.log_change(request, WorkflowInstance(instance_id=instance_id), message)
        if done:
            listed = ", ".join(done)
            self.message_user(
                request,
                f"{action.done.capitalize()} {len(done)} workflow instance"
                f"{'' if len(done) == 1 else 's'}: {listed}",
                messages.SUCCESS,
            )

    def apply_action(
        self, romancy: Romancy, action: Action, instance_id: str, reason: str
    ) -> str | None:
        """Call the Romancy operation; a note when it did nothing, None when it acted."""
        if action.name == "cancel":
            if not romancy.cancel(instance_id, reason):
                return "already being cancelled or rolled back; nothing to do"
        elif action.name == "resume":
            romancy.resume(instance_id)
        else:
            romancy.retry_compensation(instance_id)
        return None
