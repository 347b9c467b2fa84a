"""Continue-as-new: a run hands over to the next run of its workflow.

``ctx.continue_as_new(*args)`` ends the run as ``continued`` and starts the next run,
with those arguments and an empty history, in the same commit (the next run's row and
first steps are inserted like a child workflow's, ``transition.replayed``): however
often the step that got there is delivered, the next run starts once. So a loop
workflow (poll, wait, repeat) keeps a bounded history per run.

The runs of one chain are linked by ``continued_from``. The next run's id is
``<first run id>~<n>`` (the n-th continuation; hashed when too long), and it keeps
the workflow's business keys (search attributes), code version and, for a child
workflow, its parent. A run's compensations stay with that run: continuing is a commit
point, and a later run's failure does not undo what an earlier run did (nor does a
parent's rollback: it undoes the child's last run). The same commit moves the events
kept for the run and not consumed to the next one, and points the parent's step that
waits for the child at the next run (``StepWrite.continued_as``, ``chains.hand_over``).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .errors import WorkflowAlreadyStartedError
from .failures import describe_error
from .replay import ContinuedAsNew, Failed, Outcome
from .storage import ChildStart, HistoryEvent, StepWrite, WorkflowInstance
from .storage.rows import search_values
from .validation import MAX_ID_LENGTH

if TYPE_CHECKING:
    from .app import Romancy
    from .transition import Planned


def next_run_id(instance: WorkflowInstance) -> str:
    """``<first run id>~<n>`` for the n-th continuation of a chain: the same on every
    replay, so the next run is inserted once; ``<digest>~<n>`` when that is too long."""
    base, number = instance.instance_id, 1
    if instance.continued_from is not None:
        head, _, counter = instance.instance_id.rpartition("~")
        if head and counter.isdigit():
            base, number = head, int(counter) + 1
    candidate = f"{base}~{number}"
    if len(candidate) <= MAX_ID_LENGTH:
        return candidate
    return f"{hashlib.sha256(base.encode()).hexdigest()[:32]}~{number}"


def refusal(instance: WorkflowInstance, next_id_taken: bool) -> Exception | None:
    """Why ``instance`` cannot continue as new, if it cannot."""
    if next_id_taken:
        return WorkflowAlreadyStartedError(
            next_run_id(instance), "is taken by another instance: this run cannot continue as it"
        )
    return None


def allowed(
    romancy: Romancy,
    instance: WorkflowInstance,
    outcome: ContinuedAsNew,
    history: list[HistoryEvent],
) -> Outcome:
    """``outcome``, or the failure of the run if it cannot continue (see ``refusal``)."""
    taken = romancy.storage.instance_exists(next_run_id(instance))
    error = refusal(instance, taken)
    if error is None:
        return outcome
    last = max(history, key=lambda e: e.seq).step_id if history else None
    return Failed(describe_error(error, last))


def start_next_run(
    romancy: Romancy,
    instance: WorkflowInstance,
    input_data: dict[str, Any],
    recorded: list[HistoryEvent],
    planned: Planned,
) -> None:
    """Add the next run of ``instance`` to ``planned``: its row, its first steps and
    its business keys (those stored, and those ``recorded`` by this transition) go in
    with the commit that ends this run, and this run's unconsumed events move to it."""
    from .transition import new_instance, planned_start

    first = new_instance(next_run_id(instance), instance.workflow_name, input_data)
    new = replace(
        first,
        continued_from=instance.instance_id,
        workflow_version=instance.workflow_version,
        # A child workflow's next run is its parent's child as well.
        parent_instance_id=instance.parent_instance_id,
        root_instance_id=instance.root_instance_id,
        parent_close=instance.parent_close,
    )
    search = {
        **romancy.storage.get_search_attributes(instance.instance_id),
        **search_values(StepWrite(events=recorded)),
    }
    values, write, next_planned = planned_start(romancy, new, search)
    values["continued_from"] = instance.instance_id
    if values.get("workflow_version") is None:  # unless the start set the current one
        values["workflow_version"] = instance.workflow_version
    planned.rows.children.append(ChildStart(values, write))
    planned.rows.continued_as = new.instance_id
    planned.children.append((new, next_planned))
