"""Everything one instance recorded, read at once: what ``romancy show`` prints and the
dashboard draws (``read_instance``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .storage import (
    AttemptRecord,
    CompensationRecord,
    HistoryEvent,
    OperatorAction,
    OutboxRecord,
    StepRecord,
    WorkflowInstance,
)

if TYPE_CHECKING:
    from .app import Romancy

# Child workflows shown at most; ``romancy list --parent ID --limit N`` lists more.
CHILDREN_SHOWN = 200


@dataclass(frozen=True)
class InstanceRecord:
    """An instance with its business keys, history, steps in flight, failed attempts,
    compensations (newest first), child workflows, outbox events and operator actions,
    as storage returns them."""

    instance: WorkflowInstance
    search: dict[str, str]
    history: list[HistoryEvent]
    steps: list[StepRecord]
    attempts: list[AttemptRecord]
    compensations: list[CompensationRecord]
    children: list[WorkflowInstance]
    more_children: bool
    outbox: list[OutboxRecord]
    operator_actions: list[OperatorAction]


def read_instance(romancy: Romancy, instance_id: str) -> InstanceRecord:
    """``UnknownInstanceError`` for an id no instance has. Child workflows: the newest
    ``CHILDREN_SHOWN``, oldest first (``more_children`` when there are more)."""
    instance = romancy.get_instance(instance_id)
    storage = romancy.storage
    children = romancy.find_instances(parent=instance_id, limit=CHILDREN_SHOWN + 1)
    return InstanceRecord(
        instance=instance,
        search=storage.get_search_attributes(instance_id),
        history=storage.get_history(instance_id),
        steps=storage.get_steps(instance_id),
        attempts=storage.get_attempts(instance_id),
        compensations=storage.get_compensations(instance_id),
        children=sorted(children[:CHILDREN_SHOWN], key=lambda c: c.created_at),
        more_children=len(children) > CHILDREN_SHOWN,
        outbox=storage.get_outbox(instance_id),
        operator_actions=storage.get_operator_actions(instance_id),
    )
