"""Builds the `coupon.*` events this service writes to its outbox."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from loyalty_shared.events import Event, make_event
from loyalty_shared.events.coupons import (
    CouponExpired,
    CouponExpiringSoon,
    CouponHoldoutAssigned,
    CouponIssued,
    CouponRedeemed,
    CouponReleased,
)

from ..adapters.store import CouponRow
from ..domain.campaigns import Campaign, GrantRequest
from ..domain.templates import CouponTemplate

SOURCE = "loyalty/coupon"


def _common(row: Any) -> dict[str, Any]:
    return {
        "coupon_code": row.coupon_code,
        "template_code": row.template_code,
        "campaign_code": row.campaign_code,
        "member_id": row.member_id,
        "valid_from": row.valid_from,
        "valid_until": row.valid_until,
    }


def issued(row: CouponRow, template: CouponTemplate, now: datetime) -> Event[Any]:
    data = CouponIssued(
        coupon_code=row.coupon_code,
        template_code=template.code,
        campaign_code=row.campaign_code,
        member_id=row.member_id,
        valid_from=row.new.valid_from,
        valid_until=row.new.valid_until,
        occurred_at=now,
        kind=template.kind,  # type: ignore[arg-type]
        value=template.value,
        min_spend_minor=template.min_spend_minor,
        max_discount_minor=template.max_discount_minor,
        gift_sku=template.gift_sku,
        currency=template.currency,
        issued_via=row.via,  # type: ignore[arg-type]
        trigger_event_id=row.trigger_event_id,
        job_id=row.job_id,
        points_cost=row.points_cost,
    )
    return make_event("coupon.issued", data, subject=row.member_id, source=SOURCE, time=now)


def redeemed(
    row: Any, *, redemption_id: str, order_id: str, discount_minor: int | None, now: datetime
) -> Event[Any]:
    data = CouponRedeemed(
        **_common(row),
        occurred_at=now,
        redemption_id=redemption_id,
        order_id=order_id,
        discount_minor=discount_minor,
    )
    return make_event("coupon.redeemed", data, subject=row.member_id, source=SOURCE, time=now)


def released(
    row: Any, *, order_id: str, redemption_id: str | None, reason: str, at: datetime
) -> Event[Any]:
    data = CouponReleased(
        **_common(row),
        occurred_at=at,
        order_id=order_id,
        redemption_id=redemption_id,
        reason=reason,  # type: ignore[arg-type]
    )
    return make_event("coupon.released", data, subject=row.member_id, source=SOURCE, time=at)


def expired(row: Any, at: datetime) -> Event[Any]:
    data = CouponExpired(**_common(row), occurred_at=at)
    return make_event("coupon.expired", data, subject=row.member_id, source=SOURCE, time=at)


def expiring_soon(row: Any, at: datetime) -> Event[Any]:
    data = CouponExpiringSoon(
        **_common(row),
        occurred_at=at,
        kind=row.kind,
        value=row.value,
        min_spend_minor=row.min_spend_minor,
        currency=row.currency,
    )
    return make_event("coupon.expiring_soon", data, subject=row.member_id, source=SOURCE, time=at)


def holdout_assigned(request: GrantRequest, campaign: Campaign, now: datetime) -> Event[Any]:
    data = CouponHoldoutAssigned(
        member_id=request.member_id,
        campaign_code=campaign.code,
        trigger=campaign.trigger_type,
        grant_key=request.key,
        assigned_via=request.via,  # type: ignore[arg-type]
        trigger_event_id=request.event_id,
        job_id=request.job_id,
        occurred_at=now,
    )
    return make_event(
        "coupon.holdout_assigned", data, subject=request.member_id, source=SOURCE, time=now
    )
