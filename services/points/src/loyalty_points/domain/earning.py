"""What each event earns or takes back, by the rules in force. Pure: no I/O, no clock.

Each function reads the member's account and what the points service knows of the member
(`Member`: time zone, tier, cards, points earned per local day) and changes them in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from .ledger import Account, Calculation, Entry, Source
from .rules import CheckinParams, PurchaseTerms, ReferralParams, Rulebook, SignupParams, Step
from .rules import local_date as to_local_date

DEFAULT_TIMEZONE = "Asia/Shanghai"


@dataclass
class Card:
    """A card's benefit, for orders whose business time lies in [valid_from, expires_at)."""

    multiplier: float
    expires_at: datetime | None
    valid_from: datetime | None = None

    def valid_at(self, at: datetime) -> bool:
        started = self.valid_from is None or self.valid_from <= at
        return started and (self.expires_at is None or at < self.expires_at)

    def renewed(self, later: Card) -> Card:
        """The same card issued again (renewed, replaced): one validity from the first start
        to the last end, with the newer benefit."""
        starts = [t for t in (self.valid_from, later.valid_from) if t is not None]
        ends = [self.expires_at, later.expires_at]
        return Card(
            later.multiplier,
            None if None in ends else max(e for e in ends if e is not None),
            min(starts) if len(starts) == 2 else None,
        )


@dataclass
class Member:
    """What the points service knows of a member, learnt from member events."""

    member_id: str
    timezone: str = DEFAULT_TIMEZONE
    tier: str | None = None
    cards: dict[str, Card] = field(default_factory=dict)
    earned_by_day: dict[date, int] = field(default_factory=dict)  # counted toward the cap
    changed_days: set[date] = field(default_factory=set)
    erased_at: datetime | None = None  # member.erased: the account takes no new money

    def card_multiplier(self, at: datetime) -> float:
        valid = [c.multiplier for c in self.cards.values() if c.valid_at(at)]
        return max(valid, default=1.0)

    def add_card(self, card_no: str, card: Card) -> None:
        known = self.cards.get(card_no)
        self.cards[card_no] = known.renewed(card) if known else card


@dataclass
class OrderPoints:
    """An order's points and the terms they were computed with (refunds reuse the terms)."""

    order_id: str
    member_id: str
    paid_minor: int
    refunded_minor: int = 0
    points: int = 1
    per_minor: int = 100
    multiplier: Decimal = Decimal(1)
    awarded: int = 0  # credited when paid (after the cap)
    current: int = 0  # what the order holds now, after reversals
    lot_id: str | None = None
    cancelled: bool = False
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def terms(self) -> PurchaseTerms:
        return PurchaseTerms(self.points, self.per_minor, self.multiplier)

    def target(self) -> int:
        """Points the order should hold: the purchase rule on the net paid amount, with the
        multipliers of its purchase, never above what it was awarded."""
        if self.cancelled:
            return 0
        return min(self.terms.points_for(self.paid_minor - self.refunded_minor), self.awarded)


@dataclass
class ReferralBonus:
    """A referrer's bonus and the referred member's order it follows (contract §5): when that
    order is cancelled or refunded in full, the bonus is taken back."""

    lot_id: str
    order_id: str
    referrer_id: str
    referred_member_id: str
    points: int
    reversed_at: datetime | None = None


def takes_back_everything(*, cancelled: bool, paid_minor: int, refunded_minor: int) -> bool:
    """An order that no longer counts as bought: cancelled, or refunded in full."""
    return cancelled or (paid_minor > 0 and refunded_minor >= paid_minor)


@dataclass
class Earnings:
    """The engine for one batch: rules in force, an id source and the processing time."""

    rules: Rulebook
    new_id: Callable[[], str]
    now: datetime

    def _capped(self, member: Member, points: int, occurred_at: datetime) -> tuple[int, int]:
        cap = self.rules.daily_cap()
        if cap is None:
            return points, 0
        day = to_local_date(occurred_at, member.timezone)
        already = member.earned_by_day.get(day, 0)
        granted = max(min(points, cap - already), 0)
        member.earned_by_day[day] = already + granted
        member.changed_days.add(day)
        return granted, points - granted

    def _credit(
        self,
        account: Account,
        member: Member,
        points: int,
        *,
        rule: str,
        reason: str,
        source: Source,
        occurred_at: datetime,
        pending: bool,
        capped: bool,
        calculation: Calculation | None = None,
    ) -> Entry | None:
        capped_points = 0
        if capped:
            points, capped_points = self._capped(member, points, occurred_at)
        if points <= 0 and capped_points <= 0:
            return None
        calculation = replace(
            calculation or Calculation(points + capped_points), capped_points=capped_points
        )
        # Points that do not wait are available now, even if the event's clock ran ahead.
        available_at = (
            self.rules.pending_until(occurred_at) if pending else min(occurred_at, self.now)
        )
        entry = account.earn(
            points,
            lot_id=self.new_id(),
            entry_id=self.new_id(),
            rule=rule,
            reason=reason,
            source=source,
            occurred_at=occurred_at,
            now=self.now,
            available_at=available_at,
            expires_at=self.rules.lot_expiry(occurred_at),
            capped_points=capped_points,
            calculation=calculation,
        )
        assert entry.lot_id is not None and entry.expires_at is not None
        if entry.bucket == "available" and entry.expires_at <= self.now:
            # earned by an event from before its own expiry: expired on arrival
            account.expire(entry.lot_id, entry_id=self.new_id(), now=self.now)
        return entry

    def signup(
        self, account: Account, member: Member, *, source: Source, registered_at: datetime
    ) -> Entry | None:
        params: SignupParams | None = self.rules.enabled("signup")
        if params is None or params.points <= 0:
            return None
        return self._credit(
            account,
            member,
            params.points,
            rule="signup",
            reason="signup bonus",
            source=source,
            occurred_at=registered_at,
            pending=False,
            capped=False,
        )

    def referral(
        self, account: Account, member: Member, *, source: Source, occurred_at: datetime
    ) -> Entry | None:
        params: ReferralParams | None = self.rules.enabled("referral")
        if params is None or params.points <= 0:
            return None
        return self._credit(
            account,
            member,
            params.points,
            rule="referral",
            reason="referred member's first order paid",
            source=source,
            occurred_at=occurred_at,
            pending=True,
            capped=True,
        )

    def reverse_referral(
        self, account: Account, bonus: ReferralBonus, *, source: Source, reason: str
    ) -> list[Entry]:
        """Take a referral bonus back, from its own lot while that still holds it (pending or
        not yet spent), then from available points, leaving a debt if need be."""
        if bonus.reversed_at is not None:
            return []
        bonus.reversed_at = self.now
        return account.reverse_earning(
            bonus.points,
            order_lot_id=bonus.lot_id,
            entry_ids=self.new_id,
            reason=reason,
            rule="referral",
            source=source,
            now=self.now,
        )

    def checkin(
        self,
        account: Account,
        member: Member,
        *,
        source: Source,
        streak_days: int,
        occurred_at: datetime,
    ) -> list[Entry]:
        params: CheckinParams | None = self.rules.enabled("checkin")
        if params is None:
            return []
        entries = []
        daily = self._credit(
            account,
            member,
            params.points,
            rule="checkin",
            reason="daily check-in",
            source=source,
            occurred_at=occurred_at,
            pending=False,
            capped=True,
        )
        if daily:
            entries.append(daily)
        if params.streak_bonus > 0 and streak_days > 0 and streak_days % params.streak_days == 0:
            bonus = self._credit(
                account,
                member,
                params.streak_bonus,
                rule="checkin_streak",
                reason=f"{streak_days} days in a row",
                source=source,
                occurred_at=occurred_at,
                pending=False,
                capped=True,
            )
            if bonus:
                entries.append(bonus)
        return entries

    def purchase_terms(
        self,
        member: Member,
        *,
        paid_minor: int,
        occurred_at: datetime,
        tier: str | None,
        tier_multiplier: float | None,
    ) -> PurchaseTerms | None:
        return self.rules.purchase_terms(
            paid_minor=paid_minor,
            occurred_at=occurred_at,
            timezone=member.timezone,
            tier=tier,
            tier_multiplier=tier_multiplier,
            card_multiplier=member.card_multiplier(occurred_at),
        )

    def order_paid(
        self,
        account: Account,
        member: Member,
        *,
        source: Source,
        order_id: str,
        paid_minor: int,
        occurred_at: datetime,
        tier: str | None,
        tier_multiplier: float | None,
    ) -> OrderPoints:
        terms = self.purchase_terms(
            member,
            paid_minor=paid_minor,
            occurred_at=occurred_at,
            tier=tier,
            tier_multiplier=tier_multiplier,
        )
        order = OrderPoints(order_id=order_id, member_id=account.member_id, paid_minor=paid_minor)
        if terms is None:
            order.multiplier = Decimal(0)
            return order
        order.points, order.per_minor, order.multiplier = (
            terms.points,
            terms.per_minor,
            terms.multiplier,
        )
        order.steps = [step.as_dict() for step in terms.steps]
        entry = self._credit(
            account,
            member,
            terms.points_for(paid_minor),
            rule="purchase",
            reason=f"order {order_id} paid",
            source=source,
            occurred_at=occurred_at,
            pending=True,
            capped=True,
            calculation=terms.calculation(paid_minor),
        )
        if entry is not None:
            order.awarded = order.current = entry.points
            order.lot_id = entry.lot_id
            if entry.capped_points:
                order.steps.append(
                    Step("daily_cap", -entry.capped_points, "over the daily cap").as_dict()
                )
        return order

    def settle_order(
        self, account: Account, order: OrderPoints, *, source: Source, reason: str
    ) -> list[Entry]:
        """After a refund or a cancellation: take back what the order holds above its target."""
        excess = order.current - order.target()
        if excess <= 0:
            return []
        entries = account.reverse_earning(
            excess,
            order_lot_id=order.lot_id,
            entry_ids=self.new_id,
            reason=reason,
            rule="purchase",
            source=source,
            now=self.now,
        )
        order.current -= excess
        return entries
