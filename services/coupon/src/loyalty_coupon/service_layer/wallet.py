"""Use cases at the checkout: a member's wallet, validating coupons for a cart, redeeming one."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from loyalty_shared.errors import Conflict, NotFound, ProblemError
from loyalty_shared.ids import monotonic_ulid
from loyalty_shared.kafka import add_to_outbox
from loyalty_shared.paging import decode_cursor, encode_cursor, invalid_cursor
from loyalty_shared.service import Runtime
from sqlalchemy import and_, or_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from ..adapters.store import template_from_row
from ..adapters.tables import coupon_redemptions, coupon_templates, coupons
from ..domain.templates import Cart, CouponState, CouponTemplate, Verdict, judge
from . import coupon_events


def effective_status(row: Any, now: datetime) -> str:
    """`issued` past its end is `expired` at once, before the expire job gets to it."""
    if row.status == "issued" and row.valid_until <= now:
        return "expired"
    return str(row.status)


def coupon_view(row: Any, now: datetime) -> dict[str, Any]:
    return {
        "coupon_code": row.coupon_code,
        "template_code": row.template_code,
        "campaign_code": row.campaign_code,
        "status": effective_status(row, now),
        "valid_from": row.valid_from,
        "valid_until": row.valid_until,
        "issued_at": row.issued_at,
        "issued_via": row.issued_via,
        "kind": row.kind,
        "value": row.value,
        "min_spend_minor": row.min_spend_minor,
        "max_discount_minor": row.max_discount_minor,
        "gift_sku": row.gift_sku,
        "categories": list(row.categories or ()),
        "name": row.name,
        "order_id": row.order_id,
        "redeemed_at": row.redeemed_at,
    }


def _encode_cursor(at: datetime, code: str) -> str:
    return encode_cursor(at.isoformat(), code)


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    at, code = decode_cursor(cursor, 2)
    try:
        return datetime.fromisoformat(at), code
    except ValueError:
        raise invalid_cursor() from None


_WITH_TEMPLATE = coupons.join(coupon_templates, coupons.c.template_code == coupon_templates.c.code)
_COLUMNS = [
    *coupons.c,
    coupon_templates.c.kind,
    coupon_templates.c.value,
    coupon_templates.c.min_spend_minor,
    coupon_templates.c.max_discount_minor,
    coupon_templates.c.gift_sku,
    coupon_templates.c.categories,
    coupon_templates.c.name,
]


async def wallet(
    runtime: Runtime, member_id: str, status: str | None, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    now = runtime.clock.now()
    query = select(*_COLUMNS).select_from(_WITH_TEMPLATE).where(coupons.c.member_id == member_id)
    if status == "issued":
        query = query.where(coupons.c.status == "issued", coupons.c.valid_until > now)
    elif status == "expired":
        query = query.where(
            or_(
                coupons.c.status == "expired",
                and_(coupons.c.status == "issued", coupons.c.valid_until <= now),
            )
        )
    elif status == "redeemed":
        query = query.where(coupons.c.status == "redeemed")
    if cursor:
        at, code = _decode_cursor(cursor)
        query = query.where(
            or_(
                coupons.c.issued_at < at,
                and_(coupons.c.issued_at == at, coupons.c.coupon_code < code),
            )
        )
    query = query.order_by(coupons.c.issued_at.desc(), coupons.c.coupon_code.desc()).limit(
        limit + 1
    )
    async with runtime.reading() as conn:
        rows = (await conn.execute(query)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = _encode_cursor(rows[-1].issued_at, rows[-1].coupon_code) if more else None
    return [coupon_view(r, now) for r in rows], next_cursor


async def get_coupon(runtime: Runtime, code: str) -> dict[str, Any]:
    async with runtime.reading() as conn:
        row = (
            await conn.execute(
                select(*_COLUMNS).select_from(_WITH_TEMPLATE).where(coupons.c.coupon_code == code)
            )
        ).first()
    if row is None:
        raise NotFound(f"no coupon '{code}'")
    return {"member_id": row.member_id, **coupon_view(row, runtime.clock.now())}


async def _load(
    conn: AsyncConnection, codes: list[str]
) -> dict[str, tuple[CouponState, CouponTemplate]]:
    rows = (
        await conn.execute(
            select(coupons, coupon_templates)
            .select_from(_WITH_TEMPLATE)
            .where(coupons.c.coupon_code.in_(codes))
        )
    ).all()
    return {
        r.coupon_code: (
            CouponState(r.coupon_code, r.member_id, r.status, r.valid_from, r.valid_until),
            template_from_row(r),
        )
        for r in rows
    }


async def validate(
    runtime: Runtime, member_id: str, cart: Cart, coupon_codes: list[str]
) -> list[dict[str, Any]]:
    now = runtime.clock.now()
    async with runtime.reading() as conn:
        found = await _load(conn, coupon_codes)
    items = []
    for code in coupon_codes:
        coupon, template = found.get(code, (None, None))
        verdict = judge(coupon, template, member_id=member_id, cart=cart, now=now)
        item: dict[str, Any] = {
            "coupon_code": code,
            "valid": verdict.valid,
            "discount_minor": verdict.discount_minor,
        }
        if template is not None:
            item["kind"] = template.kind
            if template.gift_sku:
                item["gift_sku"] = template.gift_sku
        if verdict.reason:
            item["reason"] = verdict.reason
            item["detail"] = verdict.detail
        items.append(item)
    return items


# The problem each refusal answers at redemption (contract §6 fixes the first three).
_REFUSALS: dict[str, tuple[int, str]] = {
    "already_redeemed": (409, "coupon_already_redeemed"),
    "expired": (422, "coupon_expired"),
    "not_owned": (422, "coupon_not_owned"),
    "not_yet_valid": (422, "coupon_not_yet_valid"),
    "below_min_spend": (422, "coupon_min_spend_not_met"),
    "wrong_category": (422, "coupon_not_applicable"),
}


def _refuse(verdict: Verdict, code: str, **extra: Any) -> ProblemError:
    if verdict.reason == "not_found":
        return NotFound(f"no coupon '{code}'")
    status, problem = _REFUSALS[verdict.reason or ""]
    return ProblemError(status, problem, f"{code}: {verdict.detail}", **extra)


async def redeem(
    runtime: Runtime,
    *,
    coupon_code: str,
    member_id: str,
    order_id: str,
    cart: Cart | None,
) -> dict[str, Any]:
    """Single use under any concurrency: the conditional UPDATE is the only judge; of many
    concurrent requests exactly one finds the coupon `issued`, the others find it redeemed."""
    now = runtime.clock.now()
    async with runtime.transaction() as conn:
        found = (await _load(conn, [coupon_code])).get(coupon_code)
        coupon, template = found if found else (None, None)
        verdict = judge(
            coupon, template, member_id=member_id, cart=cart or Cart(total_minor=0), now=now
        )
        if cart is None and verdict.reason in ("below_min_spend", "wrong_category"):
            verdict = Verdict(True)  # no cart given: the checkout vouches for the terms
        if not verdict.valid:
            raise _refuse(verdict, coupon_code, **await _previous(conn, coupon_code, verdict))
        discount = verdict.discount_minor if cart is not None else None
        redemption_id = monotonic_ulid()
        row = (
            await conn.execute(
                text(
                    "UPDATE coupons SET status = 'redeemed', order_id = :o, redemption_id = :r, "
                    "redeemed_at = :now WHERE coupon_code = :c AND member_id = :m "
                    "AND status = 'issued' AND valid_from <= :now AND valid_until > :now "
                    "RETURNING *"
                ),
                {"o": order_id, "r": redemption_id, "now": now, "c": coupon_code, "m": member_id},
            )
        ).first()
        if row is None:  # another request redeemed it between our read and our update
            raise Conflict(
                "coupon_already_redeemed",
                f"{coupon_code}: the coupon was used already",
                **await _previous(conn, coupon_code, Verdict(False, reason="already_redeemed")),
            )
        await conn.execute(
            coupon_redemptions.insert().values(
                redemption_id=redemption_id,
                coupon_code=coupon_code,
                member_id=member_id,
                order_id=order_id,
                discount_minor=discount,
                status="redeemed",
                source="api",
                created_at=now,
            )
        )
        await add_to_outbox(
            conn,
            [
                coupon_events.redeemed(
                    row,
                    redemption_id=redemption_id,
                    order_id=order_id,
                    discount_minor=discount,
                    now=now,
                )
            ],
        )
    return {
        "redemption_id": redemption_id,
        "coupon_code": coupon_code,
        "member_id": member_id,
        "order_id": order_id,
        "discount_minor": discount,
        "status": "redeemed",
        "redeemed_at": now,
    }


async def _previous(conn: AsyncConnection, code: str, verdict: Verdict) -> dict[str, Any]:
    """For a coupon used already, the order that used it (a retrying checkout sees its own)."""
    if verdict.reason != "already_redeemed":
        return {}
    row = (
        await conn.execute(
            select(coupons.c.order_id, coupons.c.redemption_id).where(coupons.c.coupon_code == code)
        )
    ).first()
    if row is None:
        return {}
    return {"order_id": row.order_id, "redemption_id": row.redemption_id}
