"""Daily check-ins: the member's local day and streaks (business times: domain.business_time)."""

from __future__ import annotations

from collections.abc import Container
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from .business_time import (
    EARLIEST_BUSINESS_TIME,
    MAX_CLOCK_SKEW,
    BusinessTimeInFuture,
    BusinessTimeOutOfRange,
    check_business_time,
)

DEFAULT_TIMEZONE = "Asia/Shanghai"


def business_time(occurred_at: datetime | None, now: datetime) -> datetime:
    """When a fact happened, in UTC: `occurred_at` if given (the past is fine: offline POS
    terminals import their backlog), else now. More than 5 minutes ahead is refused."""
    if occurred_at is None:
        return now.astimezone(UTC)
    check_business_time(occurred_at, now)
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
