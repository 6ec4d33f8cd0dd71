"""When a business fact happened (`occurred_at`): any past since 1970, at most a few minutes
ahead of now (contract §3). One rule for orders, check-ins, feedback and card sales."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

# Clocks of POS terminals and phones drift; beyond this a business time is a mistake.
MAX_CLOCK_SKEW = timedelta(minutes=5)
# Any past is fine, within reason: before this a business time is a mistake too (and at the
# calendar's first instant the database driver would read it back as -infinity).
EARLIEST_BUSINESS_TIME = datetime(1970, 1, 1, tzinfo=UTC)


class BusinessTimeWithoutOffset(ValueError):
    """A business time without a UTC offset: which instant it means is unknown."""


class BusinessTimeOutOfRange(ValueError):
    """A business time (`occurred_at`) the platform does not take."""


class BusinessTimeInFuture(BusinessTimeOutOfRange):
    """A business time (`occurred_at`) lies more than MAX_CLOCK_SKEW ahead of now."""


def check_business_time(occurred_at: datetime, now: datetime) -> None:
    """Raise when `occurred_at` is not a business time the platform takes."""
    if occurred_at.tzinfo is None or occurred_at.utcoffset() is None:
        raise BusinessTimeWithoutOffset("a business time needs an offset")
    if occurred_at < EARLIEST_BUSINESS_TIME:
        raise BusinessTimeOutOfRange(f"{occurred_at.isoformat()} lies before 1970")
    if occurred_at - now > MAX_CLOCK_SKEW:
        raise BusinessTimeInFuture(
            f"{occurred_at.isoformat()} lies more than "
            f"{int(MAX_CLOCK_SKEW.total_seconds() // 60)} minutes in the future"
        )
