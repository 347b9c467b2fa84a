"""``celery -A proj romancy ...``: look at workflow instances and act on them from a shell.

A Celery subcommand (registered under the ``celery.commands`` entry point, like
Flower), so it runs with the app that ``-A`` names and that app's configuration.

Exit codes: 0 done; 1 refused (the instance's status does not allow it) or the
history database failed; 2 a usage error: a bad option or argument, including an
instance id that does not exist. Errors go to stderr.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import click
import sqlalchemy as sa

from .app import Romancy
from .contrib.status import instance_status
from .errors import RomancyError, UnknownInstanceError
from .settings import masked_url
from .states import StepKind
from .storage import STATUSES, WorkflowInstance
from .storage.migrate import current_revision

LIST_LIMIT = 50
# list --root reads a whole tree at once; a larger one is walked with list --parent.
TREE_LIMIT = 10_000
# show lists this many child workflows at most; list --parent --limit N lists more.
CHILDREN_SHOWN = 200


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
    """Durable workflows: list, show, cancel, resume, retry-compensation, send-event, migrate."""
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
@click.option("--parent", help="Only the child workflows of this instance.")
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
    parent: str | None,
    root: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """Instances, newest first; with --root, a tree of child workflows, oldest first."""
    if root is not None:
        given = [
            name
            for name, value in (
                ("--status", statuses),
                ("--workflow", workflow),
                ("--parent", parent),
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
        )
    if as_json:
        click.echo(json.dumps([_summary(i) for i in found], indent=2))
        return
    rows = [
        (i.instance_id, i.workflow_name, i.status, _time(i.updated_at), _note(i)) for i in found
    ]
    _table(("INSTANCE", "WORKFLOW", "STATUS", "UPDATED", "NOTE"), rows)


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
    """One instance with its steps, failed attempts, compensations and child workflows."""
    with reported():
        engine = _romancy(ctx)
        instance = engine.get_instance(instance_id)
        history = engine.storage.get_history(instance_id)
        attempts = engine.storage.get_attempts(instance_id)
        compensations = engine.storage.get_compensations(instance_id)
        steps = engine.storage.get_steps(instance_id)
        children = engine.find_instances(parent=instance_id, limit=CHILDREN_SHOWN + 1)
    more_children = len(children) > CHILDREN_SHOWN
    # Storage gives the newest; shown oldest first, like the steps that started them.
    children = sorted(children[:CHILDREN_SHOWN], key=_created_order)
    if as_json:
        document = {
            "instance": dataclasses.asdict(instance),
            "children": [_summary(c) for c in children],
            "more_children": more_children,
            "steps_in_flight": [
                {**dataclasses.asdict(s), "command": s.command.to_json()} for s in steps
            ],
            "history": [dataclasses.asdict(e) for e in history],
            "attempts": [dataclasses.asdict(a) for a in attempts],
            "compensations": [dataclasses.asdict(c) for c in compensations],
        }
        click.echo(json.dumps(document, indent=2, default=_json_default))
        return
    fields = [
        ("instance", instance.instance_id),
        ("workflow", instance.workflow_name),
        ("status", instance.status),
        ("created", _time(instance.created_at)),
        ("updated", _time(instance.updated_at)),
        ("input", _json(instance.input_data)),
        ("output", _json(instance.output_data)),
    ]
    if instance.parent_instance_id is not None:
        closing = f" (parent_close: {instance.parent_close})" if instance.parent_close else ""
        fields.insert(2, ("parent", f"{instance.parent_instance_id}{closing}"))
        if instance.root_instance_id not in (None, instance.parent_instance_id):
            fields.insert(3, ("root", str(instance.root_instance_id)))
    if instance.error:
        fields.append(("error", _error(instance.error)))
        undo_error = instance.error.get("compensation_error")
        if isinstance(undo_error, dict):
            fields.append(("undo", f"failed: {_error(undo_error)}"))
    for step in steps:
        fields.append(("pending", _pending(step.command.to_json())))
        if step.lease_owner and step.lease_expires_at:
            fields.append(("lease", f"{step.lease_owner} until {_time(step.lease_expires_at)}"))
    if instance.cancel_reason is not None:
        fields.append(("cancel", f"requested: {instance.cancel_reason}"))
    for name, value in fields:
        click.echo(f"{name:<9} {value}")
    click.echo(f"\nsteps ({len(history)})")
    _table(
        ("#", "STEP", "KIND", "ATTEMPT", "OUTCOME", "WORKER"),
        [
            (
                str(e.seq),
                e.step_id,
                e.kind,
                str(e.attempt),
                f"error {_error(e.error, step=False)}" if e.error else f"ok {_json(e.result)}",
                e.worker_id or "",
            )
            for e in history
        ],
        indent="  ",
    )
    if attempts:
        click.echo(f"\nfailed attempts ({len(attempts)})")
        _table(
            ("STEP", "ATTEMPT", "ERROR", "RETRY IN", "WORKER"),
            [
                (
                    a.step_id,
                    str(a.attempt),
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
            ("COMPENSATION", "UNDOES", "STATUS", "ATTEMPTS", "ERROR"),
            [
                (
                    c.name,
                    c.step_id,
                    c.status,
                    str(c.attempts),
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


@romancy.command()
@click.argument("instance_id")
@click.option("--reason", default="cancelled by an operator", show_default=True)
@click.pass_context
def cancel(ctx: click.Context, instance_id: str, reason: str) -> None:
    """Cancel at the next step boundary; succeeded steps are compensated."""
    with reported():
        requested = _romancy(ctx).cancel(instance_id, reason)
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
        _romancy(ctx).resume(instance_id)
    click.echo(f"resumed {instance_id}")


@romancy.command(name="retry-compensation")
@click.argument("instance_id")
@click.pass_context
def retry_compensation(ctx: click.Context, instance_id: str) -> None:
    """Resume a rollback parked in compensation_failed, from the failed compensation."""
    with reported():
        _romancy(ctx).retry_compensation(instance_id)
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
            event_type, data, instance_id=instance_id, correlation_id=correlation_id
        )
    target = f"instance {instance_id}" if instance_id else f"correlation id {correlation_id}"
    click.echo(f"event {event_type} sent to {target}")


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
    if pending.get("kind") == StepKind.CHILD and isinstance(arguments, dict):
        text += f" -> {arguments.get('instance_id')}"  # the child it waits for
    return text


def _summary(instance: WorkflowInstance) -> dict[str, Any]:
    """``instance_status`` and the instance's place in a tree of child workflows."""
    return {
        **instance_status(instance),
        "parent_instance_id": instance.parent_instance_id,
        "root_instance_id": instance.root_instance_id,
        "parent_close": instance.parent_close,
    }


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
    if instance.error:
        kind = str(instance.error.get("type", "")).rpartition(".")[2]
        note = f"{kind}: {instance.error.get('message')}"
    else:
        note = ""
    return note if len(note) <= 60 else f"{note[:57]}..."
