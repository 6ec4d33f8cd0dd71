"""Whose birthday falls on a day: member ids and time zones only (no names, no birthdays), a
page at a time, for the coupon service's birthday campaigns.

Birthdays are personal data and never travel in events, so a neighbour that acts on them asks
here, day by day. The query reads the partial expression index `members_birthday_month_day`
(month, day, member_id; migration 0006): it must use the same two `EXTRACT` expressions and
the same `birthday IS NOT NULL AND erased_at IS NULL` conditions as that index.

Members born on 29 February are listed on 28 February in years without a 29 February, and on
29 February in leap years (never twice in one year)."""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date

from loyalty_shared.errors import Unprocessable
from loyalty_shared.paging import cursor_after, encode_cursor
from loyalty_shared.service import Runtime
from sqlalchemy import extract, select

from ..adapters.tables import members
from ..domain.checkins import local_day

BIRTH_MONTH = extract("month", members.c.birthday)
BIRTH_DAY = extract("day", members.c.birthday)

_MONTH_DAY = re.compile(r"^(\d{2})-(\d{2})$")


@dataclass(frozen=True)
class BirthdayPage:
    items: list[dict[str, str]]  # {member_id, timezone}
    next_cursor: str | None = None


def _invalid(field: str, msg: str) -> Unprocessable:
    return Unprocessable(
        "validation_error",
        f"{field}: {msg}",
        errors=[{"loc": ["query", field], "msg": msg, "type": "value_error"}],
    )


def parse_month_day(on: str) -> tuple[int, int]:
    """`MM-DD` → (month, day); any day of a leap year (02-29 included), else ValueError."""
    match = _MONTH_DAY.match(on)
    if match is None:
        raise ValueError("must be a month and day as MM-DD, e.g. 05-17")
    month, day = int(match.group(1)), int(match.group(2))
    try:
        date(2000, month, day)  # a leap year: every month-day that exists in some year
    except ValueError:
        raise ValueError(f"{on} is not a day of the year") from None
    return month, day


def birth_days_listed(month: int, day: int, year: int) -> list[int]:
    """The birth days of `month` whose members are listed on (month, day) of `year`: 29 February
    birthdays are celebrated on 28 February when the year has no 29 February."""
    if (month, day) == (2, 28) and not calendar.isleap(year):
        return [28, 29]
    return [day]


async def birthdays_on(
    runtime: Runtime, on: str, *, year: int | None, limit: int, cursor: str | None
) -> BirthdayPage:
    """Members (not erased) whose birthday is celebrated on `on` (MM-DD) of `year` (default:
    this year on the service's clock in Asia/Shanghai), by member_id, `limit` at a time."""
    try:
        month, day = parse_month_day(on)
    except ValueError as exc:
        raise _invalid("on", str(exc)) from exc
    if year is None:
        year = local_day(runtime.clock.now()).year
    if (month, day) == (2, 29) and not calendar.isleap(year):
        raise _invalid(
            "on", f"{year} has no 29 February; its 29 February birthdays are listed on 02-28"
        )
    after = cursor_after(cursor, 1)  # the last member_id of the page before
    query = select(members.c.member_id, members.c.timezone).where(
        members.c.birthday.is_not(None),
        members.c.erased_at.is_(None),
        BIRTH_MONTH == month,
        BIRTH_DAY.in_(birth_days_listed(month, day, year)),
    )
    if after is not None:
        query = query.where(members.c.member_id > after[0])
    async with runtime.engine.connect() as conn:
        rows = (await conn.execute(query.order_by(members.c.member_id).limit(limit + 1))).all()
    items = [{"member_id": r.member_id, "timezone": r.timezone} for r in rows[:limit]]
    next_cursor = encode_cursor(items[-1]["member_id"]) if len(rows) > limit else None
    return BirthdayPage(items=items, next_cursor=next_cursor)
