"""The outbox relay: publish committed outbox rows with kombu, as CloudEvents JSON.

Rows are committed with the step that produced them, so a step that rolled back never
publishes. The relay marks a row in progress (a lock with an expiry) before sending and
published after; a relayer that dies in between leaves the row to be taken again when
its lock runs out. Delivery is therefore at least once, with a stable CloudEvents ``id``
for consumers to drop duplicates.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from kombu.entity import Exchange

from .storage import OutboxRecord

if TYPE_CHECKING:
    from .app import Romancy

logger = logging.getLogger(__name__)

BATCH = 100


def cloudevent(record: OutboxRecord, source: str) -> dict[str, Any]:
    """The structured-mode CloudEvents 1.0 envelope of an outbox row."""
    return {
        "specversion": "1.0",
        "id": record.event_id,
        "source": source,
        "type": record.event_type,
        "subject": record.instance_id,
        "time": record.created_at.isoformat(),
        "datacontenttype": "application/json",
        "data": record.data,
    }


def relay(romancy: Romancy) -> int:
    """Publish what the outbox holds; returns how many rows were published."""
    settings = romancy.settings
    # Long enough for one batch to be sent; a relayer that stalls past it loses the rows.
    lock_seconds = max(30.0, settings.outbox_interval * 10)
    records = romancy.storage.claim_outbox(lock_seconds, BATCH)
    if not records:
        return 0
    exchange = Exchange(settings.outbox_exchange, type="topic", durable=True)  # type: ignore[no-untyped-call]  # kombu is untyped
    published = 0
    with romancy.app.producer_or_acquire() as producer:
        for record in records:
            try:
                producer.publish(
                    cloudevent(record, settings.outbox_source),
                    exchange=exchange,
                    routing_key=record.event_type,
                    serializer="json",
                    declare=[exchange],
                    retry=True,
                    retry_policy={"max_retries": 2, "interval_start": 0.2},
                )
            except Exception as exc:  # noqa: BLE001 - kept for the next pass, with backoff
                retry_in = min(2.0**record.attempts, 300.0)
                romancy.storage.finish_outbox(record, error=repr(exc), retry_in=retry_in)
                logger.warning(
                    "celery_romancy: outbox %s not sent (%r); retry in %.0f s",
                    record.event_id,
                    exc,
                    retry_in,
                )
            else:
                romancy.storage.finish_outbox(record)
                published += 1
    return published
