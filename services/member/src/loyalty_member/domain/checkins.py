"""Daily check-ins: the member's local day, streaks, and how far ahead a business time may lie."""

from __future__ import annotations

from collections.abc import Container
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

DEFAULT_TIMEZONE = "Asia/Shanghai"
# Clocks of POS terminals and phones drift; beyond this a business time is a mistake (contract §3).
MAX_CLOCK_SKEW = timedelta(minutes=5)
# Any past is fine, within reason: before this a business time is a mistake too (and at the
# calendar's first instant the database driver would read it back as -infinity).
EARLIEST_BUSINESS_TIME = datetime(1970, 1, 1, tzinfo=UTC)


class BusinessTimeOutOfRange(ValueError):
    """A business time (`occurred_at`) the platform does not take."""


class BusinessTimeInFuture(BusinessTimeOutOfRange):
    """A business time (`occurred_at`) lies more than MAX_CLOCK_SKEW ahead of now."""


def business_time(occurred_at: datetime | None, now: datetime) -> datetime:
    """When a fact happened, in UTC: `occurred_at` if given (the past is fine: offline POS
    terminals import their backlog), else now. More than 5 minutes ahead is refused."""
    if occurred_at is None:
        return now.astimezone(UTC)
    if occurred_at.tzinfo is None:
        raise ValueError("a business time needs an offset")
    if occurred_at < EARLIEST_BUSINESS_TIME:
        raise BusinessTimeOutOfRange(f"{occurred_at.isoformat()} lies before 1970")
    if occurred_at - now > MAX_CLOCK_SKEW:
        raise BusinessTimeInFuture(
            f"{occurred_at.isoformat()} lies more than "
            f"{int(MAX_CLOCK_SKEW.total_seconds() // 60)} minutes in the future"
        )
    return occurred_at.astimezone(UTC)


def local_day(instant: datetime, timezone: str = DEFAULT_TIMEZONE) -> date:
    """The calendar day an instant falls on in an IANA time zone (16:30 UTC is already the
    next day in Shanghai). Days are calendar days, not 24-hour spans, so DST days of 23 or
    25 hours are one day each."""
    return instant.astimezone(ZoneInfo(timezone)).date()


def run_ending(day: date, checked_in: Container[date]) -> int:
    """How many consecutive days with a check-in end on `day` (0 when `day` has none)."""
    run = 0
    while day - timedelta(days=run) in checked_in:
        run += 1
    return run


def streak_for(day: date, checked_in: Container[date]) -> int:
    """The streak a new check-in on `day` records: itself plus the unbroken run of check-in
    days that ends the day before. A missed day resets it to 1."""
    return 1 + run_ending(day - timedelta(days=1), checked_in)


def current_streak(today: date, checked_in: Container[date]) -> int:
    """The streak as it stands today: it is still alive until the end of the day after the
    last check-in, so a member who checked in yesterday but not yet today keeps it."""
    return run_ending(today, checked_in) or run_ending(today - timedelta(days=1), checked_in)


__all__ = [
    "DEFAULT_TIMEZONE",
    "EARLIEST_BUSINESS_TIME",
    "MAX_CLOCK_SKEW",
    "BusinessTimeInFuture",
    "BusinessTimeOutOfRange",
    "business_time",
    "current_streak",
    "local_day",
    "run_ending",
    "streak_for",
]
