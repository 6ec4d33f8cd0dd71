"""The oracle of the edges: what every points account must hold, lot by lot, after a stream of
sign-ups, tier changes, cards, orders, referrals and erasures, redemptions and their cancels, and
the `release-pending` and `expire` jobs, at a service clock the test controls.

Like `oracle.py` (which stays as it is for the replays and crash tests), it is written from
contract §4-§5 and the points README, never from the points code, and imports nothing of the
service. It models lots because that is where points leak: which lot a redemption or reversal
takes, what has expired by the clock, what a cancel gives back.

The rules, as read from the contract (the readings of what it leaves open are marked READING):
- signup: 100 points, available at once, never capped; a lot expiring 365 days after
  `registered_at`.
- purchase on `order.paid`: floor(floor(paid_minor / 100) x factors), factors exact decimals:
  the event's `member_tier_multiplier` (the ladder at order time: it wins over the service's
  own table), x2 when the order's time is the 20th in the member's time zone
  (`member.registered.timezone`), x the best `benefits.points_multiplier` of the member's cards
  whose `[valid_from, expires_at)` holds the order's business time (contract §4: an order from
  before a card was bought earns without it). Pending 7 days from the order's time; the lot
  expires 365 days after the order's time.
  READING: a lot whose 7 days are already over when it arrives (a backdated order) is
  available at once; a lot whose 7 days run out later waits for `release-pending` (contract §5:
  "then released by the release-pending job").
- daily cap: at most 10000 purchase and referral points per member and local day of the
  earning event's own time (the member's zone); what is over is `capped_points`; a cap once
  used stays used (a reversal does not free it).
- refunds and cancels: the order then holds the purchase rule on its net paid amount with its
  purchase's factors, never more than it was awarded (a cancel: nothing); the difference is
  taken from the order's own lot first, then from available points (the lots that expire
  first), and what is left is a debt (a negative `available`) that the next points to become
  available repay first (READING: those lots in the order they expire).
- referral (`member.referral_qualified`, to the referrer): 200 points, capped like purchases on
  the referrer's local day, pending like the referred order (available 7 days after it),
  expiring 365 days after it was earned. When the referred order is cancelled or refunded in
  full, the bonus is taken back like a reversal: from the bonus's own lot (pending while it
  waits), then from available points, then as a debt. The referral may qualify again on a
  later order. READING: no tier, member-day or card factor applies to the flat bonus.
- expiry by time: `available` and `expiring` never count a lot whose `expires_at` has passed,
  whether or not the `expire` job has run; a redemption cannot spend it; a cancelled
  redemption gives the points of such lots back as expired. READING: `pending` does not count
  them either, reversals do not take them, and they repay no debt (the generator never needs
  the last two: it raises `Ambiguous` if a stream would).
- `expiring`: per local date (member's zone) of `expires_at`, the points of available lots
  (READING, as the service shows it: pending lots are not listed, every date is).
- redemptions take the available lots that expire first; refused with 422
  `insufficient_points` (nothing changes) when they exceed `available` (so always while it is
  negative); with 409 `member_erased` after `member.erased`. `lifetime_redeemed` counts
  redemptions less cancelled ones, `lifetime_earned` earned points less those taken back.
- every earn entry carries `calculation` {base_points, factors, capped_points}: the entry's
  points are floor(base x product of factors) - capped_points.
Deliveries are deduplicated by event id; a second `order.paid` for a known order does nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from zoneinfo import ZoneInfo

SIGNUP_POINTS = 100
REFERRAL_POINTS = 200
PER_MINOR = 100
MEMBER_DAY = 20
MEMBER_DAY_FACTOR = Decimal(2)
PENDING = timedelta(days=7)
LOT_LIFE = timedelta(days=365)
DAILY_CAP = 10000
ONE = Decimal(1)


class Ambiguous(AssertionError):
    """The stream asked the oracle something the contract leaves open (or that this oracle does
    not model): the generator must not build such streams. Never a finding about the service."""


@dataclass(frozen=True)
class EdgeFact:
    """One business fact as it travels, with the id of the event that carries it.

    kind: signup | tier | card | referral | erased (loyalty.members) or placed | paid | refund |
    cancel (loyalty.orders). `member_id` is None for guest orders; for a referral it is the
    referrer. `multiplier` is a decimal string: the order's `member_tier_multiplier`, the tier
    change's `points_multiplier` or the card's `benefits.points_multiplier`.
    """

    event_id: str
    kind: str
    member_id: str | None
    at: datetime
    order_id: str | None = None
    total_minor: int = 0
    paid_minor: int = 0
    refunded_total_minor: int = 0  # refund and cancel: all refunds of the order so far
    amount_minor: int = 0  # refund: this one
    refund_id: str | None = None
    previous_status: str = "paid"  # cancel
    tier: str | None = None  # paid: member_tier (before the order); tier: the new tier
    multiplier: str | None = None
    old_tier: str | None = None  # tier
    reason: str | None = None  # tier: upgrade | downgrade
    timezone: str = "Asia/Shanghai"  # signup
    referred_by: str | None = None  # signup
    referred_member_id: str | None = None  # referral
    card_no: str | None = None  # card
    plan_kind: str | None = None  # card: free | paid | internal
    valid_from: datetime | None = None  # card
    expires_at: datetime | None = None  # card


@dataclass
class Lot:
    key: str  # the id of the event that earned it
    rule: str  # signup | purchase | referral
    earned_at: datetime
    available_at: datetime
    expires_at: datetime
    points: int
    seq: int
    remaining: int = 0
    released: bool = False
    expired: bool = False  # the expire job took what remained
    expired_points: int = 0

    def order(self) -> tuple[datetime, datetime, int]:
        return (self.expires_at, self.earned_at, self.seq)


@dataclass(frozen=True)
class Calculation:
    base_points: int
    factors: tuple[tuple[str, Decimal], ...]  # (kind, value), only values other than 1
    capped_points: int
    points: int

    @property
    def product(self) -> Decimal:
        return product(value for _, value in self.factors)


@dataclass(frozen=True)
class AccountView:
    available: int
    pending: int
    lifetime_earned: int
    lifetime_redeemed: int
    expiring: tuple[tuple[date, int], ...]
    tier: str | None


@dataclass(frozen=True)
class Card:
    valid_from: datetime
    expires_at: datetime | None
    multiplier: Decimal

    def valid_at(self, at: datetime) -> bool:
        return self.valid_from <= at and (self.expires_at is None or at < self.expires_at)


@dataclass
class Member:
    member_id: str
    tz: ZoneInfo
    tier: str = "bronze"
    cards: list[Card] = field(default_factory=list)
    lots: list[Lot] = field(default_factory=list)
    debt: int = 0
    lifetime_earned: int = 0
    lifetime_redeemed: int = 0
    erased: bool = False
    earned: dict[str, Calculation] = field(default_factory=dict)  # earn entries by event id
    reversed: Counter[str] = field(default_factory=Counter)  # points taken back, by event id
    # acceptable sums of the release entries of each lot (by the lot's event id): a lot
    # available on arrival may or may not have a release entry; one the job released has one
    releases: dict[str, frozenset[int]] = field(default_factory=dict)
    # a debt repaid by more than one lot in one job run: which of them paid is the service's
    # choice, so only the total of `expiring` is compared
    split_debt: bool = False
    day_points: Counter[date] = field(default_factory=Counter)
    referral_active: bool = False  # as a referred member: a bonus stands for one of my orders
    referrals_reversed: int = 0  # as a referred member


@dataclass
class Referral:
    referrer: str
    event_id: str
    order_id: str
    lot: Lot | None
    granted: int
    active: bool = True


@dataclass
class Order:
    member_id: str
    paid_event_id: str
    at: datetime
    paid_minor: int
    factor: Decimal
    awarded: int
    current: int
    lot: Lot | None
    refunded: int = 0
    cancelled: bool = False
    referral: Referral | None = None


@dataclass
class Redemption:
    member_id: str
    points: int
    portions: list[tuple[Lot, int]]
    cancelled: bool = False


@dataclass(frozen=True)
class Refused:
    status: int
    code: str


def product(values: Iterable[Decimal]) -> Decimal:
    out = ONE
    for value in values:
        out *= value
    return out


def floor_points(base: int, factor: Decimal) -> int:
    return int((Decimal(base) * factor).to_integral_value(rounding=ROUND_FLOOR))


def purchase_base(paid_minor: int) -> int:
    return max(paid_minor, 0) // PER_MINOR


class Book:
    """Every account, lot by lot. `apply` takes one delivered fact with the service's clock at
    the time it is consumed; `release`, `expire`, `redeem` and `cancel` are the jobs and the
    HTTP writes; `account` is what `GET /v1/accounts/{id}` must answer at a clock time."""

    def __init__(self) -> None:
        self.members: dict[str, Member] = {}
        self.orders: dict[str, Order] = {}
        self.seen: set[str] = set()
        self.coverage: Counter[str] = Counter()
        self._seq = 0

    # -- events -------------------------------------------------------------------------------

    def apply(self, fact: EdgeFact, now: datetime) -> None:
        if fact.event_id in self.seen:
            return  # a redelivery: the inbox skips it
        self.seen.add(fact.event_id)
        if fact.member_id is None:
            return  # guest orders earn nobody anything
        handler = {
            "signup": self._signup,
            "tier": self._tier,
            "card": self._card,
            "erased": self._erased,
            "referral": self._referral,
            "paid": self._paid,
            "refund": self._refund_or_cancel,
            "cancel": self._refund_or_cancel,
        }.get(fact.kind)
        if fact.kind == "placed":
            return  # the points service does not read order.placed
        if handler is None:
            raise ValueError(f"unknown fact kind {fact.kind!r}")
        handler(fact, now)

    def _member(self, member_id: str | None) -> Member:
        member = self.members.get(member_id or "")
        if member is None:
            raise Ambiguous(f"{member_id}: an event before the member's registration arrived")
        return member

    def _signup(self, fact: EdgeFact, now: datetime) -> None:
        assert fact.member_id is not None
        if fact.member_id in self.members:
            raise Ambiguous(f"{fact.member_id} registered twice")
        member = self.members[fact.member_id] = Member(fact.member_id, ZoneInfo(fact.timezone))
        member.earned[fact.event_id] = Calculation(SIGNUP_POINTS, (), 0, SIGNUP_POINTS)
        self._new_lot(member, fact.event_id, "signup", fact.at, fact.at, SIGNUP_POINTS, now)
        member.lifetime_earned += SIGNUP_POINTS
        self.coverage[f"member in {fact.timezone}"] += 1

    def _tier(self, fact: EdgeFact, now: datetime) -> None:
        member = self._member(fact.member_id)
        assert fact.tier is not None
        member.tier = fact.tier
        self.coverage[f"tier {fact.reason}"] += 1

    def _card(self, fact: EdgeFact, now: datetime) -> None:
        member = self._member(fact.member_id)
        if fact.plan_kind == "tier":
            raise Ambiguous("tier cards are not modelled (their multiplier is the tier's)")
        member.cards.append(
            Card(fact.valid_from or fact.at, fact.expires_at, Decimal(fact.multiplier or "1"))
        )
        self.coverage["card issued"] += 1

    def _erased(self, fact: EdgeFact, now: datetime) -> None:
        self._member(fact.member_id).erased = True
        self.coverage["member erased"] += 1

    def _cap(self, member: Member, day: date, points: int) -> int:
        already = member.day_points[day]
        granted = max(min(points, DAILY_CAP - already), 0)
        member.day_points[day] = already + granted
        return granted

    def _paid(self, fact: EdgeFact, now: datetime) -> None:
        member = self._member(fact.member_id)
        assert fact.order_id is not None
        if member.erased:
            raise Ambiguous(f"{member.member_id}: an order after the erasure")
        if fact.order_id in self.orders:
            self.coverage["order paid again under a new id"] += 1
            return
        factors: list[tuple[str, Decimal]] = []
        tier_factor = Decimal(fact.multiplier or "1")
        if tier_factor != ONE:
            factors.append(("tier", tier_factor))
        local = fact.at.astimezone(member.tz)
        if local.day == MEMBER_DAY:
            factors.append(("member_day", MEMBER_DAY_FACTOR))
        valid = [card.multiplier for card in member.cards if card.valid_at(fact.at)]
        best = max(valid, default=ONE)
        if best > ONE:
            factors.append(("card", best))
        base = purchase_base(fact.paid_minor)
        factor = product(value for _, value in factors)
        points = floor_points(base, factor)
        granted = self._cap(member, local.date(), points)
        lot = None
        if points > 0:  # an entry (and a lot), even when the cap took all of it
            member.earned[fact.event_id] = Calculation(
                base, tuple(factors), points - granted, granted
            )
            lot = self._new_lot(
                member, fact.event_id, "purchase", fact.at, fact.at + PENDING, granted, now
            )
        member.lifetime_earned += granted
        self.orders[fact.order_id] = Order(
            member.member_id, fact.event_id, fact.at, fact.paid_minor, factor, granted, granted, lot
        )
        self._cover_paid(member, fact, local, factors, base, factor, points, granted, valid)

    def _cover_paid(
        self,
        member: Member,
        fact: EdgeFact,
        local: datetime,
        factors: list[tuple[str, Decimal]],
        base: int,
        factor: Decimal,
        points: int,
        granted: int,
        valid: list[Decimal],
    ) -> None:
        cover = self.coverage
        cover["paid orders"] += 1
        cover[f"order at {fact.tier}"] += 1
        if fact.tier == "bronze" and Decimal(fact.multiplier or "1") != ONE:
            cover["bronze multiplier not 1"] += 1
        shanghai_day = fact.at.astimezone(ZoneInfo("Asia/Shanghai")).day == MEMBER_DAY
        if (local.day == MEMBER_DAY) != shanghai_day:
            cover["member day differs from Shanghai's"] += 1
        if local.day == MEMBER_DAY and str(member.tz) != "Asia/Shanghai":
            cover["member day in another zone"] += 1
        since_midnight = local - local.replace(hour=0, minute=0, second=0, microsecond=0)
        if min(since_midnight, timedelta(days=1) - since_midnight) <= timedelta(minutes=3):
            cover["order within 3 minutes of a local midnight"] += 1
        for card in member.cards:
            if fact.at < card.valid_from:
                cover["order before a card's valid_from"] += 1
            elif card.expires_at is not None and fact.at >= card.expires_at:
                cover["order at or after a card's expires_at"] += 1
            else:
                cover["order inside a card's validity"] += 1
            if fact.at == card.valid_from:
                cover["order at a card's valid_from exactly"] += 1
            if fact.at == card.expires_at:
                cover["order at a card's expires_at exactly"] += 1
        if len(valid) > 1 and len(set(valid)) > 1:
            cover["two cards valid: the best applies"] += 1
        if granted < points:
            cover["capped"] += 1
        yesterday = local.date() - timedelta(days=1)
        if points and granted == points and member.day_points[yesterday] >= DAILY_CAP:
            cover["a capped day's next local day earns again"] += 1
        if base and factor != factor.to_integral_value() and (Decimal(base) * factor) % 1 == 0:
            cover["floor at an exact integer product"] += 1

    def _new_lot(
        self,
        member: Member,
        key: str,
        rule: str,
        earned_at: datetime,
        available_at: datetime,
        points: int,
        now: datetime,
    ) -> Lot:
        self._seq += 1
        lot = Lot(key, rule, earned_at, available_at, earned_at + LOT_LIFE, points, self._seq)
        lot.remaining = points
        member.lots.append(lot)
        if lot.expires_at <= now:
            self.coverage[f"{rule} lot expired on arrival"] += 1
        if available_at <= now:
            # its pending time (if any) is over on arrival: available at once, with or without
            # a release entry
            lot.released = True
            member.releases[key] = frozenset({0, points})
            self._repay(member, [lot], now)
        else:
            member.releases[key] = frozenset({0})
        return lot

    def _repay(self, member: Member, lots: list[Lot], now: datetime) -> None:
        if member.debt == 0:
            return
        payers = 0
        for lot in sorted(lots, key=Lot.order):
            if member.debt == 0:
                break
            if lot.remaining == 0:
                continue
            if lot.expires_at <= now:
                raise Ambiguous(f"{member.member_id}: expired points would repay a debt")
            taken = min(member.debt, lot.remaining)
            lot.remaining -= taken
            member.debt -= taken
            payers += 1
            self.coverage["debt repaid by points becoming available"] += 1
        if payers > 1:
            member.split_debt = True

    def _live(self, lot: Lot, now: datetime) -> bool:
        return not lot.expired and lot.expires_at > now

    def _take_back(
        self, member: Member, own: Lot | None, amount: int, event_id: str, now: datetime
    ) -> set[str]:
        """Take `amount` points back for an event: from its own lot, then from the available
        lots that expire first, then as a debt. Answers where from: pending, available, debt."""
        rest = amount
        where = set()
        if own is not None and own.remaining > 0:
            if not self._live(own, now):
                raise Ambiguous(f"{member.member_id}: taking back points of an expired lot")
            taken = min(rest, own.remaining)
            own.remaining -= taken
            rest -= taken
            where.add("available" if own.released else "pending")
        if rest:
            if any(
                lot.released and lot.remaining > 0 and not self._live(lot, now)
                for lot in member.lots
            ):
                raise Ambiguous(f"{member.member_id}: a reversal next to expired, unexpired lots")
            for lot in sorted(member.lots, key=Lot.order):
                if rest == 0:
                    break
                if lot is own or not lot.released or lot.remaining == 0:
                    continue
                taken = min(rest, lot.remaining)
                lot.remaining -= taken
                rest -= taken
                where.add("available")
        if rest:
            member.debt += rest
            where.add("debt")
        member.reversed[event_id] += amount
        return where

    def _refund_or_cancel(self, fact: EdgeFact, now: datetime) -> None:
        order = self.orders.get(fact.order_id or "")
        if order is None:
            return  # never earned: nothing to take back
        member = self._member(fact.member_id)
        if order.member_id != member.member_id:
            raise Ambiguous(f"order {fact.order_id} changed hands")
        if fact.kind == "refund":
            order.refunded = max(order.refunded, fact.refunded_total_minor)
        else:
            order.cancelled = True
        net = floor_points(purchase_base(order.paid_minor - order.refunded), order.factor)
        target = 0 if order.cancelled else min(net, order.awarded)
        excess = order.current - target
        self.coverage[f"{fact.kind}s"] += 1
        if excess > 0:
            where = self._take_back(member, order.lot, excess, fact.event_id, now)
            order.current -= excess
            member.lifetime_earned -= excess
            for source in where:
                self.coverage[f"{fact.kind} taken back from {source}"] += 1
        referral = order.referral
        if referral is None or not referral.active:
            return
        if order.cancelled or order.refunded >= order.paid_minor:
            referral.active = False
            member.referral_active = False
            member.referrals_reversed += 1
            referrer = self._member(referral.referrer)
            how = "cancel" if fact.kind == "cancel" else "full refund"
            self.coverage[f"referral reversed by a {how}"] += 1
            if referral.granted > 0:
                where = self._take_back(
                    referrer, referral.lot, referral.granted, fact.event_id, now
                )
                referrer.lifetime_earned -= referral.granted
                for source in where:
                    self.coverage[f"referral bonus taken back from {source}"] += 1
        else:
            self.coverage["referred order partly refunded: the bonus stays"] += 1

    def _referral(self, fact: EdgeFact, now: datetime) -> None:
        referrer = self._member(fact.member_id)
        referred = self._member(fact.referred_member_id)
        order = self.orders.get(fact.order_id or "")
        if order is None or order.member_id != referred.member_id:
            raise Ambiguous(f"referral for order {fact.order_id} before the order arrived")
        if order.cancelled or order.refunded >= order.paid_minor:
            raise Ambiguous(f"referral for order {fact.order_id}, already taken back")
        if order.referral is not None:
            self.coverage["referral named again"] += 1
            return
        if referred.referral_active:
            raise Ambiguous(f"{referred.member_id}: a second referral while one stands")
        if order.at != fact.at:
            raise Ambiguous("a referral's occurred_at is its order's payment time")
        local = fact.at.astimezone(referrer.tz)
        granted = self._cap(referrer, local.date(), REFERRAL_POINTS)
        referrer.earned[fact.event_id] = Calculation(
            REFERRAL_POINTS, (), REFERRAL_POINTS - granted, granted
        )
        lot = self._new_lot(
            referrer, fact.event_id, "referral", fact.at, order.at + PENDING, granted, now
        )
        referrer.lifetime_earned += granted
        order.referral = Referral(
            referrer.member_id, fact.event_id, fact.order_id or "", lot, granted
        )
        referred.referral_active = True
        self.coverage["referral bonus"] += 1
        if referred.referrals_reversed:
            self.coverage["referral qualified again"] += 1

    # -- jobs ---------------------------------------------------------------------------------

    def release(self, as_of: datetime) -> int:
        """`release-pending` at as_of: every pending lot whose time has come becomes available
        and repays the member's debt first. Answers how many lots it released."""
        count = 0
        for member in self.members.values():
            due = [
                lot
                for lot in member.lots
                if not lot.released and not lot.expired and lot.available_at <= as_of
            ]
            for lot in due:
                lot.released = True
                member.releases[lot.key] = frozenset({lot.remaining})
                count += 1
            self._repay(member, due, as_of)
        return count

    def expire(self, as_of: datetime) -> int:
        """`expire` at as_of: what remains of every lot whose expires_at has come expires."""
        count = 0
        for member in self.members.values():
            for lot in member.lots:
                if lot.expired or lot.expires_at > as_of:
                    continue
                if not lot.released:
                    raise Ambiguous(f"{member.member_id}: the expire job meets a pending lot")
                lot.expired = True
                lot.expired_points += lot.remaining
                lot.remaining = 0
                count += 1
        return count

    # -- HTTP writes --------------------------------------------------------------------------

    def redeem(self, member_id: str, points: int, now: datetime) -> Redemption | Refused:
        member = self._member(member_id)
        if member.erased:
            return Refused(409, "member_erased")
        if points > self.account(member_id, now).available:
            return Refused(422, "insufficient_points")
        portions = []
        rest = points
        for lot in sorted(member.lots, key=Lot.order):
            if rest == 0:
                break
            if not lot.released or lot.remaining == 0 or not self._live(lot, now):
                continue
            taken = min(rest, lot.remaining)
            lot.remaining -= taken
            rest -= taken
            portions.append((lot, taken))
        assert rest == 0
        member.lifetime_redeemed += points
        return Redemption(member_id, points, portions)

    def cancel(self, redemption: Redemption, now: datetime) -> None:
        """A redemption cancelled: its points go back to the lots they came from with their
        original expiry; those of lots that have expired meanwhile come back as expired."""
        member = self._member(redemption.member_id)
        if redemption.cancelled:
            raise Ambiguous("a redemption cancelled twice")
        if member.debt:
            raise Ambiguous(f"{member.member_id}: a cancel while in debt")
        for lot, taken in redemption.portions:
            if lot.expired:
                lot.expired_points += taken
                self.coverage["cancel: given back as expired, after the expire job"] += 1
            else:
                lot.remaining += taken
                if lot.expires_at <= now:
                    self.coverage["cancel: given back as expired, before the expire job"] += 1
                else:
                    self.coverage["cancel: given back with its expiry"] += 1
        redemption.cancelled = True
        member.lifetime_redeemed -= redemption.points

    # -- views --------------------------------------------------------------------------------

    def account(
        self,
        member_id: str,
        now: datetime,
        *,
        counting_expired: bool = False,
        utc_dates: bool = False,
    ) -> AccountView:
        """What the account must answer at `now`. The keywords give what a service that
        counted expired lots or listed UTC dates would answer (to say why it differs)."""
        member = self.members.get(member_id)
        if member is None:
            return AccountView(0, 0, 0, 0, (), None)

        def live(lot: Lot) -> bool:
            return not lot.expired and (counting_expired or lot.expires_at > now)

        available = sum(lot.remaining for lot in member.lots if lot.released and live(lot))
        pending = sum(lot.remaining for lot in member.lots if not lot.released and live(lot))
        by_day: Counter[date] = Counter()
        zone = UTC if utc_dates else member.tz
        for lot in member.lots:
            if lot.released and live(lot) and lot.remaining > 0:
                by_day[lot.expires_at.astimezone(zone).date()] += lot.remaining
        return AccountView(
            available - member.debt,
            pending,
            member.lifetime_earned,
            member.lifetime_redeemed,
            tuple(sorted(by_day.items())),
            member.tier,
        )

    def expired_unexpired(self, member_id: str, now: datetime) -> int:
        """Points of available lots past their expires_at that the expire job has not taken."""
        member = self._member(member_id)
        return sum(
            lot.remaining
            for lot in member.lots
            if lot.released and not lot.expired and lot.expires_at <= now
        )
