"""When a scheduled workflow's runs are due: the ticks of its schedule. Pure, no I/O.

Celery beat sends a due entry without saying which tick it was due for, and several
beats (or a restarted one) may send the same tick. Both are answered by naming each
run after its tick, computed from the moment beat sent it: the latest tick of the
schedule at or before that moment. Every sender of the same tick then names the same
instance, and ``start_workflow``'s idempotency starts it once.

Two kinds of schedule have ticks one can compute without beat's state:

- a ``crontab``: the minutes its fields match, on the wall clock of the app's
  timezone (as beat reads it);
- an interval (seconds, a ``timedelta`` or ``celery.schedules.schedule``), made an
  ``EveryInterval``: the whole multiples of the interval since the Unix epoch. Beat's
  own interval counts from each entry's last run, so two beats started apart would
  never send the same moment; aligned on the epoch, every beat sends the same ticks.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any

from celery.schedules import crontab, schedstate, schedule

from .errors import InvalidArgumentsError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
# How far back to look for a crontab's latest tick: its rarest ticks (29 February on a
# given weekday) are 28 years apart, 40 across a century not divisible by 400.
MAX_DAYS_BACK = 41 * 366


class EveryInterval(schedule):  # type: ignore[misc]  # untyped Celery
    """An interval schedule whose ticks are the multiples of ``run_every`` since the
    epoch (every hour on the hour; every 10 s at :00, :10, ...). Due when a tick passed
    since the entry last ran: a beat down through several ticks sends once, when it is
    back (the latest of them is started)."""

    def __init__(self, run_every: float | timedelta, **kwargs: Any) -> None:
        super().__init__(run_every, **kwargs)
        self.micros = interval_micros(self.run_every)

    def is_due(self, last_run_at: datetime) -> schedstate:
        now = self.maybe_make_aware(self.now())
        tick = latest_interval_tick(self.micros, now)
        due = self.maybe_make_aware(last_run_at) < tick
        # Next check at the next tick, never later.
        following = (tick + self.run_every - now).total_seconds()
        return schedstate(is_due=due, next=max(following, 0.0))

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        due, following = self.is_due(last_run_at)
        return timedelta(0) if due else timedelta(seconds=following)

    def __repr__(self) -> str:
        return f"<every {self.human_seconds}, on the epoch>"

    def __reduce__(self) -> tuple[type, tuple[timedelta]]:
        return self.__class__, (self.run_every,)


def interval_micros(run_every: timedelta) -> int:
    """The interval in whole microseconds, or ``InvalidArgumentsError``."""
    micros = run_every // MICROSECOND
    if micros < 1_000_000 or micros % 1_000_000:
        raise InvalidArgumentsError(
            f"a schedule's interval must be a whole number of seconds, at least 1, not "
            f"{run_every.total_seconds()} s"
        )
    return int(micros)


def as_tickable(given: Any) -> crontab | EveryInterval:
    """The schedule ``romancy.schedule`` accepts, as one whose ticks it can compute."""
    if isinstance(given, crontab | EveryInterval):
        return given
    if type(given) is schedule:  # not a subclass: its ticks may be others
        return EveryInterval(given.run_every)
    if isinstance(given, timedelta):
        return EveryInterval(given)
    is_number = isinstance(given, int | float) and not isinstance(given, bool)
    if is_number and math.isfinite(given):
        return EveryInterval(timedelta(seconds=given))
    raise InvalidArgumentsError(
        "schedule must be a celery.schedules.crontab, an interval (seconds, a timedelta or "
        f"celery.schedules.schedule), not {type(given).__name__}"
    )


def latest_tick(tickable: crontab | EveryInterval, at: datetime, tz: tzinfo) -> datetime:
    """The latest tick at or before ``at`` (aware), in UTC; ``tz``: the app's timezone,
    whose wall clock a crontab reads."""
    if isinstance(tickable, EveryInterval):
        return latest_interval_tick(tickable.micros, at)
    return latest_cron_tick(tickable, at, tz)


def next_tick(tickable: crontab | EveryInterval, at: datetime, tz: tzinfo) -> datetime:
    """The first tick after ``at``, in UTC (for listing a schedule's next run)."""
    if isinstance(tickable, EveryInterval):
        following_tick: datetime = latest_interval_tick(tickable.micros, at) + tickable.run_every
        return following_tick
    start, delta, _ = tickable.remaining_delta(at.astimezone(tz), tz=tz)
    following: datetime = start + delta
    return following.astimezone(UTC)


def latest_interval_tick(micros: int, at: datetime) -> datetime:
    since_epoch = (at - EPOCH) // MICROSECOND
    return EPOCH + timedelta(microseconds=since_epoch - since_epoch % micros)


def latest_cron_tick(cron: crontab, at: datetime, tz: tzinfo) -> datetime:
    """Walk back from ``at``'s minute, day by day, to the latest minute the crontab's
    fields all match (Celery's rule: month, day of month and day of week must all
    match, not either day field as in Unix cron)."""
    local = at.astimezone(tz).replace(tzinfo=None)
    day = local.date()
    for _ in range(MAX_DAYS_BACK):
        if _day_matches(cron, day):
            moment = _latest_time_of_day(cron, day, local)
            if moment is not None:
                return moment.replace(tzinfo=tz).astimezone(UTC)
        day -= timedelta(days=1)
    raise InvalidArgumentsError(f"the crontab {cron!r} has no tick in the last 40 years")


def _day_matches(cron: crontab, day: date) -> bool:
    return (
        day.month in cron.month_of_year
        and day.day in cron.day_of_month
        and day.isoweekday() % 7 in cron.day_of_week  # Celery's Sunday is 0
    )


def _latest_time_of_day(cron: crontab, day: date, local: datetime) -> datetime | None:
    """The day's latest matching minute, not after ``local`` if it is that day."""
    today = day == local.date()
    for hour in sorted(cron.hour, reverse=True):
        if today and hour > local.hour:
            continue
        latest = local.minute if today and hour == local.hour else 59
        minutes = [minute for minute in cron.minute if minute <= latest]
        if minutes:
            return datetime(day.year, day.month, day.day, hour, max(minutes))
    return None


def describe(tickable: crontab | EveryInterval) -> str:
    """For people: ``cron 0 2 * * *`` (minute hour day-of-month month day-of-week, in
    the app's timezone) or ``every 3600 s``."""
    if isinstance(tickable, EveryInterval):
        return f"every {tickable.micros // 1_000_000} s"
    fields = (
        tickable._orig_minute,
        tickable._orig_hour,
        tickable._orig_day_of_month,
        tickable._orig_month_of_year,
        tickable._orig_day_of_week,
    )
    return "cron " + " ".join(str(field) for field in fields)


def tick_label(tick: datetime) -> str:
    """The tick as it appears in instance ids: UTC, to the second (``...T02:00:00Z``)."""
    return tick.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
