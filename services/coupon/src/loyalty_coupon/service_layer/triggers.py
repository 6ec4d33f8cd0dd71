"""Applies consumed events a batch at a time: campaign triggers issue coupons, a paid order
redeems the coupons it names, a cancelled or fully refunded order releases its coupons."""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any

from loyalty_shared.db import insert_many
from loyalty_shared.events import Event
from loyalty_shared.ids import monotonic_ulid
from loyalty_shared.kafka import Handlers, add_to_outbox
from loyalty_shared.service import Runtime
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ..adapters.store import load_campaigns
from ..adapters.tables import coupon_redemptions
from ..domain.campaigns import Fact, GrantRequest, fact_matches, trigger_key
from . import coupon_events
from .issuing import grant_campaigns

# Which campaign trigger types each consumed fact may set off.
_TRIGGERS_OF = {
    "member.registered": ("member.registered",),
    "order.paid": ("first_order", "nth_order"),
    "segment.entered": ("segment.entered",),
    "tier_changed": ("tier_changed",),
    "checkin_streak": ("checkin_streak",),
}


def fact_of(event: Event[Any]) -> Fact | None:
    """The campaign-relevant fact in an event, named so that a redelivery under another event
    id is still the same fact (a member registers once, an order is paid once...)."""
    d = event.data
    if event.type == "member.registered":
        return Fact("member.registered", d.member_id, d.registered_at, "registered", event.id)
    if event.type == "order.paid":
        if not d.member_id or d.paid_order_count is None:
            return None  # guest orders trigger nothing
        return Fact(
            "order.paid",
            d.member_id,
            d.occurred_at,
            f"order:{d.order_id}",
            event.id,
            paid_order_count=d.paid_order_count,
        )
    if event.type == "segment.entered":
        return Fact(
            "segment.entered",
            d.member_id,
            d.as_of,
            f"segment:{d.segment_code}:{d.as_of.isoformat()}",
            event.id,
            segment_code=d.segment_code,
        )
    if event.type == "member.tier_changed":
        if d.reason == "downgrade":
            return None  # tier offers celebrate reaching a tier, not falling into one
        return Fact(
            "tier_changed",
            d.member_id,
            d.occurred_at,
            f"tier:{d.new_tier}:{d.occurred_at.isoformat()}",
            event.id,
            tier=d.new_tier,
        )
    if event.type == "member.checked_in":
        return Fact(
            "checkin_streak",
            d.member_id,
            d.occurred_at,
            f"checkin:{d.date.isoformat()}",
            event.id,
            streak_days=d.streak_days,
        )
    return None


async def on_triggers(runtime: Runtime, conn: AsyncConnection, events: list[Event[Any]]) -> None:
    facts = [f for f in (fact_of(e) for e in events) if f is not None]
    if not facts:
        return
    wanted = {t for f in facts for t in _TRIGGERS_OF[f.trigger_type]}
    campaigns = await load_campaigns(conn, trigger_types=wanted)
    requests = [
        GrantRequest(c.code, f.member_id, trigger_key(c, f), "campaign", event_id=f.event_id)
        for f in facts
        for c in campaigns.values()
        if fact_matches(c, f)
    ]
    await grant_campaigns(conn, requests, runtime.clock.now())


async def on_order_paid(runtime: Runtime, conn: AsyncConnection, events: list[Event[Any]]) -> None:
    await redeem_named_coupons(conn, events, runtime.clock.now())
    await on_triggers(runtime, conn, events)


async def redeem_named_coupons(
    conn: AsyncConnection, events: list[Event[Any]], now: datetime
) -> None:
    """A shop that does not call `POST /v1/redemptions` still uses coupons: `order.paid` names
    them. A coupon the member owns, unused and valid at the order's time, is redeemed by it.

    As if the events came one by one: when several orders of the batch name one coupon, the
    first that may redeem it does (one statement per round, a code at most once a round)."""
    namings: list[tuple[str, str, str, datetime]] = []
    for e in events:
        for code in dict.fromkeys(e.data.coupon_codes):
            if e.data.member_id:
                namings.append((code, e.data.member_id, e.data.order_id, e.data.occurred_at))
    rows: list[Any] = []
    while namings:
        this_round: dict[str, tuple[str, str, str, datetime]] = {}
        later = []
        for naming in namings:
            if naming[0] in this_round:
                later.append(naming)
            else:
                this_round[naming[0]] = naming
        rows += await _redeem(conn, list(this_round.values()))
        namings = later
    if not rows:
        return
    await insert_many(
        conn,
        coupon_redemptions,
        [
            {
                "redemption_id": r.redemption_id,
                "coupon_code": r.coupon_code,
                "member_id": r.member_id,
                "order_id": r.order_id,
                "discount_minor": None,
                "status": "redeemed",
                "source": "order_paid",
                "created_at": now,
            }
            for r in rows
        ],
    )
    await add_to_outbox(
        conn,
        [
            coupon_events.redeemed(
                r,
                redemption_id=r.redemption_id,
                order_id=r.order_id,
                discount_minor=None,
                now=r.redeemed_at,
            )
            for r in rows
        ],
    )


async def _redeem(
    conn: AsyncConnection, namings: list[tuple[str, str, str, datetime]]
) -> list[Any]:
    """Redeem coupons for (code, member, order, order time), each code named once."""
    codes, members, orders, times = (list(column) for column in zip(*namings, strict=True))
    return list(
        (
            await conn.execute(
                text(
                    "UPDATE coupons c SET status = 'redeemed', order_id = x.order_id, "
                    "redeemed_at = x.at, redemption_id = x.rid "
                    "FROM unnest(CAST(:c AS text[]), CAST(:m AS text[]), CAST(:o AS text[]), "
                    "CAST(:t AS timestamptz[]), CAST(:r AS text[])) AS x(code, member_id, "
                    "order_id, at, rid) "
                    "WHERE c.coupon_code = x.code AND c.member_id = x.member_id "
                    "AND c.status = 'issued' AND c.valid_from <= x.at AND c.valid_until > x.at "
                    # An order redeems a coupon once: the same order.paid posted again under a
                    # new event id after the order's cancel released the coupon takes nothing.
                    "AND NOT EXISTS (SELECT 1 FROM coupon_redemptions r "
                    "WHERE r.coupon_code = x.code AND r.order_id = x.order_id) "
                    "RETURNING c.*"
                ),
                {
                    "c": codes,
                    "m": members,
                    "o": orders,
                    "t": times,
                    "r": [monotonic_ulid() for _ in codes],
                },
            )
        ).all()
    )


async def on_order_undone(
    runtime: Runtime, conn: AsyncConnection, events: list[Event[Any]]
) -> None:
    """Release the coupons of cancelled and fully refunded orders while they are still valid."""
    reasons: dict[str, str] = {}
    for e in events:
        if e.type == "order.cancelled":
            reasons[e.data.order_id] = "order_cancelled"
        elif e.type == "order.refunded" and e.data.fully_refunded:
            reasons[e.data.order_id] = "order_refunded"
    if reasons:
        await release_orders(conn, reasons, runtime.clock.now())


async def release_orders(conn: AsyncConnection, reasons: dict[str, str], now: datetime) -> int:
    orders = sorted(reasons)
    rows = (
        await conn.execute(
            text(
                "WITH due AS (SELECT coupon_code, order_id, redemption_id FROM coupons "
                " WHERE order_id = ANY(CAST(:o AS text[])) AND status = 'redeemed' "
                " AND valid_until > :now ORDER BY coupon_code FOR UPDATE) "
                "UPDATE coupons c SET status = 'issued', order_id = NULL, redemption_id = NULL, "
                "redeemed_at = NULL FROM due WHERE c.coupon_code = due.coupon_code "
                "RETURNING c.*, due.order_id AS released_order_id, "
                "due.redemption_id AS released_redemption_id"
            ),
            {"o": orders, "now": now},
        )
    ).all()
    if not rows:
        return 0
    await conn.execute(
        text(
            "UPDATE coupon_redemptions SET status = 'released', released_at = :now, "
            "release_reason = x.reason FROM unnest(CAST(:r AS text[]), CAST(:why AS text[])) "
            "AS x(rid, reason) WHERE redemption_id = x.rid AND status = 'redeemed'"
        ),
        {
            "now": now,
            "r": [r.released_redemption_id for r in rows],
            "why": [reasons[r.released_order_id] for r in rows],
        },
    )
    await add_to_outbox(
        conn,
        [
            coupon_events.released(
                r,
                order_id=r.released_order_id,
                redemption_id=r.released_redemption_id,
                reason=reasons[r.released_order_id],
                at=now,
            )
            for r in rows
        ],
    )
    return len(rows)


def handlers(runtime: Runtime) -> Handlers:
    h = Handlers()
    triggers = partial(on_triggers, runtime)
    for event_type in (
        "member.registered",
        "segment.entered",
        "member.tier_changed",
        "member.checked_in",
    ):
        h.on(event_type)(triggers)
    h.on("order.paid")(partial(on_order_paid, runtime))
    undone = partial(on_order_undone, runtime)
    h.on("order.cancelled")(undone)
    h.on("order.refunded")(undone)
    return h
