"""``celery -A proj romancy ...``: look at workflow instances and act on them from a shell.

A Celery subcommand (registered under the ``celery.commands`` entry point, like
Flower), so it runs with the app that ``-A`` names and that app's configuration.

Exit codes: 0 done; 1 refused (the instance's status does not allow it) or the
history database failed; 2 a usage error: a bad option or argument, including an
instance id that does not exist. Errors go to stderr.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import click
import sqlalchemy as sa

from . import schedules
from .app import Romancy
from .continuation import next_run_id
from .contrib.status import duration, instance_status
from .errors import RomancyError, UnknownInstanceError
from .inspection import CHILDREN_SHOWN, read_instance
from .settings import masked_url
from .states import ACTIVE, HistoryKind, Status, StepKind
from .storage import STATUSES, AttemptRecord, HistoryEvent, StepRecord, WorkflowInstance
from .storage.migrate import current_revision
from .storage.purge import PURGEABLE
from .ticks import describe

LIST_LIMIT = 50
# list --root reads a whole tree at once; a larger one is walked with list --parent.
TREE_LIMIT = 10_000


def romancy_of(app: Any) -> Romancy:
    """The ``Romancy`` bound to a Celery app (``Romancy(app)`` registers itself)."""
    setup_django()
    # What ``celery worker`` imports too: the Romancy and its workflows may live in
    # modules the app imports lazily (Django's autodiscovered tasks.py).
    app.loader.import_default_modules()
    found = getattr(app, "_celery_romancy", None)
    if not isinstance(found, Romancy):
        raise click.UsageError(
            f"no Romancy is bound to the Celery app {app.main!r}: create Romancy(app) in the "
            "module -A names, or in one that module imports"
        )
    return found


def setup_django() -> None:
    """Load a Django project's apps, as Celery's worker does, before anything imports a
    model: a ``django-db`` result backend does on the first publish."""
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        return
    try:
        import django
        from django.apps import apps
    except ImportError:  # the variable set, Django not installed: not a Django project
        return
    if not apps.ready:
        django.setup()


@contextmanager
def reported(instance_param: str = "INSTANCE_ID") -> Iterator[None]:
    """Turn the package's errors into click errors with the documented exit codes."""
    try:
        yield
    except UnknownInstanceError as exc:
        raise click.BadParameter(str(exc), param_hint=instance_param) from None
    except RomancyError as exc:
        raise click.ClickException(str(exc)) from None
    except sa.exc.SQLAlchemyError as exc:
        raise click.ClickException(f"history database error: {exc}") from None


@click.group(name="romancy")
@click.pass_context
def romancy(ctx: click.Context) -> None:
    """Durable workflows: list, show, cancel, resume, retry-compensation, send-event, purge,
    migrate, schedules, dashboard."""
    if ctx.obj is None or not hasattr(ctx.obj, "app"):
        raise click.UsageError("run it as a Celery subcommand: celery -A proj romancy ...")


def _romancy(ctx: click.Context) -> Romancy:
    return romancy_of(ctx.obj.app)


@romancy.command(name="list")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(sorted(STATUSES)),
    help="Only instances in this status (repeatable).",
)
@click.option("--workflow", help="Only instances of this workflow.")
@click.option(
    "--version",
    "code_version",
    help="Only instances started under this code version (@romancy.workflow(version=...)).",
)
@click.option("--parent", help="Only the child workflows of this instance.")
@click.option(
    "--search",
    "search_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Only instances with this business key (repeatable: all must match).",
)
@click.option(
    "--root",
    help="The tree of child workflows under this instance, as a tree (takes no other filter).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    help=f"At most this many instances  [default: {LIST_LIMIT}; a whole tree with --root]",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
@click.pass_context
def list_instances(
    ctx: click.Context,
    statuses: tuple[str, ...],
    workflow: str | None,
    code_version: str | None,
    parent: str | None,
    search_pairs: tuple[str, ...],
    root: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """Instances, newest first; with --root, a tree of child workflows, oldest first."""
    search = _search(search_pairs)
    if root is not None:
        given = [
            name
            for name, value in (
                ("--status", statuses),
                ("--workflow", workflow),
                ("--version", code_version),
                ("--parent", parent),
                ("--search", search_pairs),
                ("--limit", limit),
            )
            if value not in (None, ())
        ]
        if given:
            raise click.UsageError(f"--root lists a whole tree: it takes no {', '.join(given)}")
        _list_tree(ctx, root, as_json)
        return
    with reported("--parent"):
        engine = _romancy(ctx)
        if parent is not None:
            engine.get_instance(parent)  # an unknown parent is a usage error, not "(none)"
        found = engine.find_instances(
            status=list(statuses) or None,
            workflow=workflow,
            limit=limit or LIST_LIMIT,
            parent=parent,
            search=search or None,
            version=code_version,
        )
    if as_json:
        click.echo(json.dumps([_summary(i) for i in found], indent=2))
        return
    if any(i.workflow_version is not None for i in found):
        # Versioned code: which instances of which version still run (to drain).
        _table(
            ("INSTANCE", "WORKFLOW", "VERSION", "STATUS", "UPDATED", "NOTE"),
            [
                (
                    i.instance_id,
                    i.workflow_name,
                    i.workflow_version or "-",
                    i.status,
                    _time(i.updated_at),
                    _note(i),
                )
                for i in found
            ],
        )
        return
    rows = [
        (i.instance_id, i.workflow_name, i.status, _time(i.updated_at), _note(i)) for i in found
    ]
    _table(("INSTANCE", "WORKFLOW", "STATUS", "UPDATED", "NOTE"), rows)


def _search(pairs: Sequence[str]) -> dict[str, str]:
    """``--search key=value`` options as one mapping (the value may hold ``=``)."""
    search: dict[str, str] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--search")
        if search.get(key, value) != value:
            raise click.BadParameter(
                f"{key} given twice ({search[key]!r} and {value!r}): an instance has one value",
                param_hint="--search",
            )
        search[key] = value
    return search


def _list_tree(ctx: click.Context, top_id: str, as_json: bool) -> None:
    """``list --root``: the instance and every child workflow under it, each under its
    parent. ``top_id`` may itself be a child: its subtree is shown."""
    with reported("--root"):
        engine = _romancy(ctx)
        top = engine.get_instance(top_id)
        # Storage finds trees by their root only: read the root's, keep top's subtree.
        tree = engine.find_instances(root=top.root_instance_id or top_id, limit=TREE_LIMIT + 1)
    if len(tree) > TREE_LIMIT:
        raise click.ClickException(
            f"the tree of {top_id} holds more than {TREE_LIMIT} instances: "
            "walk it with list --parent"
        )
    rows = _subtree(top, tree)
    if as_json:
        click.echo(json.dumps([_summary(i) for _, i in rows], indent=2))
        return
    _table(
        ("INSTANCE", "WORKFLOW", "STATUS", "CREATED", "NOTE"),
        [
            ("  " * depth + i.instance_id, i.workflow_name, i.status, _time(i.created_at), _note(i))
            for depth, i in rows
        ],
    )


@romancy.command()
@click.argument("instance_id")
@click.option("--json", "as_json", is_flag=True, help="Everything, as one JSON object.")
@click.pass_context
def show(ctx: click.Context, instance_id: str, as_json: bool) -> None:
    """One instance with its steps (times, workers, task ids), steps in flight, failed
    attempts, compensations, child workflows and the traceback of its failure."""
    with reported():
        engine = _romancy(ctx)
        record = read_instance(engine, instance_id)  # what the dashboard shows too
        dispatch_timeout = timedelta(seconds=engine.settings.dispatch_timeout)
    instance, history, attempts = record.instance, record.history, record.attempts
    compensations, steps, search = record.compensations, record.steps, record.search
    actions, more_children = record.operator_actions, record.more_children
    # Oldest first, like the steps that started them (a gather's: by their counter).
    children = sorted(record.children, key=_created_order)
    if as_json:
        document = {
            "instance": dataclasses.asdict(instance),
            "search": search,
            "children": [_summary(c) for c in children],
            "more_children": more_children,
            "steps_in_flight": [
                {
                    **dataclasses.asdict(s),
                    "command": s.command.to_json(),
                    "resend_after": _resend_after(s, dispatch_timeout),
                }
                for s in steps
            ],
            "history": [
                {**dataclasses.asdict(e), "duration": duration(e.started_at, e.created_at)}
                for e in history
            ],
            "attempts": [dataclasses.asdict(a) for a in attempts],
            "compensations": [dataclasses.asdict(c) for c in compensations],
            "operator_actions": [dataclasses.asdict(a) for a in actions],
        }
        click.echo(json.dumps(document, indent=2, default=_json_default))
        return
    now = datetime.now(UTC)
    fields = [
        ("instance", instance.instance_id),
        ("workflow", instance.workflow_name),
        ("status", instance.status),
        ("created", _time(instance.created_at)),
        ("updated", _time(instance.updated_at)),
        ("input", _json(instance.input_data)),
        ("output", _json(instance.output_data)),
    ]
    if search:
        fields.insert(2, ("search", " ".join(f"{k}={v}" for k, v in sorted(search.items()))))
    if instance.parent_instance_id is not None:
        closing = f" (parent_close: {instance.parent_close})" if instance.parent_close else ""
        fields.insert(2, ("parent", f"{instance.parent_instance_id}{closing}"))
        if instance.root_instance_id not in (None, instance.parent_instance_id):
            fields.insert(3, ("root", str(instance.root_instance_id)))
    if instance.workflow_version is not None:
        fields.insert(2, ("version", instance.workflow_version))  # right under the workflow
    fields[3:3] = _chain_fields(engine, instance)
    if instance.error:
        fields.append(("error", _error(instance.error)))
        undo_error = instance.error.get("compensation_error")
        if isinstance(undo_error, dict):
            fields.append(("undo", f"failed: {_error(undo_error)}"))
    for step in steps:
        lines = [_pending(step.command.to_json()), *_in_flight(step, dispatch_timeout, now)]
        fields.append(("pending", "\n".join(lines)))
    if instance.cancel_reason is not None:
        fields.append(("cancel", f"requested: {instance.cancel_reason}"))
    for name, value in fields:
        click.echo(f"{name:<9} {value}".replace("\n", "\n" + " " * 10))
    day = instance.created_at.date()
    click.echo(f"\nsteps ({len(history)}; times UTC)")
    _table(
        ("#", "STEP", "KIND", "ATTEMPT", "STARTED", "ENDED", "TOOK", "WORKER", "TASK", "OUTCOME"),
        _step_rows(history, steps, day),
        indent="  ",
    )
    if attempts:
        click.echo(f"\nfailed attempts ({len(attempts)})")
        _table(
            ("STEP", "ATTEMPT", "FAILED", "ERROR", "RETRY IN", "WORKER"),
            [
                (
                    a.step_id,
                    str(a.attempt),
                    _clock(a.created_at, day),
                    _error(a.error, step=False),
                    "-" if a.retry_in is None else f"{a.retry_in:g} s",
                    a.worker_id or "",
                )
                for a in attempts
            ],
            indent="  ",
        )
    if compensations:
        click.echo(f"\ncompensations, newest first ({len(compensations)})")
        _table(
            ("COMPENSATION", "UNDOES", "STATUS", "ATTEMPTS", "ENDED", "ERROR"),
            [
                (
                    c.name,
                    c.step_id,
                    c.status,
                    str(c.attempts),
                    "-" if c.finished_at is None else _clock(c.finished_at, day),
                    _error(c.error, step=False) if c.error else "",
                )
                for c in compensations
            ],
            indent="  ",
        )
    if children:
        click.echo(f"\nchild workflows ({len(children)}{'+' if more_children else ''})")
        _table(
            ("INSTANCE", "WORKFLOW", "STATUS", "CREATED"),
            [(c.instance_id, c.workflow_name, c.status, _time(c.created_at)) for c in children],
            indent="  ",
        )
        if more_children:
            click.echo(
                f"  ... only the newest {CHILDREN_SHOWN} shown: "
                f"list --parent {instance_id} --limit N lists more"
            )
    if actions:
        click.echo(f"\noperator actions ({len(actions)})")
        _table(
            ("WHEN", "ACTION", "BY", "DETAIL"),
            [
                (_clock(a.created_at, day), a.action, a.actor or "-", _json(a.detail))
                for a in actions
            ],
            indent="  ",
        )
    for title, text in _tracebacks(instance, attempts):
        click.echo(f"\n{title}")
        for line in text.rstrip("\n").splitlines():
            click.echo(f"  {line}")


@romancy.command()
@click.argument("instance_id")
@click.option("--reason", default="cancelled by an operator", show_default=True)
@click.pass_context
def cancel(ctx: click.Context, instance_id: str, reason: str) -> None:
    """Cancel at the next step boundary; succeeded steps are compensated."""
    with reported():
        requested = _romancy(ctx).cancel(instance_id, reason, by=_operator())
    if requested:
        click.echo(f"cancellation of {instance_id} requested")
    else:
        click.echo(f"{instance_id} is already being cancelled or rolled back")


@romancy.command()
@click.argument("instance_id")
@click.pass_context
def resume(ctx: click.Context, instance_id: str) -> None:
    """Send a stuck instance's next step again, or replay a parked one."""
    with reported():
        _romancy(ctx).resume(instance_id, by=_operator())
    click.echo(f"resumed {instance_id}")


@romancy.command(name="retry-compensation")
@click.argument("instance_id")
@click.pass_context
def retry_compensation(ctx: click.Context, instance_id: str) -> None:
    """Resume a rollback parked in compensation_failed, from the failed compensation."""
    with reported():
        _romancy(ctx).retry_compensation(instance_id, by=_operator())
    click.echo(f"retrying the compensation of {instance_id}")


@romancy.command(name="send-event")
@click.argument("event_type")
@click.option("--data", "data_json", default="null", help="The event's data, as JSON.")
@click.option("--instance-id", help="Deliver to this instance ...")
@click.option("--correlation-id", help="... or to whichever waits with this correlation id.")
@click.pass_context
def send_event(
    ctx: click.Context,
    event_type: str,
    data_json: str,
    instance_id: str | None,
    correlation_id: str | None,
) -> None:
    """Send an event; it is kept until a matching ctx.wait_event takes it."""
    if (instance_id is None) == (correlation_id is None):
        raise click.UsageError("give exactly one of --instance-id or --correlation-id")
    try:
        data = json.loads(data_json)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--data") from None
    with reported("--instance-id"):
        _romancy(ctx).send_event(
            event_type,
            data,
            instance_id=instance_id,
            correlation_id=correlation_id,
            by=_operator(),
        )
    target = f"instance {instance_id}" if instance_id else f"correlation id {correlation_id}"
    click.echo(f"event {event_type} sent to {target}")


@romancy.command()
@click.option("--port", type=click.IntRange(0, 65535), default=5557, show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option("--flower-url", help="Flower's address: each step links to its Celery task there.")
@click.option("--read-only", is_flag=True, help="No actions, whoever signs in.")
@click.option(
    "--allow-actions",
    is_flag=True,
    help="Let the signed-in user cancel, resume, retry compensations and send events "
    "(needs --basic-auth or --token).",
)
@click.option("--basic-auth", metavar="USER:PASSWORD", help="Every page asks for this user.")
@click.option("--token", help="Every page asks for this token (as the basic-auth password).")
@click.pass_context
def dashboard(
    ctx: click.Context,
    port: int,
    address: str,
    flower_url: str | None,
    read_only: bool,
    allow_actions: bool,
    basic_auth: str | None,
    token: str | None,
) -> None:
    """Serve the web dashboard of the workflow instances (Ctrl-C stops it)."""
    from .contrib.dashboard import Dashboard
    from .contrib.dashboard.standalone import (
        LOOPBACK,
        Login,
        loopback_only,
        make_dashboard_server,
        remote_user,
        signed_in,
    )

    if allow_actions and read_only:
        raise click.UsageError("--allow-actions and --read-only exclude each other")
    if basic_auth and token:
        raise click.UsageError("give --basic-auth or --token, not both")
    if allow_actions and not (basic_auth or token):
        raise click.UsageError("--allow-actions needs --basic-auth USER:PASSWORD or --token T")
    app: Any = Dashboard(
        _romancy(ctx),
        flower_url=flower_url,
        read_only=not allow_actions,
        authorize=remote_user if allow_actions else None,
    )
    if basic_auth or token:
        try:
            app = signed_in(app, Login(basic_auth=basic_auth, token=token))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--basic-auth") from None
    elif address in LOOPBACK:
        app = loopback_only(app)
    try:
        server = make_dashboard_server(app, address, port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {address}:{port}: {exc}") from None
    mode = "actions allowed" if allow_actions else "read-only"
    url = f"http://{address}:{server.server_port}/"
    click.echo(f"Romancy dashboard on {url} ({mode}; Ctrl-C stops it)")
    if not (basic_auth or token) and address not in LOOPBACK:
        click.echo(
            f"warning: anyone who reaches {address}:{server.server_port} sees the workflows' "
            "inputs and outputs: give --basic-auth or --token",
            err=True,
        )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@romancy.command()
@click.option(
    "--older-than",
    "older_than",
    metavar="DURATION",
    help="Instances that ended longer ago than this: 7d, 12h, 30m, 90s, 1d12h "
    "(default: romancy_retention).",
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(sorted(str(s) for s in PURGEABLE)),
    help="Only instances that ended in this status (repeatable; default: all of them).",
)
@click.option("--dry-run", is_flag=True, help="Count what would go; delete nothing.")
@click.pass_context
def purge(
    ctx: click.Context, older_than: str | None, statuses: tuple[str, ...], dry_run: bool
) -> None:
    """Delete finished instances, and all their rows, that ended long enough ago."""
    age = None if older_than is None else parse_duration(older_than, "--older-than")
    with reported():
        report = _romancy(ctx).purge(age, list(statuses) or None, dry_run=dry_run)
    verb = "would purge" if dry_run else "purged"
    click.echo(
        f"{verb} {report.instances} instances that ended before "
        f"{report.cutoff.isoformat(timespec='seconds')}"
    )
    _table(("status", "instances"), [(s, str(n)) for s, n in report.statuses.items()], "  ")
    _table(("table", "rows"), [(t, str(n)) for t, n in report.rows.items()], "  ")


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
_DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str, option: str) -> timedelta:
    """``7d``, ``12h``, ``30m``, ``90s`` or a sum of them (``1d12h``), more than zero."""
    parts = _DURATION_PART.findall(text.strip().lower())
    if not parts or "".join(n + u for n, u in parts) != text.strip().lower():
        raise click.BadParameter(
            f"{text!r} is no duration: use a number and a unit, d h m or s (7d, 12h, 1d12h)",
            param_hint=option,
        )
    seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise click.BadParameter(f"{text!r} must be more than zero", param_hint=option)
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise click.BadParameter(f"{text!r} is too long", param_hint=option) from None


@romancy.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Create or upgrade the history tables (first use does it too)."""
    with reported():
        engine = _romancy(ctx)
        engine.migrate()
        with engine.storage.engine.connect() as conn:
            revision = current_revision(conn)
    shown = masked_url(engine.settings.database_url)
    click.echo(f"history schema at revision {revision} ({shown})")


@romancy.command(name="schedules")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
@click.pass_context
def list_schedules(ctx: click.Context, as_json: bool) -> None:
    """The scheduled workflows (romancy.schedule): next run, last run started."""
    engine = _romancy(ctx)
    now = datetime.now(UTC)
    listed: list[dict[str, Any]] = []
    with reported():
        for name, scheduled in sorted(engine.schedules.items()):
            # Each run carries its schedule's name as a business key (indexed).
            last = engine.find_instances(search={schedules.SEARCH_KEY: name}, limit=1)
            listed.append(
                {
                    "name": name,
                    "workflow": scheduled.workflow.name,
                    "schedule": describe(scheduled.schedule),
                    "next_run": schedules.next_run(engine, scheduled, now),
                    "last_instance_id": last[0].instance_id if last else None,
                    "last_status": last[0].status if last else None,
                }
            )
    if as_json:
        click.echo(json.dumps(listed, indent=2, default=_json_default))
        return
    header = ("NAME", "WORKFLOW", "SCHEDULE", "NEXT RUN", "LAST STARTED", "STATUS")
    rows = [
        (
            each["name"],
            each["workflow"],
            each["schedule"],
            _time(each["next_run"]),
            each["last_instance_id"] or "-",
            each["last_status"] or "-",
        )
        for each in listed
    ]
    _table(header, rows)


def _operator() -> str | None:
    """Who runs the command, recorded with the instance's operator actions."""
    try:
        return f"{getpass.getuser()} (cli)"
    except (KeyError, OSError):  # no user name in this environment
        return None


# -- formatting ---------------------------------------------------------------------------


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]], indent: str = "") -> None:
    if not rows:
        click.echo(f"{indent}(none)")
        return
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo(f"{indent}{line.rstrip()}")


def _time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _clock(moment: datetime, day: date) -> str:
    """A time to the millisecond; dated only when not on ``day`` (the instance's first)."""
    shown = moment.astimezone(UTC)
    if shown.date() == day:
        return shown.strftime("%H:%M:%S.") + f"{shown.microsecond // 1000:03d}"
    return shown.strftime("%Y-%m-%dT%H:%M:%S.") + f"{shown.microsecond // 1000:03d}"


def _took(started: datetime | None, finished: datetime | None) -> str:
    seconds = duration(started, finished)
    return "-" if seconds is None else f"{seconds:.3f}s"


def _step_rows(
    history: Sequence[HistoryEvent], steps: Sequence[StepRecord], day: date
) -> list[tuple[str, ...]]:
    """The steps table: one row per history row, oldest first; the branches of a gather
    right under its row, indented, with those still in flight or not sent yet."""
    by_seq = {e.seq: e for e in history}
    in_flight = {s.command.seq: s for s in steps}
    shown: set[int] = set()
    rows: list[tuple[str, ...]] = []

    def recorded(event: HistoryEvent, indent: str = "") -> tuple[str, ...]:
        if event.kind == HistoryKind.GATHER:
            branches = event.result if isinstance(event.result, list) else []
            outcome = f"{len(branches)} branches"
        elif event.kind == HistoryKind.MARKER:
            outcome = f"patched {event.name!r}: the new code path"
        elif event.error:
            outcome = f"error {_error(event.error, step=False)}"
        else:
            outcome = f"ok {_json(event.result)}"
        started = event.started_at
        return (
            str(event.seq),
            indent + event.step_id,
            event.kind,
            str(event.attempt),
            "-" if started is None else _clock(started, day),
            "-" if event.created_at is None else _clock(event.created_at, day),
            _took(started, event.created_at),
            event.worker_id or "",
            event.task_id or "",
            outcome,
        )

    for event in sorted(history, key=lambda e: e.seq):
        if event.seq in shown:
            continue
        shown.add(event.seq)
        rows.append(recorded(event))
        if event.kind != HistoryKind.GATHER or not isinstance(event.result, list):
            continue
        for offset, name in enumerate(event.result, start=1):
            position = event.seq + offset
            shown.add(position)
            if position in by_seq:
                rows.append(recorded(by_seq[position], indent="  "))
            elif position in in_flight:
                step = in_flight[position]
                where = f"running on {step.lease_owner}" if step.lease_owner else "sent"
                rows.append(
                    (
                        str(position),
                        f"  {step.step_id}",
                        str(step.kind),
                        str(step.command.attempt),
                        "-",
                        "-",
                        "-",
                        step.lease_owner or "",
                        step.token if step.kind.runs_as_task else "",
                        f"in flight: {where}",
                    )
                )
            else:  # after a failure, or beyond max_concurrency: not sent yet
                rows.append(
                    (str(position), f"  {name}", "-", "-", "-", "-", "-", "", "", "not sent")
                )
    return rows


def _resend_after(step: StepRecord, dispatch_timeout: timedelta) -> datetime | None:
    """When the recovery sweep takes a step that runs as a task for lost, if no worker
    has taken it (or the one that did stopped renewing its lease) by then."""
    if not step.kind.runs_as_task or step.dispatch_at is None:
        return None  # a wait, a child, or parked: recovery never re-sends it
    after = step.dispatch_at + dispatch_timeout
    if step.lease_expires_at is not None and step.lease_expires_at > after:
        return step.lease_expires_at
    return after


def _in_flight(step: StepRecord, dispatch_timeout: timedelta, now: datetime) -> list[str]:
    """``show``'s lines under a step in flight: where it is and what happens next."""
    kind, command = step.kind, step.command
    lines: list[str] = []
    if step.kind.runs_as_task:
        if step.dispatch_at is None:
            fix = "retry-compensation" if kind is StepKind.COMPENSATION else "resume"
            lines.append(f"task {step.token}, parked: not sent again until {fix}")
            return lines
        # dispatch_at: when it was sent (moved on by each re-send), or when a retry
        # waiting out its delay is due.
        sent = "due" if step.dispatch_at > now else "sent"
        lines.append(f"task {step.token}, {sent} {_time(step.dispatch_at)}")
        if step.lease_owner and step.lease_expires_at and step.lease_expires_at > now:
            lines.append(
                f"running on {step.lease_owner} (lease until {_time(step.lease_expires_at)}, "
                "renewed while it runs); recovery re-sends it if the lease runs out"
            )
            return lines
        if step.lease_owner and step.lease_expires_at:
            lines.append(
                f"taken by {step.lease_owner}, whose lease ran out {_time(step.lease_expires_at)}"
            )
        resend = _resend_after(step, dispatch_timeout)
        if resend is not None:
            lines.append(f"recovery re-sends it after {_time(resend)} unless a worker takes it")
    elif kind is StepKind.TIMER:
        lines.append(f"fires {_time(step.dispatch_at)}" if step.dispatch_at else "parked")
    elif kind is StepKind.WAIT_EVENT:
        correlation = command.arguments.get("correlation_id")
        what = f"waits for event {command.name}"
        if correlation is not None:
            what += f" with correlation id {correlation}"
        since = "" if step.created_at is None else f" since {_time(step.created_at)}"
        timeout = f", times out {_time(step.dispatch_at)}" if step.dispatch_at else ", no timeout"
        lines.append(what + since + timeout)
    elif step.created_at is not None:  # a child workflow: its own last step wakes this one
        lines.append(f"since {_time(step.created_at)}")
    return lines


def _tracebacks(
    instance: WorkflowInstance, attempts: Sequence[AttemptRecord]
) -> list[tuple[str, str]]:
    """(title, traceback) of the instance's failure, of the compensation that failed
    in its rollback, and, while it runs, of its newest failed attempt."""
    found: list[tuple[str, str]] = []
    error = instance.error or {}
    if error.get("traceback"):
        where = f" (step {error['step']})" if error.get("step") else ""
        found.append((f"traceback{where}", str(error["traceback"])))
    undo_error = error.get("compensation_error")
    if isinstance(undo_error, dict) and undo_error.get("traceback"):
        where = f" (step {undo_error['step']})" if undo_error.get("step") else ""
        found.append((f"traceback of the failed compensation{where}", str(undo_error["traceback"])))
    if instance.status in ACTIVE and attempts:
        newest = max(attempts, key=lambda a: a.created_at)
        if newest.error.get("traceback"):
            title = (
                f"traceback of the last failed attempt ({newest.step_id}, attempt {newest.attempt})"
            )
            found.append((title, str(newest.error["traceback"])))
    return found


def _json(value: Any, limit: int = 200) -> str:
    text = json.dumps(value, default=_json_default, ensure_ascii=False)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _json_default(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _error(error: dict[str, Any], step: bool = True) -> str:
    where = f" (step {error['step']})" if step and error.get("step") else ""
    return f"{error.get('type')}: {error.get('message')}{where}"


def _pending(pending: dict[str, Any]) -> str:
    what = f"{pending.get('kind')} {pending.get('name')}"
    text = f"{what} ({pending.get('step_id')}, attempt {pending.get('attempt', 1)})"
    arguments = pending.get("arguments")
    if pending.get("kind") in (StepKind.CHILD, StepKind.UNDO_CHILD) and isinstance(arguments, dict):
        text += f" -> {arguments.get('instance_id')}"  # the child it waits for, or undoes
    return text


def _summary(instance: WorkflowInstance) -> dict[str, Any]:
    """``instance_status``, the instance's place in a tree of child workflows and in a
    chain of runs (``ctx.continue_as_new``)."""
    return {
        **instance_status(instance),
        "parent_instance_id": instance.parent_instance_id,
        "root_instance_id": instance.root_instance_id,
        "parent_close": instance.parent_close,
        "workflow_version": instance.workflow_version,
        "continued_from": instance.continued_from,
        "next_run": next_run_id(instance) if instance.status == Status.CONTINUED else None,
    }


def _chain_fields(engine: Romancy, instance: WorkflowInstance) -> list[tuple[str, str]]:
    """``show``'s lines on a chain of runs: the run this one continues, the next run
    and, if that one continued too, the run that holds the chain now."""
    fields = []
    if instance.continued_from is not None:
        fields.append(("continues", instance.continued_from))
    if instance.status == Status.CONTINUED:
        fields.append(("next run", next_run_id(instance)))
        current = engine.storage.last_run(instance.instance_id)
        if current != next_run_id(instance):
            fields.append(("current", current))
    return fields


def _created_order(instance: WorkflowInstance) -> tuple[datetime, list[tuple[int, str]]]:
    """Oldest first. Children started by one step (a gather) share a creation time; their
    derived ids end in the step's counter, compared as a number (``:2`` before ``:10``)."""
    parts = re.split(r"(\d+)", instance.instance_id)
    return instance.created_at, [(int(p), "") if p.isdigit() else (-1, p) for p in parts]


def _subtree(
    top: WorkflowInstance, tree: Sequence[WorkflowInstance]
) -> list[tuple[int, WorkflowInstance]]:
    """``top`` and its descendants in ``tree``, depth first: (depth, instance) pairs."""
    children: dict[str, list[WorkflowInstance]] = {}
    for instance in tree:
        if instance.parent_instance_id is not None:
            children.setdefault(instance.parent_instance_id, []).append(instance)
    rows: list[tuple[int, WorkflowInstance]] = []
    stack = [(0, top)]
    while stack:
        depth, instance = stack.pop()
        rows.append((depth, instance))
        below = sorted(children.get(instance.instance_id, []), key=_created_order, reverse=True)
        stack.extend((depth + 1, child) for child in below)
    return rows


def _note(instance: WorkflowInstance) -> str:
    if instance.status == Status.CONTINUED:
        note = f"continued as {next_run_id(instance)}"
    elif instance.error:
        kind = str(instance.error.get("type", "")).rpartition(".")[2]
        note = f"{kind}: {instance.error.get('message')}"
    else:
        note = ""
    return note if len(note) <= 60 else f"{note[:57]}..."
