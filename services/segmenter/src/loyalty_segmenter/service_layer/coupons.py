"""Keeps what campaign results need from `coupon.*` events: who got which coupon of which
campaign, when, and whether and on which order it was redeemed (a batch in two statements)."""

from __future__ import annotations

from typing import Any

from loyalty_shared.db import insert_many
from loyalty_shared.events import Event
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from ..adapters.tables import coupon_facts

COUPON_TYPES = ("coupon.issued", "coupon.redeemed", "coupon.released", "coupon.expired")
_COLUMNS = [c.name for c in coupon_facts.columns]


async def apply_coupon_events(conn: AsyncConnection, events: list[Event[Any]]) -> None:
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
