"""Issuing coupons: campaign grants for a batch of members, and single coupons (exchanges).

Every path locks the members it issues to (per-member limits), then the campaigns and the
templates it takes from (budget and stock), always in that order and sorted, decides in memory,
and writes grants, coupons, counters and `coupon.issued` events with one statement per table;
a member held out of a campaign gets no coupon but a `coupon.holdout_assigned` event, once per
recorded grant.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from loyalty_shared.kafka import add_to_outbox
from sqlalchemy.ext.asyncio import AsyncConnection

from ..adapters.store import (
    CouponRow,
    count_issued,
    insert_coupons,
    insert_grants,
    load_campaigns,
    load_granted,
    load_held,
    load_templates,
    lock_members,
)
from ..domain.campaigns import Allocator, Grant, GrantRequest
from . import coupon_events


async def grant_campaigns(
    conn: AsyncConnection, requests: list[GrantRequest], now: datetime
) -> list[Grant]:
    """Grant each request its campaign's coupons, at most once per (campaign, member, key)."""
    if not requests:
        return []
    await lock_members(conn, (r.member_id for r in requests))
    campaigns = await load_campaigns(
        conn, codes={r.campaign_code for r in requests}, for_update=True
    )
    requests = [r for r in requests if r.campaign_code in campaigns]
    template_codes = {t for c in campaigns.values() for t in c.template_codes}
    loaded = await load_templates(conn, template_codes, for_update=True)
    allocator = Allocator(
        campaigns=campaigns,
        templates={code: lt.template for code, lt in loaded.items()},
        stock_left={code: lt.stock_left for code, lt in loaded.items()},
        held=await load_held(conn, (r.member_id for r in requests), template_codes),
        granted=await load_granted(conn, requests),
    )
    grants = [allocator.grant(r, now) for r in requests]
    rows = [
        CouponRow(
            member_id=g.request.member_id,
            new=new,
            campaign_code=g.request.campaign_code,
            via=g.request.via,
            issued_at=now,
            trigger_key=g.request.key,
            trigger_event_id=g.request.event_id,
            job_id=g.request.job_id,
        )
        for g in grants
        for new in g.coupons
    ]
    recorded = await insert_grants(conn, grants, now)
    # The control group, once per holdout record: a grant the unique key refused (the same
    # fact again) was not recorded here, so it says nothing again.
    await add_to_outbox(
        conn,
        [
            coupon_events.holdout_assigned(g.request, campaigns[g.request.campaign_code], now)
            for g in grants
            if g.outcome == "holdout"
            and (g.request.campaign_code, g.request.member_id, g.request.key) in recorded
        ],
    )
    await write_coupons(conn, rows, allocator.templates, now)
    return grants


async def write_coupons(
    conn: AsyncConnection, rows: list[CouponRow], templates: dict, now: datetime
) -> None:
    if not rows:
        return
    await insert_coupons(conn, rows)
    await count_issued(
        conn,
        dict(Counter(r.new.template_code for r in rows)),
        dict(Counter(r.campaign_code for r in rows if r.campaign_code)),
    )
    await add_to_outbox(
        conn, [coupon_events.issued(r, templates[r.new.template_code], now) for r in rows]
    )
