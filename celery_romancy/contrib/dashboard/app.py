"""``Dashboard``: the dashboard's routes, as one function from a ``Request`` to a
``Response`` (``handle``), and that function as a WSGI application (``__call__``).

    GET  /                             the instance list (filters in the query string)
    GET  /instances/<id>               one instance
    GET  /api/instances                the list as JSON (status, workflow, search, id,
                                       created_after, created_before, limit, after)
    GET  /api/instances/<id>           one instance as JSON, with its steps
    GET  /api/counts                   instances per status (workflow, created_*)
    GET  /static/dashboard.css|.js     the page's style sheet and script
    POST /actions/<action>/<id>        cancel, resume, retry-compensation, send-event
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from ...errors import (
    ConfigurationError,
    InvalidArgumentsError,
    RomancyError,
    UnknownInstanceError,
)
from ...inspection import read_instance
from . import api
from .actions import ACTIONS, NOTICES, Authorize, BadActionError, perform, render_forms
from .csrf import CsrfProtection, SignedDoubleSubmit
from .http import Request, Response, as_json, error, html, redirect
from .instance_page import render_instance
from .list_page import render_list
from .listing import BadFilterError, Filters, Page, read_counts, read_page
from .wsgi import request_of

if TYPE_CHECKING:
    from ...app import Romancy

logger = logging.getLogger(__name__)

STATIC = {"dashboard.css": "text/css; charset=utf-8", "dashboard.js": "text/javascript"}

StartResponse = Callable[..., Any]


class Dashboard:
    """The dashboard of ``romancy``'s instances, a WSGI application.

    ``flower_url``: Flower's address; each step then links to its Celery task there.
    ``read_only``: no action forms, every POST refused. ``authorize(request)``: the name
    of whoever may act (recorded with each action), or None to refuse; asked for each
    action, and for each instance page (the forms are shown only to those who may act);
    without it no one can act. ``csrf``: how POSTs are protected (default: a signed double-submit
    cookie with ``secret``, random per process unless given: give one secret to every
    process that serves the dashboard).
    """

    def __init__(
        self,
        romancy: Romancy,
        *,
        flower_url: str | None = None,
        read_only: bool = False,
        authorize: Authorize | None = None,
        csrf: CsrfProtection | None = None,
        secret: bytes | None = None,
    ) -> None:
        if flower_url is not None and urlsplit(flower_url).scheme not in ("http", "https"):
            raise ConfigurationError(f"flower_url must be an http(s) address, not {flower_url!r}")
        if authorize is not None and not callable(authorize):
            raise ConfigurationError("authorize must be a callable: request -> actor name or None")
        if secret is not None and not (isinstance(secret, bytes) and secret):
            # b"" would fall back to a random secret, unlike the other processes'.
            raise ConfigurationError(f"secret must be bytes, not empty: {type(secret).__name__}")
        self.romancy = romancy
        self.flower_url = flower_url.rstrip("/") if flower_url else None
        self.read_only = read_only
        self.authorize = authorize
        self.csrf = csrf or SignedDoubleSubmit(secret)

    @property
    def acts(self) -> bool:
        """Whether the pages offer actions at all."""
        return not self.read_only and self.authorize is not None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        response = self.handle(request_of(environ))
        start_response(response.status_line, response.all_headers())
        return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else [response.body]

    def handle(self, request: Request) -> Response:
        try:
            return self._route(request)
        except Exception:  # one request's failure, answered as a 500
            logger.exception("dashboard: %s %s failed", request.method, request.path)
            api_call = request.path.startswith("/api/")
            return error(500, "the dashboard failed on this request; see its log", api_call)

    def _route(self, request: Request) -> Response:
        path, method = request.path, request.method
        if method == "POST":
            if path.startswith("/actions/"):
                action, _, instance_id = path[len("/actions/") :].partition("/")
                return self._act(request, action, instance_id)
            return error(405, "only the actions take a POST")
        if method not in ("GET", "HEAD"):
            return error(405, f"{method} is not allowed here")
        if path in ("/", ""):
            return self._list(request)
        if path.startswith("/instances/"):
            return self._instance(request, path[len("/instances/") :])
        if path == "/api/instances":
            return self._api_list(request)
        if path.startswith("/api/instances/"):
            return self._api_instance(path[len("/api/instances/") :])
        if path == "/api/counts":
            return self._api_counts(request)
        if path.startswith("/static/"):
            return _static(path[len("/static/") :])
        return error(404, "no such page", path.startswith("/api/"))

    # -- pages ---------------------------------------------------------------------------

    def _list(self, request: Request) -> Response:
        workflows = list(self.romancy.registry.workflows)
        try:
            filters = Filters.parse(request.query)
        except BadFilterError as exc:
            empty = Page(Filters(), [], None, {})
            return html(render_list(request, empty, workflows, str(exc)), 400)
        try:
            listing = read_page(self.romancy, filters)
        except BadFilterError as exc:
            empty = Page(filters, [], None, {})
            return html(render_list(request, empty, workflows, str(exc)), 400)
        return html(render_list(request, listing, workflows))

    def _instance(
        self,
        request: Request,
        instance_id: str,
        notice: tuple[str, str] | None = None,
        status: int = 200,
    ) -> Response:
        try:
            record = read_instance(self.romancy, instance_id)
        except UnknownInstanceError as exc:
            return error(404, str(exc))
        done = request.query.get("done")
        if notice is None and done in NOTICES:
            notice = ("done", NOTICES[done])
        forms, headers = "", list[tuple[str, str]]()
        if self.acts and self.authorize is not None and self.authorize(request) is not None:
            token, headers = self.csrf.token(request)
            forms = render_forms(request, record.instance, self.csrf.field, token)
        text = render_instance(
            request, record, flower_url=self.flower_url, actions=forms, notice=notice
        )
        response = html(text, status)
        response.headers.extend(headers)
        return response

    # -- the JSON API --------------------------------------------------------------------

    def _api_list(self, request: Request) -> Response:
        try:
            listing = read_page(self.romancy, Filters.parse(request.query), with_counts=False)
        except BadFilterError as exc:
            return error(400, str(exc), api=True)
        return as_json(api.page_json(listing))

    def _api_counts(self, request: Request) -> Response:
        try:
            filters = Filters.parse(request.query)
        except BadFilterError as exc:
            return error(400, str(exc), api=True)
        return as_json(api.counts_json(read_counts(self.romancy, filters)))

    def _api_instance(self, instance_id: str) -> Response:
        try:
            record = read_instance(self.romancy, instance_id)
        except UnknownInstanceError as exc:
            return error(404, str(exc), api=True)
        return as_json(api.instance_json(record))

    # -- actions -------------------------------------------------------------------------

    def _act(self, request: Request, action: str, instance_id: str) -> Response:
        if action not in ACTIONS:
            return error(404, f"no action {action!r}")
        if not self.acts:
            return error(403, "this dashboard is read-only")
        if not self.csrf.check(request):
            return error(403, "the form's CSRF token is missing or wrong: reload the page")
        assert self.authorize is not None
        actor = self.authorize(request)
        if actor is None:
            return error(403, "you may not act on workflow instances here")
        try:
            done = perform(self.romancy, action, instance_id, dict(request.form), actor)
        except UnknownInstanceError as exc:
            return error(404, str(exc))
        except (BadActionError, InvalidArgumentsError) as exc:
            return self._instance(request, instance_id, ("error", str(exc)), 400)
        except RomancyError as exc:  # refused: the instance's status does not allow it
            return self._instance(request, instance_id, ("error", str(exc)), 409)
        return redirect(request.url(f"/instances/{quote(instance_id, safe='')}", done=done))


def _static(name: str) -> Response:
    # ``name`` is decoded already (PATH_INFO): decoding it again would let a name such
    # as ``dashboard%2Ecss`` pass this check and then miss the file (a 500).
    content_type = STATIC.get(name)
    if content_type is None:
        return error(404, "no such file")
    body = resources.files(__package__).joinpath("static", name).read_bytes()
    return Response(200, body, content_type)
