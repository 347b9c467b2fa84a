"""Retention: delete finished workflows, with everything stored about them, once old.

``romancy.purge()`` and the daily beat job ``romancy.purge`` delete the instances that
ended ``completed``, ``failed``, ``cancelled``, ``compensated`` or ``continued`` longer
than ``romancy_retention`` ago, with their history, steps, attempts, compensations,
business keys, operators' actions, consumed events and relayed outbox rows. Never a
live instance, never one parked in ``compensation_failed``, nor one parked ``failed``
by a nondeterminism or poison-step error, not rolled back (an operator still has to
act on them: ``retry_compensation``, ``resume``), and never part of a tree: a child
workflow goes with its root, once the whole tree has finished and is old (see
``storage/purge.py``). A chain of runs (``continue_as_new``) keeps its first run, the
id callers hold, until its last run has ended and is old: then the whole chain goes
together (``status`` picks a chain by its last run's status); an old middle run goes
on its own, the chain linked past it (``storage/purge_chains.py``).

It works in batches of ``BATCH`` trees, each deleted in one short transaction, so no
lock is held for long and workflows run on meanwhile; two purges at once (beat sending
it twice) skip each other's batches on PostgreSQL.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from .errors import InvalidArgumentsError
from .states import Status
from .storage.purge import PURGEABLE, PurgeCounts, RootKey, owned_tables
from .storage.schema import utcnow

if TYPE_CHECKING:
    from .app import Romancy

logger = logging.getLogger(__name__)

PURGE_TASK = "romancy.purge"
BATCH = 1000


@dataclass(frozen=True)
class PurgeReport:
    """What a purge deleted (or, with ``dry_run``, would delete): instances by status,
    rows by table (``romancy_instances`` included)."""

    cutoff: datetime
    dry_run: bool
    statuses: dict[str, int]
    rows: dict[str, int]

    @property
    def instances(self) -> int:
        return self.rows.get("romancy_instances", 0)

    def counts(self) -> dict[str, int]:
        """Rows by table: what the beat task returns."""
        return dict(self.rows)


def purge(
    romancy: Romancy,
    older_than: timedelta | float | None = None,
    status: str | Sequence[str] | None = None,
    dry_run: bool = False,
) -> PurgeReport:
    """Delete finished instances that ended more than ``older_than`` ago (default:
    ``romancy_retention``), only those in ``status`` if given. See the module docstring."""
    age = _age(romancy.settings.retention if older_than is None else older_than)
    statuses = _statuses(status)
    cutoff = _cutoff(age)
    storage = romancy.storage
    if dry_run:
        counts = storage.count_purgeable(cutoff, statuses)
    else:
        counts = PurgeCounts()
        for one in statuses:
            after: RootKey | None = None
            while True:
                deleted, after, seen = storage.purge_batch(cutoff, one, BATCH, after)
                counts.statuses.update(deleted.statuses)
                counts.rows.update(deleted.rows)
                if seen < BATCH:
                    break
        if counts.rows["romancy_instances"]:
            for table in ("romancy_events", "romancy_outbox"):
                counts.rows[table] += _purge_orphans(romancy, table)
    tables = [t.name for t in owned_tables()]
    tables += ["romancy_instances", "romancy_events", "romancy_outbox"]
    report = PurgeReport(
        cutoff,
        dry_run,
        {s: n for s, n in sorted(counts.statuses.items()) if n},
        {t: counts.rows[t] for t in sorted(tables)},
    )
    # One line per run; a run that found nothing stays quiet, like the other jobs.
    logger.log(
        logging.INFO if report.instances or dry_run else logging.DEBUG,
        "celery_romancy: %s %d finished instances that ended before %s (%s); rows: %s",
        "would purge" if dry_run else "purged",
        report.instances,
        cutoff.isoformat(timespec="seconds"),
        ", ".join(f"{s} {n}" for s, n in report.statuses.items()) or "none",
        ", ".join(f"{t} {n}" for t, n in report.rows.items() if n) or "none",
    )
    return report


def _purge_orphans(romancy: Romancy, table: str) -> int:
    deleted, after = 0, 0
    while True:
        n, after = romancy.storage.purge_orphans(table, BATCH, after)
        deleted += n
        if after == 0:
            return deleted


def _age(older_than: object) -> timedelta:
    if isinstance(older_than, timedelta):
        age = older_than
    elif (
        isinstance(older_than, int | float)
        and not isinstance(older_than, bool)
        and math.isfinite(older_than)
    ):
        age = _seconds(older_than)
    else:
        raise InvalidArgumentsError(
            f"older_than takes a timedelta or a number of seconds, not {older_than!r}"
        )
    if age <= timedelta(0):
        raise InvalidArgumentsError(f"older_than must be more than zero, not {older_than!r}")
    return age


def _seconds(seconds: float) -> timedelta:
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise InvalidArgumentsError(f"older_than is too long: {seconds!r} s") from None


def _cutoff(age: timedelta) -> datetime:
    """When the instances to purge ended at the latest; a clear error, not an
    ``OverflowError``, for an age that reaches before the year 1."""
    try:
        return utcnow() - age
    except OverflowError:
        raise InvalidArgumentsError(f"older_than reaches back before the year 1: {age}") from None


def _statuses(status: str | Sequence[str] | None) -> list[str]:
    if status is None:
        return sorted(PURGEABLE)
    given = [status] if isinstance(status, str) else list(status)
    if not given:
        raise InvalidArgumentsError("status: give at least one status, or None for all")
    for one in given:
        if one not in PURGEABLE:
            known = one in {s.value for s in Status}
            why = "is never purged (live, or waiting for an operator)" if known else "is no status"
            raise InvalidArgumentsError(
                f"status {one!r} {why}; purge takes {', '.join(sorted(PURGEABLE))}"
            )
    return sorted(set(given))
