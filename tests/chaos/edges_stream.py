"""The edges stream: a seeded plan of events, jobs and HTTP writes that walks the points
service over the edges where points leak (issue "Exact money at every edge"), with what the
oracle (`oracle_edges.Book`) says after each step.

Times (the service runs on a clock the test sets: `FixedClock`):
- the order window is W0 + 1 h .. T0 (2031-03-16..23, the 20th in every member's zone inside);
  the ladder changes its multipliers at LADDER_CHANGE in the middle of it;
- T0 = W0 + 7 d: the clock while phases 1-3 arrive (no window lot is due yet);
- T1 = W0 + 10.5 d: `release-pending` at T1 releases the orders up to W0 + 3.5 d (EARLY); the
  clock while phases 4-5 arrive;
- T2 = T1 + 30 d: early sign-ups' lots (registered just over 11 months before T1) and the
  backdated lots near the 365-day edge have expired by then; `release-pending` at T2, `expire`
  at EXPIRE_FIRST then at T2.

Phases, each published and consumed before the next goes out (on Kafka a member's events are
ordered on one topic only, and the referral bonus depends on another member's order events:
across topics and partitions nothing orders them, so every fact whose effect depends on one on
another topic or key comes in a later phase):
1. loyalty.members: sign-ups (time zones, `referred_by`), tier changes (upgrades, downgrades,
   at the ladder's multiplier of the time), cards (`member.card_issued`, plan free/paid/internal,
   valid_from inside the window, expires_at inside, later or never), all before the orders that
   depend on them (time zone, card validity);
2. loyalty.orders: orders in the window (member-day and local-midnight edges in each member's
   zone, big spenders on one local day, orders at a card's exact edges), backdated orders (more
   than 365 days before the clock: expired on arrival; near the 365-day edge; months old), each
   `order.paid` with the tier held before it and its multiplier on the ladder at order time;
   partial and full refunds, cancels, unpaid orders cancelled, guest orders;
3. loyalty.members: `member.referral_qualified` for each referred member's first paid order
   (after that order was consumed);
   then redemptions at T0 (some refused: more than available, or only with expired points),
   top-ups and spends of members to be erased; clock T1, `release-pending` at T1; redemptions
   at T1 (referrers spending their released bonus, members spending what a later refund takes);
4. loyalty.orders: referred orders cancelled or refunded in full (during their pending week, or
   after it and after the release) or in part; refunds and cancels of released orders; new
   orders of referred members whose referral was taken back;
5. loyalty.members: referrals qualifying again on those new orders; erasures;
   then redemptions refused while a balance is negative, the erased members' refused writes;
   clock T2, `release-pending` at T2; cancels of redemptions (lots still valid; lots expired,
   before the expire job), `expire` at EXPIRE_FIRST, `expire` at T2, more cancels (after the
   job expired their lots), `expire` and `release-pending` at T2 again.
A check follows every phase and job. Member roles are random, but the first members of every
stream have fixed ones (FORCED), so that every edge is exercised by any seed (`REQUIRED`).
"""

from __future__ import annotations

import random
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from loyalty_shared.events import make_event
from loyalty_shared.events.members import (
    CardBenefits,
    MemberCardIssued,
    MemberErased,
    MemberReferralQualified,
    MemberRegistered,
    MemberTierChanged,
)
from loyalty_shared.events.orders import OrderCancelled, OrderPaid, OrderPlaced, OrderRefunded

from .oracle_edges import (
    LOT_LIFE,
    PENDING,
    AccountView,
    Book,
    EdgeFact,
    Lot,
    Redemption,
    Refused,
)
from .stream import Delivery, Stream, env_int, twice_with_duplicates

# make test: 100 members (about 1200 events, 80 steps); make chaos: LOYALTY_CHAOS_MEMBERS / 3.
MEMBERS = env_int("LOYALTY_CHAOS_EDGE_MEMBERS", max(env_int("LOYALTY_CHAOS_MEMBERS", 300) // 3, 40))
SEED = env_int("LOYALTY_CHAOS_SEED", 20)

W0 = datetime(2031, 3, 16, tzinfo=UTC)
WINDOW_FIRST = W0 + timedelta(hours=1)
T0 = W0 + timedelta(days=7)
WINDOW_LAST = T0 - timedelta(minutes=10)
LADDER_CHANGE = W0 + timedelta(days=3, hours=7)
T1 = W0 + timedelta(days=10, hours=12)
EARLY = T1 - PENDING  # orders up to here are released at T1
T2 = T1 + timedelta(days=30)
EXPIRE_FIRST = T2 - timedelta(days=12)

ZONES = [
    "Asia/Shanghai",
    "America/New_York",
    "Europe/Berlin",
    "Asia/Tokyo",
    "Asia/Kolkata",
    "Pacific/Auckland",
]
ZONE_WEIGHTS = [4, 2, 2, 2, 1, 1]
# (from, multipliers): the ladder of the time. The bronze multiplier changes too, so that the
# event's multiplier must win over the service's own table for every tier.
LADDERS = [
    (datetime.min.replace(tzinfo=UTC), {"bronze": "1.0", "silver": "1.2", "gold": "1.5"}),
    (LADDER_CHANGE, {"bronze": "1.1", "silver": "1.3", "gold": "1.75"}),
]
TIER_PATHS = ["bronze", "silver_before", "gold_before", "up_in_window", "down_in_window"]
CARD_MULTIPLIERS = ["1.5", "2.0", "1.2", "1.25", "1.1", "1.0"]
HANDLED_KINDS = {"signup", "tier", "card", "referral", "erased", "paid", "refund", "cancel"}

# The roles of a stream's first members, whatever the seed (indexes refer to this list).
FORCED: list[dict[str, Any]] = [
    {"tz": "America/New_York", "whale": True},  # 0: the cap around New York midnights
    {"tz": "Asia/Tokyo", "cards": 2},  # 1: two cards, orders at their edges
    {"tz": "Europe/Berlin", "importer": True, "redeem_t0": True},  # 2
    {"tz": "Asia/Kolkata", "early_signup": True, "redeem_t0": True, "cancel": 1},  # 3
    {"tz": "Asia/Shanghai", "early_signup": True, "redeem_t1": True, "cancel": 2},  # 4
    {"tz": "Pacific/Auckland", "importer": True, "redeem_t0": True, "cancel": 2},  # 5
    {"referrer": True, "spender": True},  # 6: spends the released bonus: a debt
    {"referred_by": 6, "timing": "early", "fate": "cancel", "requalify": True},  # 7
    {"referrer": True, "tz": "Asia/Tokyo"},  # 8
    {"referred_by": 8, "timing": "late", "fate": "cancel"},  # 9: during the pending week
    {"referred_by": 8, "timing": "early", "fate": "full_refund"},  # 10: after it
    {"referred_by": 6, "timing": "late", "fate": "partial"},  # 11: the bonus stays
    {"tz": "America/New_York", "erased": True},  # 12
    {"tier_path": "up_in_window", "tz": "Europe/Berlin"},  # 13
    {"tier_path": "down_in_window"},  # 14
    {"tier_path": "silver_before", "cards": 1},  # 15
    {"late_refund": "spend_all"},  # 16: refunded after spending it: a debt
    {"late_refund": "spend_part", "tz": "Asia/Tokyo"},  # 17: from its lot, then others
    {"tz": "Asia/Tokyo", "whale": True},  # 18
    {"insufficient": True, "redeem_t1": True, "cancel": 1},  # 19
    {"tier_path": "gold_before", "tz": "Asia/Kolkata", "cards": 1},  # 20
]

# Every edge the issue names, as the oracle and the plan count them: a stream that misses one
# fails before the service is started.
REQUIRED = [
    # ladder changes between orders, tiers announced
    "order at bronze",
    "order at silver",
    "order at gold",
    "bronze multiplier not 1",
    "same tier, two multipliers",
    "tier upgrade",
    "tier downgrade",
    # cards
    "card issued",
    "order before a card's valid_from",
    "order inside a card's validity",
    "order at or after a card's expires_at",
    "order at a card's valid_from exactly",
    "order at a card's expires_at exactly",
    "two cards valid: the best applies",
    # referrals
    "referral bonus",
    "referral reversed by a cancel",
    "referral reversed by a full refund",
    "referral bonus taken back from pending",
    "referral bonus taken back from available",
    "referral bonus taken back from debt",
    "referred order partly refunded: the bonus stays",
    "referral qualified again",
    # backdated orders past their expiry
    "purchase lot expired on arrival",
    "redemption refused: only expired points would cover it",
    # redemptions
    "redemption",
    "redemption from several lots",
    "redemption refused: insufficient",
    "redemption refused: negative balance",
    "cancel: given back with its expiry",
    "cancel: given back as expired, before the expire job",
    "cancel: given back as expired, after the expire job",
    # erasures
    "member erased",
    "erased: redemption refused",
    "erased: adjustment refused",
    "erased: top-up refused",
    "erased: spend refused",
    # time zones
    "member in America/New_York",
    "member in Europe/Berlin",
    "member in Asia/Tokyo",
    "member day in another zone",
    "member day differs from Shanghai's",
    "order within 3 minutes of a local midnight",
    "capped",
    "a capped day's next local day earns again",
    # expiry by time
    "lot expired by time, the expire job not run",
    "expiring: a local date other than the UTC date",
    "debt repaid by points becoming available",
    # refunds around the lots
    "refund taken back from pending",
    "cancel taken back from pending",
    "refund taken back from available",
    "refund taken back from debt",
    # calculation
    "floor at an exact integer product",
]


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Publish:
    name: str
    facts: tuple[EdgeFact, ...]
    now: datetime


@dataclass(frozen=True)
class SetClock:
    at: datetime


@dataclass(frozen=True)
class RunJob:
    job: str  # release-pending | expire
    as_of: datetime


@dataclass(frozen=True)
class Redeem:
    key: str
    member_id: str
    points: int
    now: datetime
    expect: int  # 201, 422 or 409
    code: str | None = None
    available_after: int | None = None


@dataclass(frozen=True)
class Cancel:
    key: str  # the Redeem step's key
    member_id: str
    now: datetime


@dataclass(frozen=True)
class TopUp:
    member_id: str
    external_id: str
    amount_minor: int


@dataclass(frozen=True)
class Spend:
    member_id: str
    amount_minor: int


@dataclass(frozen=True)
class Refusals:
    """After the erasure: a redemption, a positive adjustment, a top-up and a stored-value
    spend, each 409 member_erased; the account, ledger and stored value unchanged."""

    member_id: str
    points: int  # a redemption the account could pay for


@dataclass(frozen=True)
class Check:
    label: str
    now: datetime
    final: bool = False


Step = Publish | SetClock | RunJob | Redeem | Cancel | TopUp | Spend | Refusals | Check


@dataclass
class Profile:
    member_id: str
    index: int
    tz: str = "Asia/Shanghai"
    whale: bool = False
    cards: int = 0
    importer: bool = False
    early_signup: bool = False
    tier_path: str = "bronze"
    referrer: bool = False
    referred_by: int | None = None
    timing: str = "early"  # of the referred order: released at T1 or still pending
    fate: str = "none"  # of the referred order in phase 4: none | partial | cancel | full_refund
    requalify: bool = False
    spender: bool = False
    redeem_t0: bool = False
    redeem_t1: bool = False
    insufficient: bool = False
    cancel: int = 0  # cancel its redemptions: 1 before the expire job, 2 after it
    late_refund: str | None = None  # spend_all | spend_part | keep
    erased: bool = False

    def roles(self) -> str:
        out = [self.tz]
        for name in ("whale", "importer", "early_signup", "referrer", "spender", "erased"):
            if getattr(self, name):
                out.append(name)
        if self.cards:
            out.append(f"cards={self.cards}")
        if self.tier_path != "bronze":
            out.append(self.tier_path)
        if self.referred_by is not None:
            out.append(f"referred({self.timing},{self.fate}{',again' if self.requalify else ''})")
        if self.late_refund:
            out.append(f"late_refund={self.late_refund}")
        for name in ("redeem_t0", "redeem_t1", "insufficient"):
            if getattr(self, name):
                out.append(name)
        if self.cancel:
            out.append(f"cancel={self.cancel}")
        return ", ".join(out)


@dataclass
class Plan:
    seed: int
    steps: list[Step]
    members: list[str]
    profiles: dict[str, Profile]
    coverage: Counter[str]
    snapshots: dict[str, dict[str, AccountView]]  # per Check label: every account
    final_tiers: dict[str, str]
    facts: int = 0


class _Ids:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.n = 0

    def __call__(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.seed}g{self.n:07d}"


def _between(rng: random.Random, start: datetime, end: datetime) -> datetime:
    """A whole second in [start, end] (start if the range is empty)."""
    seconds = int((end - start).total_seconds())
    return start + timedelta(seconds=rng.randint(0, max(seconds, 0)))


def _local_midnight(tz: str, day: int) -> datetime:
    return datetime(2031, 3, day, tzinfo=ZoneInfo(tz)).astimezone(UTC)


def ladder_at(at: datetime) -> dict[str, str]:
    current = LADDERS[0][1]
    for since, multipliers in LADDERS:
        if at >= since:
            current = multipliers
    return current


def _profiles(rng: random.Random, members: int, seed: int) -> list[Profile]:
    profiles = []
    for i in range(members):
        profile = Profile(member_id=f"m{seed}e{i:06d}", index=i)
        if i < len(FORCED):
            for name, value in FORCED[i].items():
                setattr(profile, name, value)
        else:
            profile.tz = rng.choices(ZONES, weights=ZONE_WEIGHTS)[0]
            profile.whale = rng.random() < 0.06
            profile.cards = rng.choices([0, 1, 2], weights=[75, 18, 7])[0]
            profile.importer = rng.random() < 0.08
            profile.early_signup = rng.random() < 0.15
            profile.tier_path = rng.choices(TIER_PATHS, weights=[55, 15, 10, 12, 8])[0]
            profile.redeem_t0 = rng.random() < 0.12
            profile.redeem_t1 = rng.random() < 0.2
            profile.insufficient = rng.random() < 0.06
            if profile.redeem_t0 or profile.redeem_t1:
                profile.cancel = rng.choices([0, 1, 2], weights=[60, 20, 20])[0]
            if rng.random() < 0.06:
                profile.late_refund = rng.choice(["spend_all", "spend_part", "keep"])
            profile.erased = rng.random() < 0.04
        profiles.append(profile)
    for profile in profiles[len(FORCED) :]:
        if rng.random() >= 0.14:
            continue
        candidates = [
            q
            for q in profiles[: profile.index]
            if not (q.whale or q.importer or q.erased or q.referred_by is not None)
        ]
        if not candidates:
            continue
        referrer = rng.choice(candidates)
        referrer.referrer = True
        profile.referred_by = referrer.index
        profile.timing = rng.choice(["early", "late"])
        profile.fate = rng.choices(["none", "partial", "cancel", "full_refund"], [3, 2, 3, 2])[0]
        profile.requalify = profile.fate in ("cancel", "full_refund") and rng.random() < 0.4
    for profile in profiles:
        if profile.referrer or profile.referred_by is not None:
            profile.whale = profile.importer = profile.erased = False
        if profile.referred_by is not None:
            profile.late_refund = None
        if profile.late_refund:
            profile.importer = False
        if profile.erased:
            profile.redeem_t0 = profile.redeem_t1 = profile.insufficient = False
            profile.cancel = 0
            profile.late_refund = None
        if profile.referrer and profile.index >= len(FORCED):
            early = any(p.referred_by == profile.index and p.timing == "early" for p in profiles)
            profile.spender = early and rng.random() < 0.5
    return profiles


# ---------------------------------------------------------------------------------------------
# Facts
# ---------------------------------------------------------------------------------------------


@dataclass
class _Order:
    order_id: str
    at: datetime
    paid: int
    total: int
    special: str = ""  # referred | requalify | card edge | backdated | lifting | late_refund
    refunded: int = 0
    cancelled: bool = False


@dataclass
class _Member:
    profile: Profile
    registered_at: datetime
    tiers: list[tuple[datetime, str, str, str | None]] = field(default_factory=list)
    orders: list[_Order] = field(default_factory=list)
    phase: dict[int, list[EdgeFact]] = field(default_factory=lambda: {i: [] for i in range(6)})

    def tier_at(self, at: datetime) -> str:
        tier = "bronze"
        for since, new_tier, _, _ in self.tiers:
            if since < at:
                tier = new_tier
        return tier


def _window_time(rng: random.Random, profile: Profile, busy_day: int | None) -> datetime:
    roll = rng.random()
    if roll < 0.15:  # a member day's edges in the member's zone
        at = _local_midnight(profile.tz, rng.choice([20, 21])) + timedelta(
            seconds=rng.randint(-180, 180)
        )
    elif roll < 0.25:  # another local midnight: the daily cap's edge
        at = _local_midnight(profile.tz, rng.randint(17, 22)) + timedelta(
            seconds=rng.randint(-180, 180)
        )
    elif busy_day is not None and roll < 0.8:
        start = _local_midnight(profile.tz, busy_day)
        if rng.random() < 0.2:  # either side of the busy day's midnights
            edge = rng.choice([start, _local_midnight(profile.tz, busy_day + 1)])
            at = edge + timedelta(seconds=rng.randint(-150, 150))
        else:
            at = start + timedelta(seconds=rng.randint(0, 86399))
    else:
        at = _between(rng, WINDOW_FIRST, WINDOW_LAST)
    if not WINDOW_FIRST <= at <= WINDOW_LAST:
        at = _between(rng, WINDOW_FIRST, WINDOW_LAST)
    return at


def _amount(rng: random.Random, profile: Profile) -> int:
    if profile.whale:
        return rng.randint(150_000, 1_400_000)
    if profile.referrer:
        return rng.randint(0, 20_000)
    roll = rng.random()
    if roll < 0.08:
        return rng.randint(0, 99)  # earns nothing
    if roll < 0.25:
        return rng.randint(1, 600) * 100  # exact hundreds
    return rng.randint(100, 60_000)


def _new_order(rng: random.Random, ids: _Ids, at: datetime, paid: int, special: str = "") -> _Order:
    total = paid + rng.choice([0, 0, 0, rng.randint(1, 3000)])
    return _Order(ids("o"), at, paid, total, special)


def _member_facts(
    rng: random.Random, ids: _Ids, profile: Profile, by_index: dict[int, Profile]
) -> _Member:
    if profile.early_signup:  # the sign-up lot expires between T1 and T2
        registered = T1 - LOT_LIFE + timedelta(seconds=rng.randint(3600, 28 * 86400))
    else:
        registered = W0 - timedelta(seconds=rng.randint(600, 60 * 86400))
    member = _Member(profile, registered)
    mid = profile.member_id

    # orders: times and amounts
    busy_day = rng.randint(17, 21) if profile.whale else None
    count = rng.randint(8, 16) if profile.whale else rng.randint(1, 3 if profile.referrer else 7)
    if profile.referred_by is not None:
        if profile.timing == "early":
            at = _between(rng, WINDOW_FIRST, EARLY - timedelta(hours=2))
        else:
            at = _between(rng, EARLY + timedelta(hours=1), T0 - timedelta(hours=2))
        member.orders.append(_new_order(rng, ids, at, rng.randint(1000, 50_000), "referred"))
        for _ in range(rng.randint(0, 3)):
            later = _between(rng, at + timedelta(minutes=1), WINDOW_LAST)
            member.orders.append(_new_order(rng, ids, later, _amount(rng, profile)))
    else:
        for _ in range(count):
            at = _window_time(rng, profile, busy_day)
            member.orders.append(_new_order(rng, ids, at, _amount(rng, profile)))
    if profile.whale and profile.index < len(FORCED):  # a capped day, then its next local day
        midnight = _local_midnight(profile.tz, (busy_day or 17) + 1)
        for minutes, paid in ((-20, 1_200_000), (-10, 1_100_000), (2, 300_000)):
            at = midnight + timedelta(minutes=minutes)
            member.orders.append(_new_order(rng, ids, at, paid, "cap edge"))
    if profile.late_refund:  # an order released at T1, to be refunded or cancelled later
        at = _between(rng, WINDOW_FIRST, EARLY - timedelta(hours=1))
        member.orders.append(_new_order(rng, ids, at, rng.randint(5000, 60_000), "late_refund"))
    if profile.importer:
        kinds = ["expired", "edge", "alive"]
        if profile.index >= len(FORCED):
            kinds = [k for k in kinds if rng.random() < 0.6] or ["expired"]
        for kind in kinds:
            if kind == "expired":  # more than 365 days before the clock: expired on arrival
                at = T0 - LOT_LIFE - timedelta(seconds=rng.randint(3600, 90 * 86400))
            elif kind == "edge":  # expires between T0 and T2
                at = T0 - LOT_LIFE + timedelta(seconds=rng.randint(3600, 33 * 86400))
            else:
                at = T0 - timedelta(seconds=rng.randint(100 * 86400, 300 * 86400))
            member.orders.append(
                _new_order(rng, ids, at, rng.randint(2000, 60_000), f"backdated {kind}")
            )

    # cards, and orders at their edges
    cards = []
    for n in range(profile.cards):
        valid_from = _between(rng, W0 + timedelta(days=1), W0 + timedelta(days=4))
        if n == 1:  # the second overlaps the first
            valid_from = cards[0][0] + timedelta(seconds=rng.randint(600, 86400))
        roll = rng.random()
        if n == 0 and profile.index < len(FORCED):
            roll = 0.0
        if roll < 0.45:
            expires_at: datetime | None = valid_from + timedelta(
                seconds=rng.randint(86400, 2 * 86400)
            )
        elif roll < 0.75:
            expires_at = None
        else:
            expires_at = valid_from + timedelta(days=30)
        multiplier = rng.choice(CARD_MULTIPLIERS[:5] if n == 0 else CARD_MULTIPLIERS)
        if n == 1 and multiplier == cards[0][2]:
            multiplier = "2.0" if multiplier != "2.0" else "1.25"
        cards.append((valid_from, expires_at, multiplier))
        edges = [valid_from, valid_from - timedelta(seconds=1)]
        if expires_at is not None:
            edges += [expires_at - timedelta(seconds=1), expires_at]
        for edge in edges:
            if WINDOW_FIRST <= edge <= WINDOW_LAST and (
                profile.index < len(FORCED) or rng.random() < 0.5
            ):
                member.orders.append(
                    _new_order(rng, ids, edge, rng.randint(1000, 40_000), "card edge")
                )
    if profile.referred_by is not None:  # the referred order stays the member's first
        first = min(o.at for o in member.orders if o.special == "referred")
        member.orders = [o for o in member.orders if o.at >= first]
    member.orders.sort(key=lambda o: o.at)

    # tiers
    window = [o for o in member.orders if o.at >= W0]
    path = profile.tier_path
    before = _between(rng, registered + timedelta(minutes=5), W0 - timedelta(minutes=5))
    if path == "silver_before":
        member.tiers.append((before, "silver", "upgrade", None))
    elif path == "gold_before":
        member.tiers.append((before, "silver", "upgrade", None))
        member.tiers.append((before + timedelta(minutes=3), "gold", "upgrade", None))
    elif path == "down_in_window":
        member.tiers.append((before, "gold", "upgrade", None))
        member.tiers.append((_between(rng, W0, WINDOW_LAST), "silver", "downgrade", None))
    elif path == "up_in_window":
        if len(window) < 2:
            at = _between(rng, (window[0].at if window else W0) + timedelta(hours=1), WINDOW_LAST)
            window.append(_new_order(rng, ids, at, rng.randint(1000, 40_000)))
            member.orders.append(window[-1])
            member.orders.sort(key=lambda o: o.at)
        lifting = window[(len(window) - 1) // 2]
        lifting.special = lifting.special or "lifting"
        member.tiers.append(
            (lifting.at + timedelta(seconds=1), "silver", "upgrade", lifting.order_id)
        )

    # phase 1: sign-up, tier changes, cards
    referrer = by_index[profile.referred_by].member_id if profile.referred_by is not None else None
    member.phase[1].append(
        EdgeFact(
            ids("e"),
            "signup",
            mid,
            registered,
            timezone=profile.tz,
            referred_by=referrer,
        )
    )
    old = "bronze"
    for at, new_tier, reason, order_id in member.tiers:
        member.phase[1].append(
            EdgeFact(
                ids("e"),
                "tier",
                mid,
                at,
                order_id=order_id,
                tier=new_tier,
                old_tier=old,
                reason=reason,
                multiplier=ladder_at(at)[new_tier],
            )
        )
        old = new_tier
    for n, (valid_from, expires_at, multiplier) in enumerate(cards):
        member.phase[1].append(
            EdgeFact(
                ids("e"),
                "card",
                mid,
                max(valid_from - timedelta(seconds=rng.randint(0, 3 * 3600)), registered),
                card_no=f"77{zlib.crc32(f'{mid}/{n}'.encode()):011d}",
                plan_kind=rng.choice(["paid", "paid", "free", "internal"]),
                valid_from=valid_from,
                expires_at=expires_at,
                multiplier=multiplier,
            )
        )

    # phase 2: the orders, their refunds and cancels before T0
    for order in member.orders:
        member.phase[2].extend(_order_facts(rng, ids, member, order))
    for n in range(1, 3):
        member.phase[n].sort(key=lambda f: f.at)
    return member


def _paid_fact(ids: _Ids, member: _Member, order: _Order) -> EdgeFact:
    tier = member.tier_at(order.at)
    return EdgeFact(
        ids("e"),
        "paid",
        member.profile.member_id,
        order.at,
        order_id=order.order_id,
        total_minor=order.total,
        paid_minor=order.paid,
        tier=tier,
        multiplier=ladder_at(order.at)[tier],
    )


def _refund(ids: _Ids, member_id: str | None, order: _Order, amount: int, at: datetime):
    order.refunded += amount
    return EdgeFact(
        ids("e"),
        "refund",
        member_id,
        at,
        order_id=order.order_id,
        total_minor=order.total,
        paid_minor=order.paid,
        refunded_total_minor=order.refunded,
        amount_minor=amount,
        refund_id=ids("r"),
    )


def _cancel(ids: _Ids, member_id: str | None, order: _Order, at: datetime, status: str = "paid"):
    order.cancelled = True
    return EdgeFact(
        ids("e"),
        "cancel",
        member_id,
        at,
        order_id=order.order_id,
        total_minor=order.total,
        paid_minor=order.paid if status != "placed" else 0,
        refunded_total_minor=order.refunded,
        previous_status=status,
    )


def _order_facts(
    rng: random.Random, ids: _Ids, member: _Member | None, order: _Order
) -> list[EdgeFact]:
    """An order's facts in phase 2: perhaps placed, paid, then refunds and a cancel before T0
    (none for backdated orders, nothing in full for a referred order or one refunded late)."""
    member_id = member.profile.member_id if member else None
    facts: list[EdgeFact] = []
    if rng.random() < 0.3:
        placed = order.at - timedelta(minutes=rng.randint(1, 30))
        facts.append(
            EdgeFact(
                ids("e"),
                "placed",
                member_id,
                placed,
                order_id=order.order_id,
                total_minor=order.total,
                paid_minor=order.paid,
            )
        )
    if not order.special and member is not None and rng.random() < 0.05:
        order.special = "unpaid"  # placed, never paid, cancelled
        if not facts:
            facts.append(
                EdgeFact(
                    ids("e"),
                    "placed",
                    member_id,
                    order.at,
                    order_id=order.order_id,
                    total_minor=order.total,
                    paid_minor=order.paid,
                )
            )
        facts.append(_cancel(ids, member_id, order, order.at + timedelta(hours=1), "placed"))
        return facts
    if member is None:
        facts.append(
            EdgeFact(
                ids("e"),
                "paid",
                None,
                order.at,
                order_id=order.order_id,
                total_minor=order.total,
                paid_minor=order.paid,
            )
        )
    else:
        facts.append(_paid_fact(ids, member, order))
    if order.special.startswith("backdated") or order.special in ("late_refund", "requalify"):
        return facts
    later = order.at
    limit = T0 - timedelta(minutes=1)
    partial_only = order.special == "referred"
    roll = rng.random()
    refunds = 0
    if roll < 0.22:
        refunds = rng.randint(1, 3)
    elif roll < 0.3 and not partial_only:
        refunds = -1  # one refund of everything
    for n in range(abs(refunds)):
        room = int((limit - later).total_seconds())
        if room < 600 or order.refunded >= order.paid:
            break
        left = order.paid - order.refunded
        if partial_only:
            if left <= 200:
                break
            amount = rng.randint(1, left // 2)
        elif refunds < 0:
            amount = left
        else:
            amount = rng.randint(1, left)
            if n == refunds - 1 and rng.random() < 0.3:
                amount = left  # the last of several takes the rest
        later = later + timedelta(seconds=rng.randint(300, min(room, 3 * 86400)))
        facts.append(_refund(ids, member_id, order, amount, later))
    room = int((limit - later).total_seconds())
    if not partial_only and rng.random() < 0.1 and order.refunded < order.paid and room >= 600:
        later = later + timedelta(seconds=rng.randint(300, min(room, 2 * 86400)))
        status = rng.choice(["paid", "paid", "shipped", "delivered"])
        facts.append(_cancel(ids, member_id, order, later, status))
    return facts


def _late_facts(
    rng: random.Random, ids: _Ids, member: _Member, by_index: dict[int, Profile]
) -> None:
    """Phases 4 and 5 of one member: what happens to the referred order and the late-refunded
    one after T0 (times in (T0, T1]), new orders and referrals qualifying again."""
    profile = member.profile
    mid = profile.member_id
    last = T1 - timedelta(minutes=1)
    if profile.referred_by is not None and profile.fate != "none":
        order = next(o for o in member.orders if o.special == "referred")
        week_over = order.at + PENDING
        if profile.timing == "early":  # after its pending week, after the release
            start, end = max(T0, week_over) + timedelta(minutes=1), last
        else:  # during its pending week
            start, end = T0 + timedelta(minutes=1), min(week_over, T1) - timedelta(minutes=2)
        at = _between(rng, start, end - timedelta(minutes=30))
        left = order.paid - order.refunded
        if profile.fate == "cancel":
            member.phase[4].append(_cancel(ids, mid, order, at, rng.choice(["paid", "shipped"])))
        elif profile.fate == "partial":
            member.phase[4].append(_refund(ids, mid, order, rng.randint(1, left - 100), at))
        else:
            if rng.random() < 0.5 and left > 200:  # in two refunds, the last takes the rest
                member.phase[4].append(_refund(ids, mid, order, left // 3, at))
                at = at + timedelta(minutes=rng.randint(1, 20))
                left = order.paid - order.refunded
            member.phase[4].append(_refund(ids, mid, order, left, at))
        if profile.requalify:
            new = _new_order(
                rng, ids, _between(rng, at + timedelta(minutes=5), last), rng.randint(1000, 30_000)
            )
            new.special = "requalify"
            member.orders.append(new)
            member.phase[4].append(_paid_fact(ids, member, new))
            referrer = by_index[profile.referred_by].member_id
            member.phase[5].append(
                EdgeFact(
                    ids("e"),
                    "referral",
                    referrer,
                    new.at,
                    order_id=new.order_id,
                    referred_member_id=mid,
                )
            )
    if profile.late_refund:
        order = next(o for o in member.orders if o.special == "late_refund")
        at = _between(rng, T0 + timedelta(minutes=1), last)
        roll = 1.0 if profile.late_refund != "keep" else rng.random()
        if roll < 0.3:
            member.phase[4].append(_cancel(ids, mid, order, at))
        elif roll < 0.6:
            member.phase[4].append(_refund(ids, mid, order, rng.randint(1, order.paid), at))
        else:  # in full: what the member spent meanwhile comes from other lots, or is a debt
            member.phase[4].append(_refund(ids, mid, order, order.paid, at))
    if profile.erased:
        at = T1 - timedelta(seconds=rng.randint(60, 3600))
        member.phase[5].append(EdgeFact(ids("e"), "erased", mid, at, reason="member_request"))
    for n in (4, 5):
        member.phase[n].sort(key=lambda f: f.at)


def _referral_facts(ids: _Ids, member: _Member, referrer: str) -> list[EdgeFact]:
    order = next(o for o in member.orders if o.special == "referred")
    return [
        EdgeFact(
            ids("e"),
            "referral",
            referrer,
            order.at,
            order_id=order.order_id,
            referred_member_id=member.profile.member_id,
        )
    ]


# ---------------------------------------------------------------------------------------------
# Building the plan (the oracle decides the amounts and what each write must answer)
# ---------------------------------------------------------------------------------------------


def _lots_before(book: Book, member_id: str, lot_key: str, now: datetime) -> int:
    """Available points a redemption takes before it reaches the lot of `lot_key`."""
    member = book.members[member_id]
    target = next(lot for lot in member.lots if lot.key == lot_key)
    return sum(
        lot.remaining
        for lot in member.lots
        if lot is not target
        and lot.released
        and not lot.expired
        and lot.expires_at > now
        and Lot.order(lot) < Lot.order(target)
    )


def build(seed: int, members: int) -> Plan:
    """The plan of a seed: facts by phase, the jobs, the HTTP writes with what each must
    answer, and every account after each check, by the oracle."""
    rng = random.Random(seed)
    ids = _Ids(seed)
    profiles = _profiles(rng, members, seed)
    by_index = {p.index: p for p in profiles}
    built = {p.member_id: _member_facts(rng, ids, p, by_index) for p in profiles}
    guests = []
    for _ in range(max(members // 20, 1)):
        order = _new_order(
            rng, ids, _between(rng, WINDOW_FIRST, WINDOW_LAST), rng.randint(0, 60_000)
        )
        guests.extend(_order_facts(rng, ids, None, order))
    for member in built.values():
        _late_facts(rng, ids, member, by_index)

    def phase(n: int) -> tuple[EdgeFact, ...]:
        facts = [f for m in built.values() for f in m.phase[n]]
        if n == 2:
            facts += guests
        if n == 3:
            facts = [
                fact
                for m in built.values()
                if m.profile.referred_by is not None
                for fact in _referral_facts(ids, m, by_index[m.profile.referred_by].member_id)
            ]
        facts.sort(key=lambda f: f.at)  # stable: each member's facts keep their order
        return tuple(facts)

    book = Book()
    steps: list[Step] = []
    snapshots: dict[str, dict[str, AccountView]] = {}
    cover = book.coverage
    redemptions: dict[str, Redemption] = {}
    member_ids = [p.member_id for p in profiles]
    n_facts = 0

    def publish(name: str, facts: tuple[EdgeFact, ...], now: datetime) -> None:
        nonlocal n_facts
        steps.append(Publish(name, facts, now))
        n_facts += len(facts)
        for fact in facts:
            book.apply(fact, now)

    def check(label: str, now: datetime, final: bool = False) -> None:
        steps.append(Check(label, now, final))
        views = snapshots[label] = {m: book.account(m, now) for m in member_ids}
        for m, view in views.items():
            if view.expiring != book.account(m, now, utc_dates=True).expiring:
                cover["expiring: a local date other than the UTC date"] += 1
            if book.expired_unexpired(m, now):
                cover["lot expired by time, the expire job not run"] += 1
        if final:
            for m, view in views.items():
                assert view == book.account(m, now, counting_expired=True), m

    def redeem(member_id: str, points: int, now: datetime, why: str | None = None) -> None:
        key = f"rd{seed}-{len(steps):05d}"
        outcome = book.redeem(member_id, points, now)
        if isinstance(outcome, Refused):
            steps.append(Redeem(key, member_id, points, now, outcome.status, outcome.code))
            if why:
                cover[f"redemption refused: {why}"] += 1
            return
        assert why is None, (member_id, why)
        redemptions[key] = outcome
        after = book.account(member_id, now).available
        steps.append(Redeem(key, member_id, points, now, 201, None, after))
        cover["redemption"] += 1
        if len(outcome.portions) > 1:
            cover["redemption from several lots"] += 1

    def cancel(key: str, now: datetime) -> None:
        redemption = redemptions.pop(key)
        book.cancel(redemption, now)
        steps.append(Cancel(key, redemption.member_id, now))

    def cancellable(key: str, group: int) -> bool:
        redemption = redemptions[key]
        member = book.members[redemption.member_id]
        profile = built[redemption.member_id].profile
        return profile.cancel == group and not member.erased and member.debt == 0

    # phases 1-3 at T0
    steps.append(SetClock(T0))
    publish("1: sign-ups, tiers, cards", phase(1), T0)
    publish("2: orders", phase(2), T0)
    publish("3: referrals", phase(3), T0)
    check("A: T0, after phases 1-3", T0)

    for p in profiles:
        view = book.account(p.member_id, T0)
        if p.importer and p.redeem_t0:
            expired = book.expired_unexpired(p.member_id, T0)
            if expired:  # what the account could pay only with expired points
                redeem(
                    p.member_id, view.available + expired, T0, "only expired points would cover it"
                )
            if view.available > 0:
                redeem(p.member_id, view.available, T0)
        elif p.redeem_t0 and view.available > 0:
            redeem(p.member_id, rng.randint(min(20, view.available), view.available), T0)
        if p.insufficient:
            redeem(p.member_id, view.available + rng.randint(1, 50), T0, "insufficient")
        if p.erased:
            steps.append(TopUp(p.member_id, f"TU-{p.member_id}-1", 10_000))
            steps.append(Spend(p.member_id, 500))

    steps.append(SetClock(T1))
    steps.append(RunJob("release-pending", T1))
    book.release(T1)
    check("B: T1, released at T1", T1)

    for p in profiles:
        view = book.account(p.member_id, T1)
        if view.available <= 0:
            continue
        if p.spender or p.late_refund == "spend_all":
            redeem(p.member_id, view.available, T1)
        elif p.late_refund == "spend_part":
            order = next(o for o in built[p.member_id].orders if o.special == "late_refund")
            paid_event = next(
                f.event_id
                for f in built[p.member_id].phase[2]
                if f.kind == "paid" and f.order_id == order.order_id
            )
            lot = next(
                (lot for lot in book.members[p.member_id].lots if lot.key == paid_event), None
            )
            if lot is not None and lot.remaining > 1:
                before = _lots_before(book, p.member_id, paid_event, T1)
                redeem(p.member_id, before + lot.remaining - lot.remaining // 2, T1)
        elif p.redeem_t1:
            redeem(p.member_id, rng.randint(1, view.available), T1)

    publish("4: late refunds and cancels", phase(4), T1)
    publish("5: referrals again, erasures", phase(5), T1)
    check("C: T1, after phases 4-5", T1)

    for p in profiles:
        view = book.account(p.member_id, T1)
        if view.available < 0:
            redeem(p.member_id, 1, T1, "negative balance")
        if p.erased:
            steps.append(Refusals(p.member_id, max(min(view.available, 50), 1)))
            for what in ("redemption", "adjustment", "top-up", "spend"):
                cover[f"erased: {what} refused"] += 1

    steps.append(SetClock(T2))
    steps.append(RunJob("release-pending", T2))
    book.release(T2)
    check("D: T2, released, the expire job not run", T2)

    for key in [k for k in redemptions if cancellable(k, 1)]:
        cancel(key, T2)
    check("E: T2, cancels before the expire job", T2)

    steps.append(RunJob("expire", EXPIRE_FIRST))
    book.expire(EXPIRE_FIRST)
    check("F: T2, expired up to T2 - 12 d", T2)

    steps.append(RunJob("expire", T2))
    book.expire(T2)
    for key in [k for k in redemptions if cancellable(k, 2)]:
        cancel(key, T2)
    check("G: T2, expired up to T2, cancels after it", T2)

    steps.append(RunJob("expire", T2))
    book.expire(T2)
    steps.append(RunJob("release-pending", T2))
    book.release(T2)
    check("H: T2, final", T2, final=True)

    # edges the oracle cannot count by itself
    for member in built.values():
        by_tier: dict[str, set[str]] = {}
        for fact in member.phase[2] + member.phase[4]:
            if fact.kind == "paid" and fact.tier:
                by_tier.setdefault(fact.tier, set()).add(fact.multiplier or "")
        if any(len(multipliers) > 1 for multipliers in by_tier.values()):
            cover["same tier, two multipliers"] += 1
    final_tiers = {m: (b.tiers[-1][1] if b.tiers else "bronze") for m, b in built.items()}
    return Plan(
        seed,
        steps,
        member_ids,
        {p.member_id: p for p in profiles},
        cover,
        snapshots,
        final_tiers,
        n_facts,
    )


def missing_edges(plan: Plan) -> list[str]:
    return [edge for edge in REQUIRED if plan.coverage[edge] == 0]


# ---------------------------------------------------------------------------------------------
# Deliveries and events
# ---------------------------------------------------------------------------------------------


def handled_ids(facts: list[EdgeFact]) -> set[str]:
    return {f.event_id for f in facts if f.kind in HANDLED_KINDS}


def with_duplicates(
    facts: tuple[EdgeFact, ...], members: list[str], seed: int, earlier: list[EdgeFact]
) -> Delivery:
    """A phase twice over with random duplicates, re-sent order facts (new ids) and members
    interleaved at random (each member's own events in order), plus a tenth of the earlier
    phases' events delivered again (same ids: the inbox must skip them)."""
    if not facts:
        return Delivery([])
    delivery = twice_with_duplicates(Stream(list(facts), members), seed)
    rng = random.Random(seed * 31 + 7)
    again = rng.sample(earlier, k=len(earlier) // 10) if earlier else []
    out = list(delivery.facts)
    for fact in again:
        out.insert(rng.randint(0, len(out)), fact)
    return Delivery(out, delivery.duplicates + len(again), delivery.resent)


def to_event(fact: EdgeFact) -> tuple[str, bytes, bytes]:
    """(topic, key, value) of the CloudEvent that carries a fact."""
    mid = fact.member_id
    data: Any
    order = {
        "order_id": fact.order_id,
        "channel": "pos",
        "external_id": f"POS-{fact.order_id}",
        "store_id": "store-edge-1",
        "member_id": mid,
        "occurred_at": fact.at,
    }
    if fact.kind == "signup":
        assert mid is not None
        type_ = "member.registered"
        data = MemberRegistered(
            member_id=mid,
            card_no=f"88{zlib.crc32(mid.encode()):011d}",
            tier="bronze",
            referral_code=mid[-6:].upper(),
            referred_by=fact.referred_by,
            channel="pos",
            timezone=fact.timezone,
            registered_at=fact.at,
        )
    elif fact.kind == "tier":
        type_ = "member.tier_changed"
        data = MemberTierChanged(
            member_id=mid,
            old_tier=fact.old_tier,
            new_tier=fact.tier,
            reason=fact.reason,
            points_multiplier=float(fact.multiplier or 1),
            metric="spend_365d",
            order_id=fact.order_id,
            occurred_at=fact.at,
        )
    elif fact.kind == "card":
        type_ = "member.card_issued"
        data = MemberCardIssued(
            member_id=mid,
            card_no=fact.card_no,
            plan_code=f"plan-{fact.plan_kind}",
            plan_kind=fact.plan_kind,
            action="issued",
            valid_from=fact.valid_from,
            expires_at=fact.expires_at,
            price_minor=19900 if fact.plan_kind == "paid" else None,
            benefits=CardBenefits(points_multiplier=float(fact.multiplier or 1)),
            occurred_at=fact.at,
        )
    elif fact.kind == "referral":
        type_ = "member.referral_qualified"
        data = MemberReferralQualified(
            member_id=mid,
            referred_member_id=fact.referred_member_id,
            order_id=fact.order_id,
            occurred_at=fact.at,
        )
    elif fact.kind == "erased":
        type_ = "member.erased"
        data = MemberErased(member_id=mid, reason=fact.reason, occurred_at=fact.at)
    elif fact.kind == "placed":
        type_ = "order.placed"
        data = OrderPlaced(**order, total_minor=fact.total_minor, paid_minor=fact.paid_minor)
    elif fact.kind == "paid":
        type_ = "order.paid"
        data = OrderPaid(
            **order,
            total_minor=fact.total_minor,
            paid_minor=fact.paid_minor,
            member_tier=fact.tier,
            member_tier_multiplier=float(fact.multiplier) if fact.multiplier else None,
        )
    elif fact.kind == "refund":
        type_ = "order.refunded"
        data = OrderRefunded(
            **{**order, "external_id": f"RF-{fact.refund_id}"},
            refund_id=fact.refund_id,
            order_external_id=f"POS-{fact.order_id}",
            amount_minor=fact.amount_minor,
            refunded_total_minor=fact.refunded_total_minor,
            paid_minor=fact.paid_minor,
            total_minor=fact.total_minor,
        )
    elif fact.kind == "cancel":
        type_ = "order.cancelled"
        data = OrderCancelled(
            **order,
            previous_status=fact.previous_status,
            total_minor=fact.total_minor,
            paid_minor=fact.paid_minor,
            refunded_total_minor=fact.refunded_total_minor,
        )
    else:
        raise ValueError(fact.kind)
    event = make_event(
        type_,
        data,
        subject=mid,
        source="loyalty/member",
        time=fact.at,
        key=mid or fact.order_id,
        event_id=fact.event_id,
    )
    return event.topic, event.key.encode(), event.encode()
