"""Events on `loyalty.coupons`: a coupon's life from issue to redemption, release or expiry,
and the members a campaign held out (its control group)."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, ConfigDict, Field

from .registry import COUPONS, EventData, event_type

CouponKind = Literal["amount_off", "percent_off", "free_shipping", "gift"]

_MEMBER = "01JDQ3M7K8V2X9Y4Z5A6B7C8D9"
_ORDER = "01JDQ4A2B3C4D5E6F7G8H9J0K1"
_COUPON = {
    "coupon_code": "CPN-7H2K-9QX4",
    "template_code": "NEW-20OFF",
    "campaign_code": "WELCOME-2026",
    "member_id": _MEMBER,
    "valid_from": "2026-11-24T08:00:00Z",
    "valid_until": "2026-12-24T16:00:00Z",
}


class _CouponEvent(EventData):
    coupon_code: str
    template_code: str
    campaign_code: str | None = Field(
        default=None, description="absent for coupons bought with points or issued by hand"
    )
    member_id: str
    valid_from: AwareDatetime
    valid_until: AwareDatetime
    occurred_at: AwareDatetime


@event_type("coupon.issued", topic=COUPONS)
class CouponIssued(_CouponEvent):
    """A coupon was issued to a member: by a campaign trigger, a bulk issue, or an exchange
    for points. `value` is minor units for amount_off and whole percent for percent_off."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    **_COUPON,
                    "kind": "amount_off",
                    "value": 2000,
                    "min_spend_minor": 10000,
                    "currency": "CNY",
                    "issued_via": "campaign",
                    "trigger_event_id": "01JDQ3M8A1B2C3D4E5F6G7H8J9",
                    "occurred_at": "2026-11-24T08:00:05Z",
                },
                {
                    "coupon_code": "CPN-3MZP-T8W1",
                    "template_code": "FREESHIP",
                    "member_id": _MEMBER,
                    "valid_from": "2026-12-03T06:00:00Z",
                    "valid_until": "2027-01-02T16:00:00Z",
                    "kind": "free_shipping",
                    "value": 0,
                    "min_spend_minor": 0,
                    "issued_via": "exchange",
                    "points_cost": 120,
                    "occurred_at": "2026-12-03T06:00:00Z",
                },
            ]
        },
    )

    kind: CouponKind
    value: int = Field(
        ge=0, description="amount_off: minor units; percent_off: whole percent 1-100; else 0"
    )
    min_spend_minor: int = Field(default=0, ge=0)
    max_discount_minor: int | None = Field(
        default=None, ge=0, description="cap of a percent_off discount"
    )
    gift_sku: str | None = Field(default=None, description="the gift of a gift coupon")
    currency: str = "CNY"
    issued_via: Literal["campaign", "bulk_issue", "exchange"] = Field(
        description="campaign trigger, bulk issue of a campaign, or bought with points"
    )
    trigger_event_id: str | None = Field(
        default=None, description="the event that triggered the campaign, if any"
    )
    job_id: str | None = Field(default=None, description="the bulk issue job")
    points_cost: int | None = Field(default=None, ge=0, description="points paid (exchange)")


@event_type("coupon.redeemed", topic=COUPONS)
class CouponRedeemed(_CouponEvent):
    """A coupon was redeemed on an order (at most once per coupon)."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    **_COUPON,
                    "redemption_id": "01JDQ4A9Z8Y7X6W5V4T3S2R1Q0",
                    "order_id": _ORDER,
                    "discount_minor": 1000,
                    "currency": "CNY",
                    "occurred_at": "2026-11-24T02:15:20Z",
                }
            ]
        },
    )

    redemption_id: str
    order_id: str
    discount_minor: int | None = Field(
        default=None, ge=0, description="discount granted, when the coupon service knows it"
    )
    currency: str = "CNY"


@event_type("coupon.released", topic=COUPONS)
class CouponReleased(_CouponEvent):
    """A redeemed coupon became usable again because its order was cancelled or fully
    refunded while the coupon was still valid."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    **_COUPON,
                    "order_id": _ORDER,
                    "redemption_id": "01JDQ4A9Z8Y7X6W5V4T3S2R1Q0",
                    "reason": "order_cancelled",
                    "occurred_at": "2026-11-24T10:30:00Z",
                }
            ]
        },
    )

    order_id: str
    redemption_id: str | None = Field(default=None, description="the redemption undone")
    reason: Literal["order_cancelled", "order_refunded"]


@event_type("coupon.expired", topic=COUPONS)
class CouponExpired(_CouponEvent):
    """An unused coupon passed valid_until (expire job)."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    **_COUPON,
                    "occurred_at": "2026-12-24T16:00:00Z",
                }
            ]
        },
    )


@event_type("coupon.expiring_soon", topic=COUPONS)
class CouponExpiringSoon(_CouponEvent):
    """An unused coupon expires in 3 days (expiry-notice job); terms ride along for the
    message template."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    **_COUPON,
                    "kind": "amount_off",
                    "value": 2000,
                    "min_spend_minor": 10000,
                    "currency": "CNY",
                    "occurred_at": "2026-12-21T16:00:00Z",
                }
            ]
        },
    )

    kind: CouponKind | None = None
    value: int | None = Field(
        default=None, ge=0, description="amount_off: minor units; percent_off: whole percent"
    )
    min_spend_minor: int | None = Field(default=None, ge=0)
    currency: str = "CNY"


@event_type("coupon.holdout_assigned", topic=COUPONS)
class CouponHoldoutAssigned(EventData):
    """A member was held out of a campaign: a trigger or bulk issue would have given them the
    campaign's coupons, but they fall in its deterministic control group (`holdout_percent`),
    so they got nothing. Emitted once per holdout record, i.e. once per (campaign, member,
    grant_key), in the transaction that records it; campaign results compare the receivers
    with these members."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "member_id": _MEMBER,
                    "campaign_code": "FIRST-ORDER",
                    "trigger": "first_order",
                    "grant_key": f"order:{_ORDER}",
                    "assigned_via": "campaign",
                    "trigger_event_id": "01JDQ4B7C8D9E0F1G2H3J4K5M6",
                    "occurred_at": "2026-11-24T02:15:21Z",
                },
                {
                    "member_id": _MEMBER,
                    "campaign_code": "WINBACK-Q4",
                    "trigger": "manual",
                    "grant_key": "job:01JDQ5C1D2E3F4G5H6J7K8M9N0",
                    "assigned_via": "bulk_issue",
                    "job_id": "01JDQ5C1D2E3F4G5H6J7K8M9N0",
                    "occurred_at": "2026-11-25T01:00:00Z",
                },
            ]
        },
    )

    member_id: str
    campaign_code: str
    trigger: str = Field(
        description="the campaign's trigger type: member.registered, first_order, nth_order, "
        "segment.entered, tier_changed, birthday, checkin_streak or manual"
    )
    grant_key: str = Field(
        description="the coupon service's grant key, one holdout per (campaign, member, "
        "grant_key): the triggering fact (`registered`, `order:<order_id>`, "
        "`segment:<code>:<as_of>`, `tier:<tier>:<at>`, `checkin:<date>`) or the bulk issue "
        "(`job:<job_id>`, `birthday:<year>`)"
    )
    assigned_via: Literal["campaign", "bulk_issue"] = Field(
        description="a consumed event triggered the campaign, or a bulk issue ran it"
    )
    trigger_event_id: str | None = Field(
        default=None, description="the event that triggered the campaign, if any"
    )
    job_id: str | None = Field(default=None, description="the bulk issue job")
    occurred_at: AwareDatetime = Field(
        description="when the member was held out (the time coupons would have been issued)"
    )
