"""The oracle: what every points account must hold after a stream of sign-ups and orders, by the
default rules of the points README, computed in plain Python.

Independent of the service on purpose (no `loyalty_points` import, no shared rule code): it
restates the rules from the README and contract §5 as simply as possible, so that a mistake in
the service cannot hide in both places.

The rules it knows (the defaults; every member of the stream is bronze, multiplier 1.0):
- signup: 100 points, available at once, not counted toward the daily cap;
- purchase on `order.paid`: floor(paid_minor / 100) points, times 2 when the order's time is the
  20th in Asia/Shanghai; pending 7 days from the order's time; at most 10000 purchase points per
  member and local day (what is over is capped, and a cap once used stays used);
- a second `order.paid` for an order that earned changes nothing;
- refunds (`refunded_total_minor` counts all refunds of the order so far): the order then holds
  the purchase rule on its net paid amount with the multiplier of its purchase, never more than
  it was awarded; the difference is taken back (from its own pending lot: nothing is released
  while the events are applied);
- a cancelled order holds nothing; refunds or cancels of an order that never earned change
  nothing;
- `release-pending` at `as_of`: what remains of each order whose time + 7 days <= as_of becomes
  available.
Deliveries are deduplicated by event id, as the contract says every consumer does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

SIGNUP_POINTS = 100
PER_MINOR = 100
MEMBER_DAY = 20
MEMBER_DAY_FACTOR = 2
PENDING = timedelta(days=7)
DAILY_CAP = 10000
SHANGHAI = ZoneInfo("Asia/Shanghai")


@dataclass(frozen=True)
class Fact:
    """One business fact as it travels, with the id of the event that carries it.

    kind: signup | placed | paid | refund | cancel. `member_id` is None for guest orders.
    """

    event_id: str
    kind: str
    member_id: str | None
    at: datetime
    order_id: str | None = None
    paid_minor: int = 0
    refunded_total_minor: int = 0  # refund and cancel: all refunds of the order so far
    amount_minor: int = 0  # refund: this one
    previous_status: str = "paid"  # cancel
    total_minor: int = 0  # what the order totals before payment (not read by the rules)
    refund_id: str | None = None


@dataclass
class Expected:
    available: int = 0
    pending: int = 0
    lifetime_earned: int = 0
    # ledger entries the account must hold: (kind, source event id) for earn and reverse, and
    # (release, paid event id) for releases
    entries: set[tuple[str, str]] = field(default_factory=set)

    def balances(self) -> tuple[int, int, int]:
        return self.available, self.pending, self.lifetime_earned


@dataclass
class _Order:
    member_id: str
    paid_event_id: str
    at: datetime
    paid_minor: int
    factor: int
    awarded: int
    current: int
    lot: bool  # it earned something before the cap: a lot exists (perhaps of 0 points)
    refunded: int = 0
    cancelled: bool = False


def purchase_points(paid_minor: int, factor: int) -> int:
    return (max(paid_minor, 0) // PER_MINOR) * factor


def member_day_factor(at: datetime) -> int:
    return MEMBER_DAY_FACTOR if at.astimezone(SHANGHAI).day == MEMBER_DAY else 1


def expected_accounts(
    facts: Iterable[Fact],
    *,
    release_as_of: datetime | None = None,
    coverage: Counter[str] | None = None,
) -> dict[str, Expected]:
    """Each member's account after the facts, applied in the order given (each member's own
    facts must come in their order; how members interleave does not matter). `coverage`, when
    given, counts which rules the stream exercised."""
    cover: Counter[str] = Counter() if coverage is None else coverage
    accounts: dict[str, Expected] = {}
    orders: dict[str, _Order] = {}
    earned_by_day: dict[tuple[str, object], int] = {}
    seen: set[str] = set()
    for fact in facts:
        if fact.event_id in seen:
            continue  # a redelivery: the inbox skips it
        seen.add(fact.event_id)
        if fact.member_id is None:
            continue  # guest orders earn nobody anything
        account = accounts.setdefault(fact.member_id, Expected())
        if fact.kind == "signup":
            account.available += SIGNUP_POINTS
            account.lifetime_earned += SIGNUP_POINTS
            account.entries.add(("earn", fact.event_id))
        elif fact.kind == "paid":
            assert fact.order_id is not None
            if fact.order_id in orders:
                continue  # the same order paid again under a new event id
            factor = member_day_factor(fact.at)
            points = purchase_points(fact.paid_minor, factor)
            day = (fact.member_id, fact.at.astimezone(SHANGHAI).date())
            already = earned_by_day.get(day, 0)
            granted = max(min(points, DAILY_CAP - already), 0)
            earned_by_day[day] = already + granted
            cover["paid orders"] += 1
            cover["on member day"] += factor > 1
            cover["capped"] += granted < points
            cover["earning nothing"] += points == 0
            orders[fact.order_id] = _Order(
                fact.member_id,
                fact.event_id,
                fact.at,
                fact.paid_minor,
                factor,
                granted,
                granted,
                lot=points > 0,
            )
            if points > 0:  # an entry, even when the cap took all of it
                account.entries.add(("earn", fact.event_id))
            account.pending += granted
            account.lifetime_earned += granted
        elif fact.kind in ("refund", "cancel"):
            order = orders.get(fact.order_id or "")
            if order is None:
                continue  # never earned: nothing to take back
            if fact.kind == "refund":
                order.refunded = max(order.refunded, fact.refunded_total_minor)
            else:
                order.cancelled = True
            net = purchase_points(order.paid_minor - order.refunded, order.factor)
            target = 0 if order.cancelled else min(net, order.awarded)
            excess = order.current - target
            cover[f"{fact.kind}s"] += 1
            if excess > 0:
                cover[f"{fact.kind}s taking points back"] += 1
                order.current -= excess
                account.pending -= excess
                account.lifetime_earned -= excess
                account.entries.add(("reverse", fact.event_id))
        elif fact.kind == "placed":
            pass  # the points service does not read order.placed
        else:
            raise ValueError(f"unknown fact kind {fact.kind!r}")
    if release_as_of is not None:
        for order in orders.values():
            if order.lot and order.at + PENDING <= release_as_of:
                account = accounts[order.member_id]
                account.pending -= order.current
                account.available += order.current
                account.entries.add(("release", order.paid_event_id))
    return accounts
