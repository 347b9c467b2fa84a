"""External events: sent from anywhere, kept until a matching ``ctx.wait_event`` takes one.

Delivery is checked from both sides after each side commits: ``send_event`` looks for
an instance already waiting, and an instance that starts waiting looks for an event
already kept. Whichever commits second sees the other, so an event is never stranded;
the claim on the instance and the conditional consume of the event row make sure it is
taken once. The beat job (``fire_due``) repeats the check as a safety net, and drops
events kept longer than ``romancy_event_retention``.

An event addressed to a run that continued (``ctx.continue_as_new``) is kept for the
run that holds its chain now; one kept for a run when it continues moves to the next.

Everything the caller hands in is checked before anything is written: the type and the
target must fit their columns (``validation.check_identifier``), the data must encode as
JSON (``encode`` refuses NUL and lone surrogates) no larger than
``romancy_max_payload_bytes`` and, given ``data_type``, decode as that type.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from .errors import (
    EventConflictError,
    InstanceStateError,
    InvalidArgumentsError,
    SerializationError,
)
from .serialization import JSONValue, decode, encode
from .states import HistoryKind, RunOutcome, Status, StepKind
from .storage import HistoryEvent, WorkflowInstance
from .validation import MAX_ID_LENGTH, MAX_NAME_LENGTH, check_identifier, check_payload_size

if TYPE_CHECKING:
    from .app import Romancy


def send_event(
    romancy: Romancy,
    event_type: str,
    data: Any = None,
    instance_id: str | None = None,
    correlation_id: str | None = None,
    *,
    data_type: Any = None,
    dedupe_key: str | None = None,
) -> bool:
    """Store an event for one instance (or a correlation id) and wake it if it waits.

    ``dedupe_key`` is the sender's own id for the event (for a CloudEvent, its source
    and id). It is scoped by the event's type and target: the same id sent again to the
    same target with the same data is stored once (returns False); with other data it
    raises ``EventConflictError``. Bad input raises before anything is written.
    """
    check_address(event_type, instance_id, correlation_id)
    payload = encode(data, path="data")
    if data_type is not None:
        check_data_type(payload, data_type)
    check_payload_size(payload, romancy.settings.max_payload_bytes, "event data")
    scoped_key = data_hash = None
    if dedupe_key is not None:
        scoped_key = event_key(dedupe_key, event_type, instance_id, correlation_id)
        data_hash = payload_hash(payload)
        if _already_kept(romancy, scoped_key, data_hash, dedupe_key):
            return False
    target = instance_id
    if instance_id is not None:
        instance = current_run(romancy, instance_id)  # UnknownInstanceError
        if instance.is_terminal:
            raise InstanceStateError(
                f"workflow instance {instance.instance_id} already ended {instance.status}; "
                "no wait can take this event"
            )
        target = instance.instance_id
    stored = romancy.storage.insert_event(
        {
            "event_type": event_type,
            "instance_id": target,
            "correlation_id": correlation_id,
            "data": payload,
            "dedupe_key": scoped_key,
            "data_hash": data_hash,
        }
    )
    if not stored:  # a concurrent delivery of the same event inserted it first
        assert scoped_key is not None and data_hash is not None and dedupe_key is not None
        _already_kept(romancy, scoped_key, data_hash, dedupe_key)
        return False
    if target is not None:
        # Kept for the run after it, if it continued meanwhile (``insert_event``).
        target = romancy.storage.last_run(target)
    for waiting in romancy.storage.waiting_for(event_type, target, correlation_id):
        deliver_kept_event(romancy, waiting.step.instance_id)
    return True


def current_run(romancy: Romancy, instance_id: str) -> WorkflowInstance:
    """The instance, or, if it continued (``ctx.continue_as_new``), the run that holds
    its chain now; ``UnknownInstanceError`` for an unknown id."""
    instance = romancy.get_instance(instance_id)
    if instance.status != Status.CONTINUED:
        return instance
    return romancy.get_instance(romancy.storage.last_run(instance_id))


def _already_kept(romancy: Romancy, scoped_key: str, data_hash: str, dedupe_key: str) -> bool:
    """True if this event is kept already; ``EventConflictError`` if its id is, with
    other data (a reused id must not pass for a harmless repeat)."""
    kept_hash = romancy.storage.kept_event_hash(scoped_key)
    if kept_hash is None:
        return False
    if kept_hash != data_hash:
        raise EventConflictError(
            f"event {dedupe_key} was already received for this target and type with "
            "other data; send a new event id for new content"
        )
    return True


def check_address(event_type: object, instance_id: object, correlation_id: object) -> None:
    """An event's type and its one target, checked against the columns that keep them."""
    if (instance_id is None) == (correlation_id is None):
        raise InvalidArgumentsError(
            "address an event with exactly one of instance_id or correlation_id"
        )
    check_identifier(event_type, "event_type", MAX_NAME_LENGTH)
    if instance_id is not None:
        check_identifier(instance_id, "instance_id", MAX_ID_LENGTH)
    if correlation_id is not None:
        check_identifier(correlation_id, "correlation_id", MAX_NAME_LENGTH)


def check_data_type(payload: JSONValue, data_type: Any) -> None:
    """The data must read back as ``data_type`` (what the waiting workflow declares)."""
    try:
        decode(payload, data_type, path="data")
    except SerializationError as exc:
        detail = f"{exc.path}: {exc.problem}" if exc.problem is not None else str(exc)
        raise InvalidArgumentsError(f"event data does not fit data_type: {detail}") from None


def event_key(
    dedupe_key: str, event_type: str, instance_id: str | None, correlation_id: str | None
) -> str:
    """The stored (unique) key: the sender's id scoped by type and target, hashed so any
    length fits. Migration 0005 computes the same for rows kept before it: keep in step."""
    scope = json.dumps([dedupe_key, event_type, instance_id, correlation_id])
    return hashlib.sha256(scope.encode()).hexdigest()


def payload_hash(payload: JSONValue) -> str:
    """A fingerprint of the data that does not depend on key order."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


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
