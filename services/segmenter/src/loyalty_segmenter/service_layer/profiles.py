"""Applies member, order and points events to profiles, a whole batch at a time.

For a batch: lock the profiles and order facts it touches, apply each event in memory (constant
work per event), recompute from facts only the profiles that need it, derive stage, weight, tags
and churn as of the clock, evaluate the segments for the touched members, then write profiles,
facts, memberships and the `loyalty.segments` events together.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from functools import partial
from typing import Any

from loyalty_shared.events import Event, make_event
from loyalty_shared.events.segments import MemberLifecycleChanged
from loyalty_shared.kafka import Handlers, add_to_outbox
from loyalty_shared.service import Runtime
from sqlalchemy.ext.asyncio import AsyncConnection

from ..adapters.profile_store import ProfileBatch
from ..config import profile_rules
from ..domain.profile import OrderFact, Profile, ProfileRules, StageChange
from .coupons import COUPON_TYPES, apply_coupon_events
from .segment_membership import SOURCE, evaluate_members

ORDER_TYPES = ("order.paid", "order.refunded", "order.cancelled")
MEMBER_TYPES = ("member.registered", "member.erased", "member.tier_changed")
POINTS_TYPES = (
    "points.credited",
    "points.released",
    "points.debited",
    "points.reversed",
    "points.expired",
    "points.adjusted",
)


def lifecycle_event(change: StageChange, trigger: str | None) -> Event[Any]:
    return make_event(
        "member.lifecycle_changed",
        MemberLifecycleChanged(
            member_id=change.member_id,
            old_stage=change.old_stage,
            new_stage=change.new_stage,
            as_of=change.as_of,
            last_order_at=change.last_order_at,
            paid_orders_count=change.paid_orders_count,
            trigger_event_id=trigger,
        ),
        subject=change.member_id,
        source=SOURCE,
        time=change.as_of,
    )


async def settle(
    conn: AsyncConnection,
    batch: ProfileBatch,
    touched: list[Profile],
    as_of: datetime,
    rules: ProfileRules,
    triggers: dict[str, str] | None = None,
) -> dict[str, int]:
    """Derive the touched profiles as of a time, evaluate their segments, write everything."""
    await batch.rescan(as_of)
    triggers = triggers or {}
    changes = [c for p in touched if (c := p.derive(as_of, rules)) is not None]
    await add_to_outbox(conn, [lifecycle_event(c, triggers.get(c.member_id)) for c in changes])
    counts = await evaluate_members(conn, touched, as_of, triggers)
    await batch.flush()
    return {"stage_changes": len(changes), **counts}


def _order_fact(data: Any) -> OrderFact:
    categories: dict[str, int] = defaultdict(int)
    for line in data.lines:
        categories[line.category] += line.quantity * line.unit_price_minor
    return OrderFact(
        order_id=data.order_id,
        member_id=data.member_id,
        occurred_at=data.occurred_at,
        paid_minor=data.paid_minor,
        channel=data.channel,
        store_id=data.store_id,
        currency=data.currency,
        categories=dict(categories),
        coupon_codes=list(data.coupon_codes),
    )


def _points_kind(event: Event[Any]) -> str:
    name = event.type.removeprefix("points.")
    if name == "reversed":
        return f"reversed_{event.data.reverses}"
    return name


def _signed_points(event: Event[Any]) -> int:
    return int(event.data.points)


async def apply_batch(runtime: Runtime, conn: AsyncConnection, events: list[Event[Any]]) -> None:
    """The consumer's handler for every event type the segmenter reads."""
    if events and events[0].type in COUPON_TYPES:
        await apply_coupon_events(conn, events)
        return
    now = runtime.clock.now()
    batch = ProfileBatch(conn, now)
    member_ids = [m for e in events if (m := getattr(e.data, "member_id", None))]
    await batch.load(member_ids)
    await batch.load_orders(e.data.order_id for e in events if e.type in ORDER_TYPES)
    triggers: dict[str, str] = {}
    for event in events:
        apply_event(batch, event, now)
        member_id = getattr(event.data, "member_id", None)
        if member_id:
            triggers[member_id] = event.id
    touched = [batch.profiles[m] for m in sorted(set(member_ids))]
    await settle(conn, batch, touched, now, profile_rules(), triggers)


def apply_event(batch: ProfileBatch, event: Event[Any], now: datetime) -> None:
    """One event's effect on the profiles and facts in hand (no I/O)."""
    data = event.data
    member_id: str | None = getattr(data, "member_id", None)
    profile = batch.profiles.get(member_id) if member_id else None
    if event.type == "order.paid":
        if data.order_id in batch.orders:
            return  # the same order paid twice (another event id): it counts once
        fact = _order_fact(data)
        batch.order_changed(fact)
        if profile is not None:
            profile.count_order(fact, now, +1)
    elif event.type in ("order.refunded", "order.cancelled"):
        old = batch.orders.get(data.order_id)
        if old is None:
            return  # an order paid before the segmenter was listening: nothing to correct
        new = OrderFact(**{**old.__dict__})
        if event.type == "order.refunded":
            new.refunded_minor = max(old.refunded_minor, data.refunded_total_minor)
        else:
            new.cancelled = True
        if (new.refunded_minor, new.cancelled) == (old.refunded_minor, old.cancelled):
            return
        batch.order_changed(new)
        owner = batch.profiles.get(old.member_id) if old.member_id else None
        if owner is not None:
            owner.count_order(old, now, -1)
            owner.count_order(new, now, +1)
    elif profile is None:
        return
    elif event.type == "member.registered":
        profile.registered_at = data.registered_at
        profile.tier = profile.tier or data.tier
    elif event.type == "member.erased":
        profile.erased_at = data.occurred_at
    elif event.type == "member.tier_changed":
        profile.tier = data.new_tier
    elif event.type in POINTS_TYPES:
        profile.points_available = data.available_after
        profile.points_pending = data.pending_after
        batch.points_moved(event.id, data.occurred_at, _points_kind(event), _signed_points(event))


def handlers(runtime: Runtime) -> Handlers:
    registry = Handlers()
    apply = partial(apply_batch, runtime)
    for event_type in (*ORDER_TYPES, *MEMBER_TYPES, *POINTS_TYPES, *COUPON_TYPES):
        registry.on(event_type)(apply)
    return registry
