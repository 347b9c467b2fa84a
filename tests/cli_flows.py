"""The workflows the CLI tests operate: the engine tests' ones, plus one that waits for
an event, a small tree of child workflows, one whose step no worker takes and one
waiting out a retry delay. Built
in-process and by ``tests/cli_app.py`` for ``celery -A tests.cli_app``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery

from celery_romancy import ChildWorkflowError, RetryPolicy, Romancy, TerminalError, WorkflowContext

from .flows import build


def unheard_queue(queue: str) -> str:
    """A queue beside the test's own that no worker consumes."""
    return f"{queue}-unheard"


def build_cli(
    database_url: str, broker_url: str, folder: Path, queue: str, **conf: Any
) -> tuple[Celery, Romancy]:
    app, romancy = build(database_url, broker_url, folder, queue, **conf)

    @romancy.activity("open_invoice")
    def open_invoice(order_id: str) -> str:
        return f"INV-{order_id}"

    @romancy.workflow("awaiting_payment")
    def awaiting_payment(
        ctx: WorkflowContext, order_id: str, by_correlation: bool = False
    ) -> dict[str, Any]:
        invoice = open_invoice.execute(ctx, order_id)
        payment = ctx.wait_event("payment", correlation_id=order_id if by_correlation else None)
        return {"invoice": invoice, "payment": payment}

    # -- a tree: cli_tree -> cli_branch -> cli_leaf, then a second child that fails ------

    @romancy.activity("cli_stamp", retry=RetryPolicy(max_attempts=1))
    def cli_stamp(tag: str) -> str:
        if tag.endswith("boom"):
            raise TerminalError(f"no stamp for {tag}")
        return f"stamped:{tag}"

    @romancy.workflow("cli_leaf")
    def cli_leaf(ctx: WorkflowContext, tag: str) -> str:
        return cli_stamp.execute(ctx, tag)

    @romancy.workflow("cli_branch")
    def cli_branch(ctx: WorkflowContext, tag: str) -> dict[str, str]:
        return {"branch": cli_stamp.execute(ctx, tag), "leaf": ctx.execute_child(cli_leaf, tag)}

    @romancy.workflow("cli_tree")
    def cli_tree(ctx: WorkflowContext, tag: str) -> dict[str, Any]:
        branch = ctx.execute_child(cli_branch, f"{tag}.branch")
        try:
            ctx.execute_child(cli_leaf, f"{tag}.boom")
        except ChildWorkflowError as error:
            return {"branch": branch, "second": error.status}
        return {"branch": branch, "second": "completed"}

    # -- a step sent to a queue no worker consumes: it stays sent, never taken ---------

    @romancy.activity("cli_unheard", queue=unheard_queue(queue))
    def cli_unheard(tag: str) -> str:
        return f"heard:{tag}"

    @romancy.workflow("cli_unheard_saga")
    def cli_unheard_saga(ctx: WorkflowContext, tag: str) -> str:
        return cli_unheard.execute(ctx, tag)

    # -- a step that failed once and waits out a long retry delay -----------------------

    @romancy.activity("cli_flaky", retry=RetryPolicy(max_attempts=2, initial_interval=600.0))
    def cli_flaky(tag: str) -> str:
        raise ConnectionError(f"{tag}: stock service down")

    @romancy.workflow("cli_flaky_saga")
    def cli_flaky_saga(ctx: WorkflowContext, tag: str) -> str:
        return cli_flaky.execute(ctx, tag)

    return app, romancy
