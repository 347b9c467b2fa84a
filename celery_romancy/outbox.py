"""The outbox relay: publish committed outbox rows with kombu, as CloudEvents JSON.

Rows are committed with the step that produced them, so a step that rolled back never
publishes. The process that commits them publishes them right away (``relay_written``,
called after the commit); beat's ``romancy.relay_outbox`` (``relay``, every
``romancy_outbox_interval``) is only the fallback for rows a crash or a broker outage
left behind. Either marks a row in progress (a lock with an expiry) before sending and
published after; a relayer that dies in between leaves the row to be taken again when
its lock runs out. Delivery is therefore at least once, with a stable CloudEvents ``id``
for consumers to drop duplicates.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from kombu.entity import Exchange

from .storage import OutboxRecord, StepWrite

if TYPE_CHECKING:
    from .app import Romancy

logger = logging.getLogger(__name__)

BATCH = 100
# How long a relayer holds the rows it took: long enough to send one batch. A relayer
# that stalls past it may see its rows sent again by another (at least once).
LOCK_SECONDS = 60.0


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


def relay_written(romancy: Romancy, write: StepWrite) -> int:
    """Publish the outbox rows ``write`` has just committed (its child workflows' starts
    included), from the process that committed it; returns how many were published.

    Never raises: the step is recorded already, and a row this misses (the database or
    the broker failed) stays in the outbox for beat's fallback relay.
    """
    event_ids = written_event_ids(write)
    if not event_ids:
        return 0
    try:
        records = romancy.storage.claim_outbox(LOCK_SECONDS, len(event_ids), event_ids)
        published = _publish(romancy, records)
    except Exception:  # left to the fallback relay, which logs what it sends
        logger.warning(
            "celery_romancy: outbox events %s not relayed after their commit; "
            "the beat relay will send them",
            ", ".join(event_ids),
            exc_info=True,
        )
        return 0
    logger.debug("celery_romancy: relayed %d outbox events after their commit", published)
    return published


def written_event_ids(write: StepWrite) -> list[str]:
    """The event ids of the outbox rows ``write`` inserts, its children's starts included."""
    event_ids = [row["event_id"] for row in write.outbox]
    for child in write.children:
        event_ids += written_event_ids(child.write)
    return event_ids


def relay(romancy: Romancy) -> int:
    """Publish what the outbox still holds (the fallback: rows a crash, a database or a
    broker failure left behind, and rows whose lock ran out); returns how many were
    published."""
    published = 0
    while True:
        records = romancy.storage.claim_outbox(LOCK_SECONDS, BATCH)
        sent = _publish(romancy, records)
        published += sent
        # A short batch: nothing more is due. A batch with nothing sent: the broker is
        # failing, its rows wait for their retry time; the next run tries again.
        if len(records) < BATCH or not sent:
            break
    if published:
        logger.info(
            "celery_romancy: outbox relay sent %d events left behind after their commit",
            published,
        )
    else:
        logger.debug("celery_romancy: outbox relay found nothing to send")
    return published


def _publish(romancy: Romancy, records: list[OutboxRecord]) -> int:
    """Send rows taken for relaying, marking each published, or pending again with a
    backoff if the broker refused it; returns how many were sent."""
    if not records:
        return 0
    settings = romancy.settings
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
                    "celery_romancy: outbox %s not sent (%r); the beat relay retries it "
                    "in %.0f s or later",
                    record.event_id,
                    exc,
                    retry_in,
                )
            else:
                romancy.storage.finish_outbox(record)
                published += 1
    return published
