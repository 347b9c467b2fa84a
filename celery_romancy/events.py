"""External events: sent from anywhere, kept until a matching ``ctx.wait_event`` takes one.

Delivery is checked from both sides after each side commits: ``send_event`` looks for
an instance already waiting, and an instance that starts waiting looks for an event
already kept. Whichever commits second sees the other, so an event is never stranded;
the claim on the instance and the conditional consume of the event row make sure it is
taken once. The beat job (``fire_due``) repeats the check as a safety net.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import InstanceStateError, InvalidArgumentsError
from .serialization import encode
from .states import HistoryKind, RunOutcome, StepKind
from .storage import HistoryEvent

if TYPE_CHECKING:
    from .app import Romancy


def send_event(
    romancy: Romancy,
    event_type: str,
    data: Any = None,
    instance_id: str | None = None,
    correlation_id: str | None = None,
    *,
    dedupe_key: str | None = None,
) -> bool:
    """Store an event for one instance (or a correlation id) and wake it if it waits.

    Returns False when ``dedupe_key`` was seen before (the same event sent twice).
    Bad input raises before anything is written.
    """
    if not isinstance(event_type, str) or not event_type:
        raise InvalidArgumentsError("event_type must be a non-empty string")
    if (instance_id is None) == (correlation_id is None):
        raise InvalidArgumentsError(
            "address an event with exactly one of instance_id or correlation_id"
        )
    payload = encode(data, path="data")
    if instance_id is not None:
        instance = romancy.get_instance(instance_id)  # UnknownInstanceError
        if instance.is_terminal:
            raise InstanceStateError(
                f"workflow instance {instance_id} already ended {instance.status}; "
                "no wait can take this event"
            )
    stored = romancy.storage.insert_event(
        {
            "event_type": event_type,
            "instance_id": instance_id,
            "correlation_id": correlation_id,
            "data": payload,
            "dedupe_key": dedupe_key,
        }
    )
    if stored:
        for waiting in romancy.storage.waiting_for(event_type, instance_id, correlation_id):
            deliver_kept_event(romancy, waiting.step.instance_id)
    return stored


def deliver_kept_event(romancy: Romancy, instance_id: str) -> bool:
    """If the instance waits for an event that is already kept, resume it with that event."""
    for step in romancy.storage.get_steps(instance_id):
        if step.kind is not StepKind.WAIT_EVENT:
            continue
        command = step.command
        event = romancy.storage.find_event(
            command.name, instance_id, command.arguments.get("correlation_id")
        )
        if event is None:
            continue
        history_event = HistoryEvent(
            seq=command.seq,
            step_id=command.step_id,
            kind=HistoryKind.EVENT,
            name=command.name,
            result=event.data,
        )
        outcome = romancy.runner.wake(
            instance_id,
            step.token,
            lambda _: history_event,  # noqa: B023 - returned right after
            consume_event=event.id,
        )
        return outcome is RunOutcome.RECORDED
    return False
