"""Keeps what campaign results need from `coupon.*` events: who got which coupon of which
campaign, when, and whether and on which order it was redeemed (a batch in two statements);
and who was held out of which campaign, when (`coupon.holdout_assigned`, one statement)."""

from __future__ import annotations

from typing import Any

from loyalty_shared.db import insert_many
from loyalty_shared.events import Event
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from ..adapters.tables import campaign_holdouts, coupon_facts

HOLDOUT_TYPE = "coupon.holdout_assigned"
COUPON_TYPES = (
    "coupon.issued",
    "coupon.redeemed",
    "coupon.released",
    "coupon.expired",
    HOLDOUT_TYPE,
)
_COLUMNS = [c.name for c in coupon_facts.columns]


async def apply_coupon_events(conn: AsyncConnection, events: list[Event[Any]]) -> None:
    await apply_holdouts(conn, [e for e in events if e.type == HOLDOUT_TYPE])
    await apply_coupon_facts(conn, [e for e in events if e.type != HOLDOUT_TYPE])


async def apply_holdouts(conn: AsyncConnection, events: list[Event[Any]]) -> None:
    """One row per (campaign, member, grant key): the coupon service says it once per holdout
    record; should the same record come again under another event id, the first one stays."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for event in events:
        d = event.data
        rows.setdefault(
            (d.campaign_code, d.member_id, d.grant_key),
            {
                "campaign_code": d.campaign_code,
                "member_id": d.member_id,
                "grant_key": d.grant_key,
                "trigger": d.trigger,
                "assigned_via": d.assigned_via,
                "assigned_at": d.occurred_at,
                "event_id": event.id,
            },
        )
    await insert_many(
        conn,
        campaign_holdouts,
        [rows[key] for key in sorted(rows)],
        on_conflict="ON CONFLICT (campaign_code, member_id, grant_key) DO NOTHING",
    )


async def apply_coupon_facts(conn: AsyncConnection, events: list[Event[Any]]) -> None:
    if not events:
        return
    codes = sorted({e.data.coupon_code for e in events})
    facts: dict[str, dict[str, Any]] = {
        row.coupon_code: dict(row._mapping)
        for row in await conn.execute(
            select(coupon_facts).where(coupon_facts.c.coupon_code.in_(codes)).with_for_update()
        )
    }
    for event in events:
        data = event.data
        fact = facts.setdefault(
            data.coupon_code,
            {name: None for name in _COLUMNS}
            | {
                "coupon_code": data.coupon_code,
                "template_code": data.template_code,
                "member_id": data.member_id,
            },
        )
        fact["campaign_code"] = fact["campaign_code"] or data.campaign_code
        if event.type == "coupon.issued":
            fact["issued_at"] = data.occurred_at
            fact["issued_via"] = data.issued_via
        elif event.type == "coupon.redeemed":
            fact.update(
                redeemed_at=data.occurred_at,
                order_id=data.order_id,
                discount_minor=data.discount_minor,
                released_at=None,
            )
        elif event.type == "coupon.released":
            fact["released_at"] = data.occurred_at
        elif event.type == "coupon.expired":
            fact["expired_at"] = data.occurred_at
    rows = [facts[code] for code in codes]
    assignments = ", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS if c != "coupon_code")
    await insert_many(
        conn,
        coupon_facts,
        rows,
        on_conflict=f"ON CONFLICT (coupon_code) DO UPDATE SET {assignments}",
    )
