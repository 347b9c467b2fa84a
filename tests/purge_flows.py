"""Workflows that end in every status, for the retention tests.

Each leaves rows in the tables a purge empties: history, compensations, attempts (a
retried step), business keys, a published outbox row, a consumed event.
"""

from __future__ import annotations

from pathlib import Path

from celery_romancy import RetryPolicy, Romancy, TerminalError, WorkflowContext

from .ledger import Gate

NO_RETRY = RetryPolicy(max_attempts=1)
ONE_RETRY = RetryPolicy(max_attempts=2, initial_interval=0.01)


def register_purge_flows(romancy: Romancy, folder: Path) -> None:
    @romancy.compensation("p_undo", retry=NO_RETRY)
    def p_undo(tag: str) -> None:
        if tag.startswith("fragile") and not Gate(folder, f"fixed-{tag}").path.exists():
            raise RuntimeError(f"cannot undo {tag}")

    @romancy.activity("p_step", compensation=p_undo, retry=ONE_RETRY)
    def p_step(tag: str) -> str:
        # Fails its first attempt once per tag: every instance has an attempts row.
        first = Gate(folder, f"tried-{tag}")
        if not first.path.exists():
            first.path.touch()
            raise RuntimeError(f"{tag}: first attempt fails")
        return tag

    @romancy.activity("p_boom", retry=NO_RETRY)
    def p_boom(tag: str) -> None:
        raise TerminalError(f"{tag} failed")

    @romancy.workflow("p_done")
    def p_done(ctx: WorkflowContext, tag: str) -> str:
        ctx.set_search_attributes(tag=tag)
        p_step.execute(ctx, tag)
        ctx.publish_event("p.done", {"tag": tag})
        return tag

    @romancy.workflow("p_fails")
    def p_fails(ctx: WorkflowContext, tag: str) -> str:
        p_step.execute(ctx, tag)
        p_boom.execute(ctx, tag)
        return tag

    @romancy.workflow("p_waits")
    def p_waits(ctx: WorkflowContext, tag: str) -> str:
        p_step.execute(ctx, tag)
        ctx.wait_event("p_go", correlation_id=tag)
        return tag

    @romancy.workflow("p_leaf")
    def p_leaf(ctx: WorkflowContext, tag: str) -> str:
        return p_step.execute(ctx, tag)

    @romancy.workflow("p_parent")
    def p_parent(ctx: WorkflowContext, tag: str, then: str) -> str:
        """Runs a child, then completes (``then="done"``), fails and so undoes the child
        (``"fail"``), or waits for an event (``"wait"``)."""
        p_step.execute(ctx, tag)
        ctx.execute_child(p_leaf, f"{tag}.child")
        if then == "fail":
            p_boom.execute(ctx, tag)
        elif then == "wait":
            ctx.wait_event("p_go", correlation_id=tag)
        return tag
