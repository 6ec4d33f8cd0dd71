"""Set-based reads and writes of templates, campaigns, grants and coupons (one statement per
table per batch), and the member locks that keep per-member limits true under concurrency."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from loyalty_shared.db import insert_many
from sqlalchemy import Row, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from ..domain.campaigns import Campaign, Grant, GrantRequest, NewCoupon
from ..domain.templates import CouponTemplate, new_coupon_code
from .tables import campaigns, coupon_templates, coupons

# A class id of our own for two-key advisory locks, apart from the platform's one-key locks.
_MEMBER_LOCK_CLASS = 7301


async def lock_members(conn: AsyncConnection, member_ids: Iterable[str]) -> None:
    """Serialise the transactions that change one member's coupons (per-member limits), in a
    fixed order so two batches never wait on each other in a cycle."""
    ids = sorted(set(member_ids))
    if not ids:
        return
    await conn.execute(
        text(
            "SELECT pg_advisory_xact_lock(:cls, hashtext(m)) FROM "
            "(SELECT m FROM unnest(CAST(:ids AS text[])) AS m ORDER BY m OFFSET 0) AS s"
        ),
        {"cls": _MEMBER_LOCK_CLASS, "ids": ids},
    )


def template_from_row(row: Row[Any] | Any) -> CouponTemplate:
    return CouponTemplate(
        code=row.code,
        name=row.name,
        kind=row.kind,
        value=row.value,
        min_spend_minor=row.min_spend_minor,
        max_discount_minor=row.max_discount_minor,
        gift_sku=row.gift_sku,
        categories=tuple(row.categories or ()),
        valid_days=row.valid_days,
        starts_at=row.starts_at,
        ends_at=row.ends_at,
        per_member_limit=row.per_member_limit,
        stock=row.stock,
        points_cost=row.points_cost,
        currency=row.currency,
    )


def campaign_from_row(row: Row[Any] | Any) -> Campaign:
    return Campaign(
        code=row.code,
        template_codes=tuple(row.template_codes),
        trigger_type=row.trigger_type,
        trigger=dict(row.trigger),
        starts_at=row.starts_at,
        ends_at=row.ends_at,
        budget=row.budget,
        issued_count=row.issued_count,
        holdout_percent=float(row.holdout_percent),
        status=row.status,
    )


@dataclass
class LoadedTemplate:
    template: CouponTemplate
    issued_count: int

    @property
    def stock_left(self) -> int | None:
        if self.template.stock is None:
            return None
        return self.template.stock - self.issued_count


async def load_templates(
    conn: AsyncConnection, codes: Iterable[str], *, for_update: bool = False
) -> dict[str, LoadedTemplate]:
    wanted = sorted(set(codes))
    if not wanted:
        return {}
    query = (
        select(coupon_templates)
        .where(coupon_templates.c.code.in_(wanted))
        .order_by(coupon_templates.c.code)
    )
    if for_update:
        query = query.with_for_update()
    rows = (await conn.execute(query)).all()
    return {r.code: LoadedTemplate(template_from_row(r), r.issued_count) for r in rows}


async def load_campaigns(
    conn: AsyncConnection,
    *,
    codes: Iterable[str] | None = None,
    trigger_types: Iterable[str] | None = None,
    for_update: bool = False,
) -> dict[str, Campaign]:
    query = select(campaigns).order_by(campaigns.c.code)
    if codes is not None:
        query = query.where(campaigns.c.code.in_(sorted(set(codes))))
    if trigger_types is not None:
        query = query.where(
            campaigns.c.trigger_type.in_(sorted(set(trigger_types))),
            campaigns.c.status == "active",
        )
    if for_update:
        query = query.with_for_update()
    return {r.code: campaign_from_row(r) for r in (await conn.execute(query)).all()}


async def load_held(
    conn: AsyncConnection, member_ids: Iterable[str], template_codes: Iterable[str]
) -> dict[tuple[str, str], int]:
    """How many coupons of each template each member has had (any status)."""
    members, templates = sorted(set(member_ids)), sorted(set(template_codes))
    if not members or not templates:
        return {}
    rows = await conn.execute(
        text(
            "SELECT member_id, template_code, count(*) AS n FROM coupons "
            "WHERE member_id = ANY(CAST(:m AS text[])) AND template_code = ANY(CAST(:t AS text[])) "
            "GROUP BY member_id, template_code"
        ),
        {"m": members, "t": templates},
    )
    return {(r.member_id, r.template_code): r.n for r in rows}


async def load_granted(
    conn: AsyncConnection, requests: Iterable[GrantRequest]
) -> set[tuple[str, str, str]]:
    keys = {(r.campaign_code, r.member_id, r.key) for r in requests}
    if not keys:
        return set()
    c, m, k = (list(x) for x in zip(*sorted(keys), strict=True))
    rows = await conn.execute(
        text(
            "SELECT g.campaign_code, g.member_id, g.trigger_key FROM campaign_grants g "
            "JOIN unnest(CAST(:c AS text[]), CAST(:m AS text[]), CAST(:k AS text[])) "
            "AS x(c, m, k) ON g.campaign_code = x.c AND g.member_id = x.m AND g.trigger_key = x.k"
        ),
        {"c": c, "m": m, "k": k},
    )
    return {(r.campaign_code, r.member_id, r.trigger_key) for r in rows}


@dataclass
class CouponRow:
    """A coupon about to be written; the code may change if it clashes with an existing one."""

    member_id: str
    new: NewCoupon
    campaign_code: str | None
    via: str
    issued_at: datetime
    trigger_key: str | None = None
    trigger_event_id: str | None = None
    job_id: str | None = None
    exchange_id: str | None = None
    points_cost: int | None = None
    coupon_code: str = ""

    def as_row(self) -> dict[str, Any]:
        return {
            "coupon_code": self.coupon_code,
            "template_code": self.new.template_code,
            "campaign_code": self.campaign_code,
            "member_id": self.member_id,
            "status": "issued",
            "valid_from": self.new.valid_from,
            "valid_until": self.new.valid_until,
            "issued_at": self.issued_at,
            "issued_via": self.via,
            "trigger_key": self.trigger_key,
            "trigger_event_id": self.trigger_event_id,
            "job_id": self.job_id,
            "exchange_id": self.exchange_id,
            "points_cost": self.points_cost,
        }


async def insert_coupons(conn: AsyncConnection, rows: list[CouponRow]) -> None:
    """Insert coupons with fresh readable codes; a code that exists already is drawn again."""
    pending = rows
    for _ in range(10):
        if not pending:
            return
        for row in pending:
            row.coupon_code = new_coupon_code()
        codes = [r.coupon_code for r in pending]
        if len(set(codes)) != len(codes):
            continue  # a clash inside the batch: draw again
        result = await insert_many(
            conn,
            coupons,
            [r.as_row() for r in pending],
            on_conflict="ON CONFLICT (coupon_code) DO NOTHING",
            returning="RETURNING coupon_code",
        )
        written = {code for (code,) in result}
        pending = [r for r in pending if r.coupon_code not in written]
    raise RuntimeError("could not draw unique coupon codes")  # pragma: no cover


async def count_issued(
    conn: AsyncConnection,
    template_counts: dict[str, int],
    campaign_counts: dict[str, int],
) -> None:
    """Add what a batch issued to the templates' and campaigns' counters (stock and budget);
    the check constraints refuse any counter that would pass its limit."""
    if template_counts:
        codes = sorted(template_counts)
        await conn.execute(
            text(
                "UPDATE coupon_templates t SET issued_count = t.issued_count + x.n "
                "FROM unnest(CAST(:c AS text[]), CAST(:n AS bigint[])) AS x(code, n) "
                "WHERE t.code = x.code"
            ),
            {"c": codes, "n": [template_counts[c] for c in codes]},
        )
    if campaign_counts:
        codes = sorted(campaign_counts)
        await conn.execute(
            text(
                "UPDATE campaigns t SET issued_count = t.issued_count + x.n "
                "FROM unnest(CAST(:c AS text[]), CAST(:n AS bigint[])) AS x(code, n) "
                "WHERE t.code = x.code"
            ),
            {"c": codes, "n": [campaign_counts[c] for c in codes]},
        )


async def insert_grants(
    conn: AsyncConnection, grants: list[Grant], now: datetime
) -> set[tuple[str, str, str]]:
    """Record the grants (duplicates excluded); answers the (campaign, member, key) receipts
    this statement actually inserted, so that what follows a record happens once with it."""
    rows = [
        {
            "campaign_code": g.request.campaign_code,
            "member_id": g.request.member_id,
            "trigger_key": g.request.key,
            "outcome": g.outcome,
            "coupons_issued": len(g.coupons),
            "reasons": "{" + ",".join(f'"{r}"' for r in g.reasons) + "}",
            "via": g.request.via,
            "event_id": g.request.event_id,
            "job_id": g.request.job_id,
            "created_at": now,
        }
        for g in grants
        if g.outcome != "duplicate"
    ]
    # `reasons` is an array per row: unnest cannot take an array of arrays, so it travels as
    # its text form and is cast back.
    if not rows:
        return set()
    result = await conn.execute(
        text(
            "INSERT INTO campaign_grants (campaign_code, member_id, trigger_key, outcome, "
            "coupons_issued, reasons, via, event_id, job_id, created_at) "
            "SELECT c, m, k, o, n, CAST(r AS text[]), v, e, j, t FROM unnest("
            "CAST(:c AS text[]), CAST(:m AS text[]), CAST(:k AS text[]), CAST(:o AS text[]), "
            "CAST(:n AS int[]), CAST(:r AS text[]), CAST(:v AS text[]), CAST(:e AS text[]), "
            "CAST(:j AS text[]), CAST(:t AS timestamptz[])) AS x(c, m, k, o, n, r, v, e, j, t) "
            "ON CONFLICT DO NOTHING RETURNING campaign_code, member_id, trigger_key"
        ),
        {
            "c": [r["campaign_code"] for r in rows],
            "m": [r["member_id"] for r in rows],
            "k": [r["trigger_key"] for r in rows],
            "o": [r["outcome"] for r in rows],
            "n": [r["coupons_issued"] for r in rows],
            "r": [r["reasons"] for r in rows],
            "v": [r["via"] for r in rows],
            "e": [r["event_id"] for r in rows],
            "j": [r["job_id"] for r in rows],
            "t": [r["created_at"] for r in rows],
        },
    )
    return {(r.campaign_code, r.member_id, r.trigger_key) for r in result}
