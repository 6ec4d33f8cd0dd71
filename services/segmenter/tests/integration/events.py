"""Event builders and delivery for the segmenter's integration tests."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from loyalty_shared.events import Event, make_event
from loyalty_shared.events.coupons import CouponHoldoutAssigned, CouponIssued, CouponRedeemed
from loyalty_shared.events.members import MemberErased, MemberRegistered, MemberTierChanged
from loyalty_shared.events.orders import OrderCancelled, OrderLine, OrderPaid, OrderRefunded
from loyalty_shared.events.points import LedgerPortion, PointsCredited, PointsDebited
from loyalty_shared.testing import deliver as deliver  # the tests import it from here

T0 = datetime(2026, 3, 2, 4, 0, tzinfo=UTC)
_ids = itertools.count(1)


def next_id(prefix: str) -> str:
    return f"{prefix}{next(_ids):06d}"


def _event(type_: str, data: Any, subject: str | None, at: datetime) -> Event[Any]:
    return make_event(type_, data, subject=subject, source="test", time=at)


def registered(member_id: str, at: datetime = T0) -> Event[Any]:
    data = MemberRegistered(
        member_id=member_id, card_no="8800000000000", referral_code="ABCDEF", registered_at=at
    )
    return _event("member.registered", data, member_id, at)


def erased(member_id: str, at: datetime = T0) -> Event[Any]:
    return _event("member.erased", MemberErased(member_id=member_id, occurred_at=at), member_id, at)


def tier_changed(member_id: str, tier: str, at: datetime = T0) -> Event[Any]:
    data = MemberTierChanged(
        member_id=member_id,
        old_tier="bronze",
        new_tier=tier,
        reason="upgrade",
        points_multiplier=1.2,
        occurred_at=at,
    )
    return _event("member.tier_changed", data, member_id, at)


def paid(
    member_id: str | None,
    order_id: str,
    paid_minor: int,
    at: datetime = T0,
    lines: dict[str, int] | None = None,
    coupon_codes: list[str] | None = None,
) -> Event[Any]:
    data = OrderPaid(
        order_id=order_id,
        channel="pos",
        external_id=order_id,
        member_id=member_id,
        occurred_at=at,
        total_minor=paid_minor,
        paid_minor=paid_minor,
        lines=[
            OrderLine(sku=f"sku-{c}", category=c, quantity=1, unit_price_minor=v)
            for c, v in (lines or {}).items()
        ],
        coupon_codes=coupon_codes or [],
    )
    return _event("order.paid", data, member_id, at)


def refunded(
    member_id: str | None, order_id: str, amount: int, total: int, paid_minor: int, at=T0
) -> Event[Any]:
    data = OrderRefunded(
        order_id=order_id,
        channel="pos",
        external_id=next_id("rf"),
        member_id=member_id,
        occurred_at=at,
        refund_id=next_id("rid"),
        amount_minor=amount,
        refunded_total_minor=total,
        paid_minor=paid_minor,
    )
    return _event("order.refunded", data, member_id, at)


def cancelled(member_id: str | None, order_id: str, paid_minor: int, at=T0) -> Event[Any]:
    data = OrderCancelled(
        order_id=order_id,
        channel="pos",
        external_id=order_id,
        member_id=member_id,
        occurred_at=at,
        previous_status="paid",
        total_minor=paid_minor,
        paid_minor=paid_minor,
    )
    return _event("order.cancelled", data, member_id, at)


def credited(member_id: str, points: int, available_after: int, pending_after: int = 0, at=T0):
    data = PointsCredited(
        member_id=member_id,
        entry_id=next_id("e"),
        lot_id=next_id("l"),
        points=points,
        rule="signup",
        reason="test",
        status="available",
        available_after=available_after,
        pending_after=pending_after,
        occurred_at=at,
    )
    return _event("points.credited", data, member_id, at)


def debited(member_id: str, points: int, available_after: int, at=T0):
    data = PointsDebited(
        member_id=member_id,
        redemption_id=next_id("r"),
        points=points,
        reason="test",
        entries=[LedgerPortion(entry_id=next_id("e"), lot_id="l", points=points)],
        available_after=available_after,
        pending_after=0,
        occurred_at=at,
    )
    return _event("points.debited", data, member_id, at)


def coupon_issued(member_id: str, code: str, campaign: str, at=T0):
    data = CouponIssued(
        coupon_code=code,
        template_code="TPL",
        campaign_code=campaign,
        member_id=member_id,
        valid_from=at,
        valid_until=at.replace(year=at.year + 1),
        kind="amount_off",
        value=1000,
        issued_via="campaign",
        occurred_at=at,
    )
    return _event("coupon.issued", data, member_id, at)


def coupon_redeemed(member_id: str, code: str, campaign: str, order_id: str, at=T0):
    data = CouponRedeemed(
        coupon_code=code,
        template_code="TPL",
        campaign_code=campaign,
        member_id=member_id,
        valid_from=at,
        valid_until=at.replace(year=at.year + 1),
        redemption_id=next_id("cr"),
        order_id=order_id,
        discount_minor=1000,
        occurred_at=at,
    )
    return _event("coupon.redeemed", data, member_id, at)


def holdout_assigned(member_id: str, campaign: str, grant_key: str, at=T0):
    data = CouponHoldoutAssigned(
        member_id=member_id,
        campaign_code=campaign,
        trigger="segment.entered",
        grant_key=grant_key,
        assigned_via="campaign",
        occurred_at=at,
    )
    return _event("coupon.holdout_assigned", data, member_id, at)
