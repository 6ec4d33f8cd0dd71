"""Seeded random streams of the events the member, coupon, notifier and segmenter services
consume, the ways of delivering them (clean; twice with duplicates, facts re-sent under new ids
and members reordered among themselves, never a member's own events), and publishing them onto
the real broker as CloudEvents keyed by member.

Every payload is a model of the event registry (`loyalty_shared.events`), so the autouse
ProducedEventChecker validates each one against its committed JSON Schema as it is encoded.

Member ids are the stream's own (`s<seed>x<n>`); where a service mints ids or codes itself (the
member service's member ids, the coupon service's coupon codes) a per-database `rewrite`
substitutes them when the events are published. Times are built around a `base` instant: the
in-process services run on a FixedClock at `base`, the real processes on the system clock a few
minutes after it. Every time the segmenter measures days from sits 3 to 21 hours off a whole
day before `base`, so no stage, churn or window boundary falls in the hours a test runs.
"""

from __future__ import annotations

import dataclasses
import random
import zlib
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from aiokafka import TopicPartition
from loyalty_shared.events import EventData, make_event
from loyalty_shared.events.coupons import CouponHoldoutAssigned, CouponIssued, CouponRedeemed
from loyalty_shared.events.members import (
    MemberCheckedIn,
    MemberErased,
    MemberRegistered,
    MemberTierChanged,
    MemberUpdated,
)
from loyalty_shared.events.orders import (
    OrderCancelled,
    OrderDelivered,
    OrderLine,
    OrderPaid,
    OrderPlaced,
    OrderRefunded,
    OrderShipped,
)
from loyalty_shared.events.points import (
    LedgerPortion,
    PointsCredited,
    PointsDebited,
    PointsExpired,
    PointsReleased,
    PointsReversed,
)
from loyalty_shared.events.segments import MemberLifecycleChanged, SegmentEntered
from loyalty_shared.kafka import ensure_topics

from .stream import Delivery, committed_offsets, interleave
from .stream import Publisher as FactPublisher

DAY = timedelta(days=1)
MARGIN = timedelta(hours=3)  # the least distance of a measured time from a whole day
PARTITIONS = 6
CATEGORIES = ("snacks", "beverages", "produce", "household", "beauty")
TIMEZONES = ("Asia/Shanghai", "Europe/London", "America/New_York")
CHANNELS = ("email", "sms", "wechat", "push")


@dataclasses.dataclass(frozen=True)
class Item:
    """One event of a stream: its id, type, member (None for a guest order), business time and
    payload. `resendable`: the source may post the same fact again under a new event id, and
    the consumer is meant to recognise it (an order paid twice counts once). Phases are
    published one after the other, each consumed before the next: a later phase may name what
    an earlier one made the service mint (coupon codes), or change what must not race with
    events of other topics (a member's preferences)."""

    event_id: str
    type: str
    member_id: str | None
    at: datetime
    data: EventData
    order_id: str | None = None
    resendable: bool = False
    phase: int = 0


@dataclasses.dataclass(frozen=True)
class Stream:
    items: list[Item]  # the clean single pass, each member's events in their order
    members: list[str]
    base: datetime

    def phase(self, n: int) -> list[Item]:
        return [item for item in self.items if item.phase == n]


class _Ids:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.n = 0

    def __call__(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.seed}-{self.n:07d}"


def member_key(seed: int, i: int) -> str:
    return f"s{seed}x{i:05d}"


def past(rng: random.Random, base: datetime, days: int) -> datetime:
    """A time about `days` days before base, at least MARGIN away from a whole day before it."""
    minutes = rng.randint(
        int(MARGIN.total_seconds() // 60), 1440 - int(MARGIN.total_seconds() // 60)
    )
    return base - days * DAY - timedelta(minutes=minutes)


def later(rng: random.Random, at: datetime, max_hours: int = 72) -> datetime:
    return at + timedelta(minutes=rng.randint(5, max_hours * 60))


# ---------------------------------------------------------------------------------------------
# Payloads
# ---------------------------------------------------------------------------------------------


def registered(member_id: str, at: datetime, **fields: Any) -> MemberRegistered:
    return MemberRegistered(
        member_id=member_id,
        card_no=f"88{zlib.crc32(member_id.encode()):011d}",
        tier="bronze",
        referral_code=member_id[-6:].upper(),
        channel="pos",
        registered_at=at,
        **fields,
    )


def _portion(ids: _Ids, points: int) -> list[LedgerPortion]:
    return [LedgerPortion(entry_id=ids("le"), lot_id=ids("lot"), points=points)]


def points_event(
    ids: _Ids, kind: str, member_id: str, at: datetime, points: int, **fields: Any
) -> tuple[str, EventData]:
    """A points.* payload (balances 0 until `with_balances` fills them in)."""
    common = {"member_id": member_id, "available_after": 0, "pending_after": 0, "occurred_at": at}
    if kind == "credited":
        status = fields.pop("status", "pending")
        return "points.credited", PointsCredited(
            **common,
            entry_id=ids("le"),
            lot_id=ids("lot"),
            points=points,
            rule=fields.pop("rule", "purchase"),
            reason=fields.pop("reason", "order paid"),
            status=status,
            **fields,
        )
    if kind == "reversed":
        return "points.reversed", PointsReversed(
            **common,
            reverses=fields.pop("reverses", "earn"),
            points=points,
            reason=fields.pop("reason", "order refunded"),
            entries=_portion(ids, points),
            **fields,
        )
    if kind == "released":
        return "points.released", PointsReleased(
            **common, entry_id=ids("le"), lot_id=ids("lot"), points=points, **fields
        )
    if kind == "debited":
        return "points.debited", PointsDebited(
            **common,
            redemption_id=ids("rd"),
            points=points,
            reason="coupon exchange",
            entries=_portion(ids, points),
            **fields,
        )
    if kind == "expired":
        return "points.expired", PointsExpired(
            **common, points=points, entries=_portion(ids, points)
        )
    raise ValueError(kind)


def with_balances(items: list[Item]) -> list[Item]:
    """Fill in available_after and pending_after along each member's points events, in order."""
    available: dict[str, int] = {}
    pending: dict[str, int] = {}
    out = []
    for item in items:
        if item.type.startswith("points.") and item.member_id:
            m, data = item.member_id, cast(Any, item.data)
            a, p = available.get(m, 0), pending.get(m, 0)
            n = data.points
            if item.type == "points.credited":
                if data.status == "pending":
                    p += n
                else:
                    a += n
            elif item.type == "points.released":
                moved = min(n, p)
                p, a = p - moved, a + moved
            elif item.type == "points.reversed":
                if data.reverses == "earn":
                    taken = min(n, p)
                    p, a = p - taken, a - (n - taken)
                else:
                    a += n
            else:
                a -= n
            available[m], pending[m] = a, p
            item = dataclasses.replace(
                item, data=data.model_copy(update={"available_after": a, "pending_after": p})
            )
        out.append(item)
    return out


def _lines(rng: random.Random) -> list[OrderLine]:
    favourite = rng.choice(CATEGORIES)
    lines = []
    for k in range(rng.randint(1, 4)):
        category = favourite if rng.random() < 0.6 else rng.choice(CATEGORIES)
        lines.append(
            OrderLine(
                sku=f"SKU-{category[:3].upper()}-{k}",
                category=category,
                quantity=rng.randint(1, 3),
                unit_price_minor=rng.choice([990, 1290, 2500, 4990, 12900, 39900]),
            )
        )
    return lines


@dataclasses.dataclass
class OrderPlan:
    """What to generate for one order of a member."""

    at: datetime
    count: int  # the member's paid orders so far, this one included (paid_order_count)
    coupon_codes: list[str] = dataclasses.field(default_factory=list)
    placed: bool = False
    unpaid_cancel: bool = False
    refunds: int = 0  # -1: one refund of everything
    cancel: bool = False
    shipped: bool = False
    points: bool = False  # the points service's credit and reversals too


def plan_order(rng: random.Random, at: datetime, count: int) -> OrderPlan:
    plan = OrderPlan(at=at, count=count)
    plan.placed = rng.random() < 0.35
    plan.unpaid_cancel = plan.placed and rng.random() < 0.15
    roll = rng.random()
    plan.refunds = rng.randint(1, 2) if roll < 0.2 else (-1 if roll < 0.3 else 0)
    plan.cancel = not plan.unpaid_cancel and rng.random() < 0.12
    plan.shipped = not plan.cancel and rng.random() < 0.4
    return plan


def order_items(
    rng: random.Random, ids: _Ids, member_id: str | None, plan: OrderPlan, phase: int = 0
) -> list[Item]:
    """An order's events: maybe placed, then paid (or cancelled unpaid), maybe shipped and
    delivered, refunded in part or in full, cancelled after payment; with points if asked."""
    order_id = ids("o")
    lines = _lines(rng)
    total = sum(line.quantity * line.unit_price_minor for line in lines) + rng.choice([0, 0, 800])
    paid = total - rng.choice([0, 0, 0, min(1000, total)])
    common = {
        "order_id": order_id,
        "channel": rng.choice(["pos", "online"]),
        "external_id": f"EXT-{order_id}",
        "store_id": "store-chaos-1",
        "member_id": member_id,
    }
    amounts = {"total_minor": total, "paid_minor": paid, "lines": lines}
    items: list[Item] = []

    def add(type_: str, at: datetime, data: EventData, resendable: bool = True) -> None:
        items.append(
            Item(ids("e"), type_, member_id, at, data, order_id, resendable=resendable, phase=phase)
        )

    at = plan.at
    if plan.placed:
        placed_at = at - timedelta(minutes=rng.randint(1, 40))
        add("order.placed", placed_at, OrderPlaced(**common, occurred_at=placed_at, **amounts))
        if plan.unpaid_cancel:
            add(
                "order.cancelled",
                at,
                OrderCancelled(
                    **common,
                    occurred_at=at,
                    previous_status="placed",
                    total_minor=total,
                    paid_minor=0,
                    coupon_codes=plan.coupon_codes,
                ),
            )
            return items
    add(
        "order.paid",
        at,
        OrderPaid(
            **common,
            occurred_at=at,
            **amounts,
            coupon_codes=plan.coupon_codes,
            member_tier="bronze" if member_id else None,
            member_tier_multiplier=1.0 if member_id else None,
            paid_order_count=plan.count if member_id else None,
        ),
    )
    earned = paid // 100
    if plan.points and member_id and earned:
        type_, data = points_event(
            ids, "credited", member_id, at, earned, order_id=order_id, source_type="order.paid"
        )
        add(type_, at, data, resendable=False)
    when = at
    if plan.shipped:
        when = later(rng, when, 24)
        add("order.shipped", when, OrderShipped(**common, occurred_at=when, carrier="SF"))
        when = later(rng, when, 48)
        add("order.delivered", when, OrderDelivered(**common, occurred_at=when))
    refunded = 0
    for _ in range(abs(plan.refunds)):
        if refunded >= paid:
            break
        amount = paid - refunded if plan.refunds < 0 else rng.randint(1, paid - refunded)
        refunded += amount
        when = later(rng, when)
        refund_id = ids("r")
        add(
            "order.refunded",
            when,
            OrderRefunded(
                **{**common, "external_id": f"RF-{refund_id}"},
                occurred_at=when,
                refund_id=refund_id,
                order_external_id=f"EXT-{order_id}",
                amount_minor=amount,
                refunded_total_minor=refunded,
                paid_minor=paid,
                total_minor=total,
            ),
        )
        back = earned * refunded // paid - earned * (refunded - amount) // paid if paid else 0
        if plan.points and member_id and back:
            type_, data = points_event(ids, "reversed", member_id, when, back, order_id=order_id)
            add(type_, when, data, resendable=False)
    if plan.cancel and refunded < paid:
        when = later(rng, when)
        add(
            "order.cancelled",
            when,
            OrderCancelled(
                **common,
                occurred_at=when,
                previous_status=rng.choice(["paid", "shipped"]),
                total_minor=total,
                paid_minor=paid,
                refunded_total_minor=refunded,
                coupon_codes=plan.coupon_codes,
            ),
        )
        back = earned - earned * refunded // paid if paid else 0
        if plan.points and member_id and back:
            type_, data = points_event(
                ids, "reversed", member_id, when, back, order_id=order_id, reason="order cancelled"
            )
            add(type_, when, data, resendable=False)
    return items


def _merge(per_key: list[list[Item]], members: list[str], base: datetime) -> Stream:
    stream = [item for items in per_key for item in items]
    stream.sort(key=lambda item: item.at)  # stable: each key's own order is kept
    return Stream(stream, members, base)


# ---------------------------------------------------------------------------------------------
# The streams, one per consumer
# ---------------------------------------------------------------------------------------------


def segmenter_stream(seed: int, members: int, base: datetime) -> Stream:
    """Sign-ups over the last year and a half, then 0 to 8 paid orders each spread over the
    same time (lines in several categories, refunds, cancels, re-sent order facts), the points
    those orders earn and lose, tier changes, coupons issued and redeemed, a few erasures; and
    guest orders. Members end up in every lifecycle stage."""
    rng = random.Random(seed)
    ids = _Ids(seed)
    per_key: list[list[Item]] = []
    keys = []
    for i in range(members):
        m = member_key(seed, i)
        keys.append(m)
        joined_days = rng.randint(20, 560)
        joined = past(rng, base, joined_days)
        items = [
            Item(ids("e"), "member.registered", m, joined, registered(m, joined), resendable=True)
        ]
        type_, data = points_event(
            ids, "credited", m, joined, 100, status="available", rule="signup", reason="welcome"
        )
        items.append(Item(ids("e"), type_, m, joined, data))
        days = sorted(
            rng.sample(
                range(1, joined_days), k=min(rng.choice([0, 1, 1, 2, 3, 5, 8]), joined_days - 1)
            ),
            reverse=True,
        )
        for count, d in enumerate(days, start=1):
            plan = plan_order(rng, past(rng, base, d), count)
            plan.points = True
            items.extend(order_items(rng, ids, m, plan))
        if rng.random() < 0.15:
            at = past(rng, base, rng.randint(1, joined_days))
            data = MemberTierChanged(
                member_id=m,
                old_tier="bronze",
                new_tier="silver",
                reason="upgrade",
                points_multiplier=1.2,
                occurred_at=at,
            )
            items.append(Item(ids("e"), "member.tier_changed", m, at, data, resendable=True))
        if rng.random() < 0.25:
            at = past(rng, base, rng.randint(1, joined_days))
            code = ids("CPN")
            coupon = {
                "coupon_code": code,
                "template_code": "CHAOS-10OFF",
                "campaign_code": "CHAOS-WELCOME",
                "member_id": m,
                "valid_from": at,
                "valid_until": at + 30 * DAY,
            }
            items.append(
                Item(
                    ids("e"),
                    "coupon.issued",
                    m,
                    at,
                    CouponIssued(
                        **coupon,
                        occurred_at=at,
                        kind="amount_off",
                        value=1000,
                        issued_via="campaign",
                    ),
                    resendable=True,
                )
            )
            if rng.random() < 0.5:
                used = at + timedelta(days=rng.randint(1, 20))
                items.append(
                    Item(
                        ids("e"),
                        "coupon.redeemed",
                        m,
                        used,
                        CouponRedeemed(
                            **coupon, occurred_at=used, redemption_id=ids("rd"), order_id=ids("o")
                        ),
                        resendable=True,
                    )
                )
        if rng.random() < 0.1:
            at = past(rng, base, rng.randint(1, joined_days))
            hold = CouponHoldoutAssigned(
                member_id=m,
                campaign_code="CHAOS-WINBACK",
                trigger="segment.entered",
                grant_key=f"segment:winback:{at.isoformat()}",
                assigned_via="campaign",
                occurred_at=at,
            )
            items.append(Item(ids("e"), "coupon.holdout_assigned", m, at, hold, resendable=True))
        if rng.random() < 0.04:
            at = base - timedelta(hours=rng.randint(1, 2))
            data = MemberErased(member_id=m, reason="member request", occurred_at=at)
            items.append(Item(ids("e"), "member.erased", m, at, data, resendable=True))
        items.sort(key=lambda item: item.at)
        per_key.append(with_balances(items))
    for _ in range(max(members // 10, 1)):
        plan = plan_order(rng, past(rng, base, rng.randint(1, 400)), 1)
        per_key.append(order_items(rng, ids, None, plan))
    return _merge(per_key, keys, base)


def coupon_stream(seed: int, members: int, base: datetime) -> Stream:
    """Phase 0: sign-ups (welcome packs, a campaign with a holdout), tier changes (up and
    down), check-in streaks, segment entries. Phase 1, in the next days: paid orders (first
    order, second order with a budget), some naming the member's welcome coupon (now and then
    two orders in a row: the first one gets it), cancelled or refunded in full or in part
    (releasing it), sometimes naming it again afterwards; for some members the shop posts their
    paid orders again under new event ids (a re-sent fact: it must not redeem a coupon its
    order's cancel released); guest orders."""
    rng = random.Random(seed)
    ids = _Ids(seed)
    per_key: list[list[Item]] = []
    keys = []
    for i in range(members):
        m = member_key(seed, i)
        keys.append(m)
        joined = base - timedelta(hours=rng.randint(2, 72), minutes=rng.randint(0, 59))
        items = [
            Item(ids("e"), "member.registered", m, joined, registered(m, joined), resendable=True)
        ]
        at = joined
        for _ in range(rng.choice([0, 0, 1, 2])):
            at = at + timedelta(minutes=rng.randint(1, 600))
            up = rng.random() < 0.75
            old, new = ("bronze", "silver") if up else ("silver", "bronze")
            data = MemberTierChanged(
                member_id=m,
                old_tier=old,
                new_tier=new,
                reason="upgrade" if up else "downgrade",
                points_multiplier=1.2 if up else 1.0,
                occurred_at=at,
            )
            items.append(Item(ids("e"), "member.tier_changed", m, at, data, resendable=True))
        streak = 0
        day = joined.date()
        for _ in range(rng.choice([0, 0, 3, 8, 15])):
            day = day + timedelta(days=1)
            streak = 1 if rng.random() < 0.08 else streak + 1
            at = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=2)
            data = MemberCheckedIn(member_id=m, date=day, streak_days=streak, occurred_at=at)
            items.append(Item(ids("e"), "member.checked_in", m, at, data, resendable=True))
        for _ in range(rng.choice([0, 0, 1, 2])):
            at = base - timedelta(minutes=rng.randint(1, 120))
            data = SegmentEntered(segment_code="winback", member_id=m, as_of=at)
            items.append(Item(ids("e"), "segment.entered", m, at, data, resendable=True))
        items.sort(key=lambda item: item.at)
        # Phase 1: orders in the days after base, naming the welcome coupon now and then.
        orders: list[Item] = []
        when = base + timedelta(hours=1)
        count = 0
        for _ in range(rng.choice([1, 1, 2, 3, 4])):
            count += 1
            when = when + timedelta(minutes=rng.randint(10, 2000))
            plan = plan_order(rng, when, count)
            if rng.random() < 0.45:
                plan.coupon_codes = [WELCOME_PLACEHOLDER]
                if rng.random() < 0.3:  # paid with it, and a minute later with it again
                    first = OrderPlan(at=when, count=count, coupon_codes=[WELCOME_PLACEHOLDER])
                    orders.extend(order_items(rng, ids, m, first, phase=1))
                    count += 1
                    plan = plan_order(rng, when + timedelta(minutes=1), count)
                    plan.coupon_codes = [WELCOME_PLACEHOLDER]
                    plan.placed = plan.unpaid_cancel = False
            orders.extend(order_items(rng, ids, m, plan, phase=1))
            when = max(item.at for item in orders)
        orders.sort(key=lambda item: item.at)
        if rng.random() < 0.3:  # the shop posts the member's paid orders again, new ids
            end = orders[-1].at
            orders += [
                dataclasses.replace(item, event_id=ids("rp"), at=end + timedelta(minutes=n + 1))
                for n, item in enumerate(i for i in orders if i.type == "order.paid")
            ]
        per_key.append(items + orders)
    for _ in range(max(members // 10, 1)):
        plan = plan_order(rng, base + timedelta(hours=rng.randint(2, 90)), 1)
        per_key.append(order_items(rng, ids, None, plan, phase=1))
    return _merge_phases(per_key, keys, base)


WELCOME_PLACEHOLDER = "@welcome"


def _merge_phases(per_key: list[list[Item]], members: list[str], base: datetime) -> Stream:
    stream: list[Item] = []
    for phase in sorted({item.phase for items in per_key for item in items}):
        part = [item for items in per_key for item in items if item.phase == phase]
        part.sort(key=lambda item: item.at)
        stream.extend(part)
    return Stream(stream, members, base)


def notifier_stream(seed: int, members: int, base: datetime) -> Stream:
    """Phase 0: sign-ups with consents, time zones and locales. Phase 1: what may be messaged,
    from every topic: orders placed, paid, shipped, delivered, cancelled, refunded (payment
    reminders scheduled and called off), points credited, coupons issued, tier changes,
    lifecycle changes into win-back stages, check-ins (no template: nothing to send). Phase 2:
    consent changes and a few erasures (what is still queued is suppressed). Phase 3: more of
    phase 1, planned by the new preferences (nothing for the erased).

    A member's events on one topic keep their order, but Kafka orders nothing across topics,
    and the notifier plans a message by the preferences it holds when the message arrives (it
    decides again before sending): so preferences change only between phases, each phase
    consumed before the next is published."""
    rng = random.Random(seed)
    ids = _Ids(seed)
    per_key: list[list[Item]] = []
    keys = []
    for i in range(members):
        m = member_key(seed, i)
        keys.append(m)
        joined = base - timedelta(days=rng.randint(10, 30), minutes=rng.randint(0, 1439))
        consents = {c: rng.random() < 0.5 for c in CHANNELS if rng.random() < 0.8}
        data = registered(
            m,
            joined,
            consents=consents,
            timezone=rng.choice(TIMEZONES),
            locale=rng.choice(["zh-CN", "en"]),
        )
        items = [Item(ids("e"), "member.registered", m, joined, data)]
        items += _messages(rng, ids, m, joined, base - 5 * DAY, phase=1)
        changed_at = base - 4 * DAY
        for _ in range(rng.choice([0, 0, 1, 2])):
            changed_at = changed_at + timedelta(minutes=rng.randint(1, 600))
            changed = {c: rng.random() < 0.5 for c in CHANNELS}
            data = MemberUpdated(
                member_id=m, changed=["consents"], consents=changed, occurred_at=changed_at
            )
            items.append(Item(ids("e"), "member.updated", m, changed_at, data, phase=2))
        if rng.random() < 0.08:
            at = changed_at + timedelta(minutes=1)
            data = MemberErased(member_id=m, occurred_at=at)
            items.append(Item(ids("e"), "member.erased", m, at, data, phase=2))
        items += _messages(rng, ids, m, base - 3 * DAY, base, phase=3)
        per_key.append(with_balances(items))
    return _merge_phases(per_key, keys, base)


def _messages(
    rng: random.Random, ids: _Ids, m: str, start: datetime, end: datetime, phase: int
) -> list[Item]:
    """Events the notifier may message a member about, between two times, in time order."""
    items: list[Item] = []
    span = int((end - start).total_seconds() // 60)

    def when() -> datetime:
        return start + timedelta(minutes=rng.randint(1, span))

    at = start
    for count in range(1, rng.choice([0, 1, 1, 2]) + 1):
        at = at + timedelta(minutes=rng.randint(1, span // 4))
        plan = plan_order(rng, at, count)
        plan.points = rng.random() < 0.7
        for item in order_items(rng, ids, m, plan, phase=phase):
            # A re-sent fact of an order's state is the same fact for the reminders; a
            # shipping notice re-sent under a new id is a new message by the contract.
            resend = item.type in ("order.placed", "order.paid", "order.cancelled")
            items.append(dataclasses.replace(item, resendable=resend))
    for _ in range(rng.choice([0, 1, 2])):
        at = when()
        data = CouponIssued(
            coupon_code=ids("CPN"),
            template_code="CHAOS-10OFF",
            campaign_code="CHAOS-WELCOME",
            member_id=m,
            valid_from=at,
            valid_until=at + 30 * DAY,
            occurred_at=at,
            kind="amount_off",
            value=1000,
            issued_via="campaign",
        )
        items.append(Item(ids("e"), "coupon.issued", m, at, data, phase=phase))
    if rng.random() < 0.2:
        at = when()
        data = MemberTierChanged(
            member_id=m,
            old_tier="bronze",
            new_tier="silver",
            reason="upgrade",
            points_multiplier=1.2,
            occurred_at=at,
        )
        items.append(Item(ids("e"), "member.tier_changed", m, at, data, phase=phase))
    if rng.random() < 0.3:
        at = when()
        stage = rng.choice(["easy_winback", "hard_winback", "cooling"])
        data = MemberLifecycleChanged(
            member_id=m, old_stage="active", new_stage=stage, as_of=at, paid_orders_count=2
        )
        items.append(Item(ids("e"), "member.lifecycle_changed", m, at, data, phase=phase))
    if rng.random() < 0.3:
        at = when()
        data = MemberCheckedIn(member_id=m, date=at.date(), streak_days=1, occurred_at=at)
        items.append(Item(ids("e"), "member.checked_in", m, at, data, phase=phase))
    items.sort(key=lambda item: item.at)
    return items


def member_stream(seed: int, members: int, base: datetime) -> Stream:
    """The points service's events for registered members: purchase credits (pending), sign-up
    and check-in credits, reversals of earnings (refunds) and of redemptions, releases, debits
    and expiries (which change no tier). Totals climb past the silver and gold thresholds of a
    lifetime_points ladder, and some fall back under them. Member ids are the stream's own, to
    be rewritten to those the member service gave."""
    rng = random.Random(seed)
    ids = _Ids(seed)
    per_key: list[list[Item]] = []
    keys = []
    for i in range(members):
        m = member_key(seed, i)
        keys.append(m)
        at = base - timedelta(days=30) + timedelta(minutes=rng.randint(0, 600))
        events: list[tuple[str, EventData]] = [
            points_event(
                ids, "credited", m, at, 100, status="available", rule="signup", reason="welcome"
            )
        ]
        total = 100
        for _ in range(rng.randint(1, 14)):
            at = later(rng, at, 30)
            roll = rng.random()
            if roll < 0.55 or total < 50:
                n = rng.choice([rng.randint(1, 200), rng.randint(100, 900), rng.randint(400, 2500)])
                order_id = ids("o")
                events.append(points_event(ids, "credited", m, at, n, order_id=order_id))
                total += n
                if rng.random() < 0.25:  # refunded soon after: the credit is taken back
                    at = later(rng, at, 2)
                    back = rng.randint(1, n)
                    events.append(points_event(ids, "reversed", m, at, back, order_id=order_id))
                    total -= back
            elif roll < 0.65:
                events.append(
                    points_event(
                        ids,
                        "credited",
                        m,
                        at,
                        5,
                        status="available",
                        rule="check_in",
                        reason="check-in",
                    )
                )
                total += 5
            elif roll < 0.75:
                back = rng.randint(1, max(total // 3, 1))
                events.append(points_event(ids, "reversed", m, at, back))
                total -= back
            elif roll < 0.82:
                n = rng.randint(1, 300)
                events.append(
                    points_event(
                        ids, "reversed", m, at, n, reverses="redeem", reason="redemption cancelled"
                    )
                )
            elif roll < 0.9:
                events.append(points_event(ids, "debited", m, at, rng.randint(1, 300)))
            elif roll < 0.95:
                events.append(points_event(ids, "released", m, at, rng.randint(1, 300)))
            else:
                events.append(points_event(ids, "expired", m, at, rng.randint(1, 50)))
        items = [Item(ids("e"), type_, m, data.occurred_at, data) for type_, data in events]
        per_key.append(with_balances(items))
    return _merge(per_key, keys, base)


# ---------------------------------------------------------------------------------------------
# Deliveries
# ---------------------------------------------------------------------------------------------


def queues(items: Sequence[Item]) -> list[list[Item]]:
    """Each key's items in their order (a member's, or a guest order's)."""
    by_key: dict[str, list[Item]] = {}
    for item in items:
        by_key.setdefault(item.member_id or item.order_id or item.event_id, []).append(item)
    return list(by_key.values())


def clean(stream: Stream) -> Delivery:
    return Delivery(list(stream.items))


def twice_with_duplicates(stream: Stream, seed: int, resend: bool = True) -> Delivery:
    """The whole stream twice, with random duplicates (the same event id again, later in the
    member's sequence) and, where `resend`, facts posted again under a new event id; members
    interleaved at random in each pass, each member's own events in their order. Phases stay
    apart: each phase goes out twice before the next."""
    rng = random.Random(seed * 7919 + 3)
    n = 0
    out: list[Item] = []
    duplicates = resent = 0
    for phase in sorted({item.phase for item in stream.items}):
        first: list[list[Item]] = []
        for queue in queues(stream.phase(phase)):
            queue = list(queue)
            for item in list(queue):
                roll = rng.random()
                if roll < 0.12:
                    queue.insert(rng.randint(queue.index(item) + 1, len(queue)), item)
                    duplicates += 1
                elif roll < 0.17 and resend and item.resendable:
                    n += 1
                    again = dataclasses.replace(item, event_id=f"x{seed}-{n:07d}")
                    queue.insert(rng.randint(queue.index(item) + 1, len(queue)), again)
                    resent += 1
            first.append(queue)
        second = interleave(rng, queues(stream.phase(phase)))
        out += interleave(rng, first) + second
        duplicates += len(second)
    return Delivery(out, duplicates, resent)


# ---------------------------------------------------------------------------------------------
# The broker
# ---------------------------------------------------------------------------------------------

Rewrite = Callable[[Item], tuple[str | None, EventData]]


class Publisher(FactPublisher):
    """Publishes items as CloudEvents keyed by member (a guest order by its order id), through a
    per-database rewrite of ids and codes; keeps the end offset of every partition it wrote to,
    from the broker's acknowledgements."""

    def __init__(self, bootstrap: str, rewrite: Rewrite | None = None) -> None:
        super().__init__(bootstrap)
        self.rewrite = rewrite

    async def ensure_topics(self, topics: Iterable[str]) -> None:  # type: ignore[override]
        await ensure_topics(self.bootstrap, list(topics), PARTITIONS)

    def encode(self, item: Item) -> tuple[str, bytes, bytes]:
        member_id, data = (item.member_id, item.data)
        if self.rewrite is not None:
            member_id, data = self.rewrite(item)
        key = member_id or item.order_id or item.event_id
        event = make_event(
            item.type,
            data,
            subject=member_id,
            source="loyalty/chaos",
            time=item.at,
            key=key,
            event_id=item.event_id,
        )
        return event.topic, key.encode(), event.encode()


async def consumed_everything(
    bootstrap: str, group: str, topics: Iterable[str], ends: dict[TopicPartition, int]
) -> bool:
    """The group has committed offsets at the end of every partition published to."""
    committed = await committed_offsets(bootstrap, group, topics)
    return all(committed.get(tp, 0) >= end for tp, end in ends.items())
