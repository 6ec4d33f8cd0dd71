"""Card plans, card numbers and validity periods as plain Python (no I/O)."""

from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime
from typing import Final, Literal, get_args
from zoneinfo import ZoneInfo

from .members import card_no_is_valid, new_card_no

PlanKind = Literal["free", "paid", "tier", "internal"]
Period = Literal["month", "year"]
CardStatus = Literal["unbound", "active", "expired"]

PLAN_KINDS: Final = frozenset(get_args(PlanKind))
FREE_PLAN: Final = "free"  # every member's sign-up card (members.card_no) is on this plan
# Tier plans mirror the tier ladder (PUT /v1/tiers) and carry this prefix; nobody else may.
TIER_PLAN_PREFIX: Final = "tier-"
PLAN_CODE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")
CARD_NO_LENGTH: Final = 16
MAX_BATCH: Final = 10_000
MAX_PREFIX: Final = 8
# Kinds a physical batch may be printed for: paid cards are bought, tier cards are earned.
BATCH_PLAN_KINDS: Final = frozenset({"free", "internal"})

FieldError = tuple[tuple[str | int, ...], str]


def tier_plan_code(tier_code: str) -> str:
    return TIER_PLAN_PREFIX + tier_code


def plan_errors(
    *, code: str, kind: str, price_minor: int | None, period: str | None
) -> list[FieldError]:
    """The rules a new card plan breaks (tier plans are made by the ladder, not by hand)."""
    errors: list[FieldError] = []
    if code.startswith(TIER_PLAN_PREFIX):
        errors.append((("code",), f"codes starting '{TIER_PLAN_PREFIX}' belong to tier plans"))
    if kind == "tier":
        errors.append((("kind",), "tier plans follow the tier ladder: set them with PUT /v1/tiers"))
    elif kind == "paid":
        if price_minor is None:
            errors.append((("price_minor",), "a paid plan needs a price_minor"))
        if period is None:
            errors.append((("period",), "a paid plan needs a period: month or year"))
    else:
        if price_minor is not None:
            errors.append((("price_minor",), f"a {kind} plan has no price; only paid plans do"))
        if period is not None:
            errors.append((("period",), f"a {kind} plan has no period; only paid plans do"))
    return errors


def _add_months(local: datetime, months: int) -> datetime:
    month_index = local.month - 1 + months
    year, month = local.year + month_index // 12, month_index % 12 + 1
    day = min(local.day, calendar.monthrange(year, month)[1])  # 31 Jan + 1 month = 28/29 Feb
    return local.replace(year=year, month=month, day=day)


def add_period(start: datetime, period: str, timezone: str = "Asia/Shanghai") -> datetime:
    """`start` plus one calendar month or year on the member's wall clock, as UTC."""
    months = {"month": 1, "year": 12}[period]
    zone = ZoneInfo(timezone)
    local = start.astimezone(zone).replace(tzinfo=None)
    return _add_months(local, months).replace(tzinfo=zone).astimezone(UTC)


def renewal_period(
    now: datetime, expires_at: datetime | None, period: str, timezone: str = "Asia/Shanghai"
) -> tuple[datetime, datetime]:
    """The period a purchase buys: from the later of now and the current expiry, one period on;
    a member who renews early loses nothing, one who lapsed starts again from now."""
    start = max(now, expires_at) if expires_at is not None else now
    return start, add_period(start, period, timezone)


def valid_prefix(prefix: str) -> bool:
    return prefix.isascii() and prefix.isdigit() and 1 <= len(prefix) <= MAX_PREFIX


def new_batch_card_nos(prefix: str, count: int) -> list[str]:
    """`count` distinct 16-digit numbers starting with `prefix`, each with a Luhn check digit."""
    numbers: set[str] = set()
    while len(numbers) < count:
        numbers.add(new_card_no(prefix))
    return sorted(numbers)


def card_no_well_formed(card_no: str) -> bool:
    """16 ASCII digits whose last one is the Luhn check digit of the others."""
    return (
        len(card_no) == CARD_NO_LENGTH
        and card_no.isascii()
        and card_no.isdigit()
        and card_no_is_valid(card_no)
    )


def card_status(member_id: str | None, expires_at: datetime | None, now: datetime) -> CardStatus:
    if member_id is None:
        return "unbound"
    if expires_at is not None and expires_at <= now:
        return "expired"
    return "active"
