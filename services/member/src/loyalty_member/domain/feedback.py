"""Feedback rules: survey answers, complaint ticket stages and the response deadline."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

ComplaintStatus = Literal["received", "acknowledged", "investigating", "resolved", "closed"]
RecommendLevel = Literal["very_likely", "possible", "unlikely"]

# The stages in order. A ticket only moves forward, one step or several at once: a complaint
# fixed on the spot goes straight from received to resolved (domain.md, complaints (000)).
STAGES: tuple[ComplaintStatus, ...] = (
    "received",
    "acknowledged",
    "investigating",
    "resolved",
    "closed",
)
OPENED: ComplaintStatus = "received"
FINAL: ComplaintStatus = "closed"
WEEKEND = (5, 6)  # Saturday, Sunday (date.weekday())


class InvalidStatusTransition(ValueError):
    def __init__(self, current: str, target: str) -> None:
        self.current = current
        self.target = target
        if current == FINAL:
            why = "a closed ticket is final"
        elif current == target:
            why = f"the ticket is {current} already"
        else:
            why = "a ticket only moves forward"
        super().__init__(f"cannot move a ticket from {current} to {target}: {why}")


def next_statuses(current: str) -> list[ComplaintStatus]:
    """Where a ticket in `current` may move: any later stage."""
    if current not in STAGES:
        return []
    return list(STAGES[STAGES.index(current) + 1 :])


def check_transition(current: str, target: str) -> None:
    if target not in next_statuses(current):
        raise InvalidStatusTransition(current, target)


def is_working_day(day: date) -> bool:
    """Monday to Friday. Public holidays (and China's swapped weekend working days) are not
    modelled: the deadline may fall on a holiday."""
    return day.weekday() not in WEEKEND


def next_working_day(day: date) -> date:
    day += timedelta(days=1)
    while not is_working_day(day):
        day += timedelta(days=1)
    return day


def response_deadline(received_at: datetime, timezone: str) -> datetime:
    """A satisfactory answer is due within one working day (000): by the same local time on
    the next working day after the day of receipt, in the member's timezone (Friday 15:00 ->
    Monday 15:00; Saturday 10:00 -> Monday 10:00). A local time the clocks skip that day
    (DST) is read with the offset before the change, i.e. an hour later on the wall clock."""
    zone = ZoneInfo(timezone)
    local = received_at.astimezone(zone)
    due_day = next_working_day(local.date())
    due = datetime.combine(due_day, local.time().replace(tzinfo=None), tzinfo=zone)
    return due.astimezone(UTC)


def is_overdue(status: str, response_due_at: datetime, now: datetime) -> bool:
    """Overdue: the deadline passed while the ticket still waits for its first response."""
    return status == OPENED and response_due_at < now


def recommend_level(recommend: int | None) -> RecommendLevel | None:
    """The seed's three levels of recommend likelihood (002) over the 0-10 scale, with the
    usual NPS cuts: 9-10 very likely (promoters), 7-8 possible, 0-6 unlikely."""
    if recommend is None:
        return None
    if recommend >= 9:
        return "very_likely"
    if recommend >= 7:
        return "possible"
    return "unlikely"


__all__ = [
    "FINAL",
    "OPENED",
    "STAGES",
    "ComplaintStatus",
    "InvalidStatusTransition",
    "RecommendLevel",
    "check_transition",
    "is_overdue",
    "is_working_day",
    "next_statuses",
    "next_working_day",
    "recommend_level",
    "response_deadline",
]
