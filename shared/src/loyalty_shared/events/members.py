"""Events on `loyalty.members`: what happens to a member's identity, card, tier and check-ins."""

from __future__ import annotations

import datetime as dt
from datetime import datetime
from typing import Final, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from .registry import MEMBERS, EventData, event_type

CardPlanKind = Literal["free", "paid", "tier", "internal"]
CardIssueAction = Literal["issued", "bound", "renewed", "replaced"]
TierChangeReason = Literal["upgrade", "downgrade", "manual"]
TierMetric = Literal["spend_365d", "lifetime_points", "order_count_365d"]


@event_type("member.registered", topic=MEMBERS)
class MemberRegistered(EventData):
    """A member signed up. Carries no personal data: contact details stay in the member service."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "member_id": "01JDQ3M7K8V2X9Y4Z5A6B7C8D9",
                    "card_no": "8800012345678",
                    "tier": "bronze",
                    "referral_code": "K7QX2M",
                    "referred_by": "01JCZ8T4W2R6P9N3M5K7H1G0F2",
                    "store_id": "store-sh-001",
                    "channel": "pos",
                    "locale": "zh-CN",
                    "timezone": "Asia/Shanghai",
                    "consents": {"email": True, "sms": False},
                    "registered_at": "2026-11-24T08:00:00Z",
                }
            ]
        },
    )

    member_id: str
    card_no: str
    tier: str = "bronze"
    referral_code: str
    referred_by: str | None = Field(default=None, description="member_id of the referrer")
    store_id: str | None = None
    channel: str | None = None
    locale: str = "zh-CN"
    timezone: str = "Asia/Shanghai"
    consents: dict[str, bool] = Field(
        default_factory=dict, description="marketing consent per channel, e.g. {email: true}"
    )
    registered_at: datetime


@event_type("member.updated", topic=MEMBERS)
class MemberUpdated(EventData):
    """A member's record changed. Names what changed; values travel only for attributes that
    are not personal data (locale, timezone, consents, home store). A consumer that needs a
    new phone or email asks the member service."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "member_id": "01JDQ3M7K8V2X9Y4Z5A6B7C8D9",
                    "changed": ["email", "consents", "timezone"],
                    "timezone": "Europe/Berlin",
                    "consents": {"email": True, "sms": True},
                    "occurred_at": "2026-12-02T09:30:00Z",
                }
            ]
        },
    )

    member_id: str
    changed: list[str] = Field(
        min_length=1,
        description=(
            "names of the member attributes that changed (e.g. phone, email, locale, "
            "consents); personal attributes are named here but their values never travel"
        ),
    )
    locale: str | None = Field(default=None, description="new locale, when it changed")
    timezone: str | None = Field(
        default=None, description="new IANA timezone, when it changed (member day, check-ins)"
    )
    consents: dict[str, bool] | None = Field(
        default=None,
        description="the full marketing consent map per channel after the change, when it changed",
    )
    store_id: str | None = Field(default=None, description="new home store, when it changed")
    occurred_at: AwareDatetime


@event_type("member.erased", topic=MEMBERS)
class MemberErased(EventData):
    """A member's personal data was erased. Ledgers and history stay under the member_id;
    every consumer drops whatever personal data or addresses it cached for this member."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "member_id": "01JDQ3M7K8V2X9Y4Z5A6B7C8D9",
                    "reason": "member_request",
                    "occurred_at": "2027-03-01T02:00:00Z",
                }
            ]
        },
    )

    member_id: str
    reason: str | None = Field(
        default=None, description="why, e.g. member_request or operator; free text, optional"
    )
    occurred_at: AwareDatetime


@event_type("member.checked_in", topic=MEMBERS)
class MemberCheckedIn(EventData):
    """A member checked in for the day (at most once per local day)."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "member_id": "01JDQ3M7K8V2X9Y4Z5A6B7C8D9",
                    "date": "2026-11-30",
                    "streak_days": 7,
                    "timezone": "Asia/Shanghai",
                    "occurred_at": "2026-11-30T01:12:45Z",
                }
            ]
        },
    )

    member_id: str
    date: dt.date = Field(description="the check-in day in the member's timezone")
    streak_days: int = Field(
        ge=1, description="consecutive days including this one; a missed day resets it to 1"
    )
    timezone: str = Field(
        default="Asia/Shanghai", description="IANA timezone that defined the local date"
    )
    occurred_at: AwareDatetime


class CardBenefits(BaseModel):
    """The benefit pack a card plan grants."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    points_multiplier: float = Field(
        default=1.0, ge=0, description="extra multiplier on purchase points granted by the card"
    )
    discount_percent: int = Field(
        default=0, ge=0, le=100, description="member discount in whole percent off (5 = 5% off)"
    )
    free_shipping: bool = False


@event_type("member.card_issued", topic=MEMBERS)
class MemberCardIssued(EventData):
    """A card (of a card plan) was bound to or bought by a member."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "member_id": "01JDQ3M7K8V2X9Y4Z5A6B7C8D9",
                    "card_no": "8800098765432",
                    "plan_code": "annual-plus",
                    "plan_kind": "paid",
                    "action": "issued",
                    "valid_from": "2026-12-01T00:00:00+08:00",
                    "expires_at": "2027-12-01T00:00:00+08:00",
                    "price_minor": 19900,
                    "currency": "CNY",
                    "benefits": {
                        "points_multiplier": 1.5,
                        "discount_percent": 5,
                        "free_shipping": True,
                    },
                    "occurred_at": "2026-12-01T03:20:00Z",
                }
            ]
        },
    )

    member_id: str
    card_no: str
    plan_code: str
    plan_kind: CardPlanKind = Field(description="free, paid (bought for a term), tier, internal")
    action: CardIssueAction | None = Field(
        default=None,
        description=(
            "issued: a new card; bound: a physical card bound to the member; renewed: a paid "
            "card's validity extended; replaced: the tier card now carries another tier's plan"
        ),
    )
    valid_from: AwareDatetime | None = None
    expires_at: AwareDatetime | None = Field(
        default=None, description="end of validity; none for cards that do not expire"
    )
    price_minor: int | None = Field(
        default=None, ge=0, description="what the member paid for a paid card, minor units"
    )
    currency: str = "CNY"
    benefits: CardBenefits = Field(default_factory=CardBenefits)
    occurred_at: AwareDatetime


@event_type("member.tier_changed", topic=MEMBERS)
class MemberTierChanged(EventData):
    """A member moved to another tier: upgraded on the qualifying event, downgraded by the
    tier-review job, or set by an operator."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "member_id": "01JDQ3M7K8V2X9Y4Z5A6B7C8D9",
                    "old_tier": "bronze",
                    "new_tier": "silver",
                    "reason": "upgrade",
                    "points_multiplier": 1.2,
                    "qualifying_spend_minor": 104500,
                    "metric": "spend_365d",
                    "metric_value": 104500,
                    "currency": "CNY",
                    "order_id": "01JDQ4A2B3C4D5E6F7G8H9J0K1",
                    "occurred_at": "2026-11-24T02:15:30Z",
                }
            ]
        },
    )

    member_id: str
    old_tier: str
    new_tier: str
    reason: TierChangeReason
    points_multiplier: float = Field(ge=0, description="purchase points multiplier of new_tier")
    qualifying_spend_minor: int | None = Field(
        default=None, ge=0, description="rolling 365-day spend that decided the change"
    )
    metric: TierMetric | None = Field(
        default=None,
        description=(
            "what the ladder measures: spend_365d (minor units), lifetime_points (points "
            "earned, net of reversals) or order_count_365d (paid orders)"
        ),
    )
    metric_value: int | None = Field(
        default=None, ge=0, description="the member's value of `metric` that decided the change"
    )
    currency: str = "CNY"
    order_id: str | None = Field(
        default=None, description="the order that lifted the member (upgrades only)"
    )
    occurred_at: AwareDatetime


# The message key (and only the key: there is no member, so no subject) of every
# `member.tier_ladder_changed`: one fixed key keeps all ladder changes in order on one partition.
TIER_LADDER_KEY: Final = "tier-ladder"


class LadderTier(BaseModel):
    """One tier of the ladder, as `member.tier_ladder_changed` carries it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    code: str = Field(description="the tier code members hold (`member.tier_changed.new_tier`)")
    label: str = Field(description="the tier's display name, e.g. Gold")
    points_multiplier: float = Field(ge=0, description="purchase points multiplier of the tier")


@event_type("member.tier_ladder_changed", topic=MEMBERS)
class MemberTierLadderChanged(EventData):
    """The tier ladder was set: the whole ladder as it stands now, lowest tier first.

    Emitted by `PUT /v1/tiers` in the transaction that sets the ladder, once per accepted PUT
    (an unchanged ladder is announced again), so the latest one is the ladder. It names no
    member: its message key is the fixed `tier-ladder` and its subject is empty, which keeps
    every ladder change in order on one partition."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "tiers": [
                        {"code": "bronze", "label": "Bronze", "points_multiplier": 1.0},
                        {"code": "silver", "label": "Silver", "points_multiplier": 1.2},
                        {"code": "gold", "label": "Gold", "points_multiplier": 1.5},
                    ],
                    "metric": "spend_365d",
                    "occurred_at": "2026-12-01T02:00:00Z",
                }
            ]
        },
    )

    tiers: list[LadderTier] = Field(
        min_length=1, description="every tier of the ladder in ladder order, the lowest first"
    )
    metric: TierMetric | None = Field(
        default=None,
        description=(
            "what the ladder measures: spend_365d (minor units), lifetime_points (points "
            "earned, net of reversals) or order_count_365d (paid orders)"
        ),
    )
    occurred_at: AwareDatetime = Field(description="when the ladder was set")


@event_type("member.referral_qualified", topic=MEMBERS)
class MemberReferralQualified(EventData):
    """A referred member's first order was paid, so the referrer earns the referral bonus.
    `member_id` is the referrer (the member who is rewarded)."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "member_id": "01JCZ8T4W2R6P9N3M5K7H1G0F2",
                    "referred_member_id": "01JDQ3M7K8V2X9Y4Z5A6B7C8D9",
                    "order_id": "01JDQ4A2B3C4D5E6F7G8H9J0K1",
                    "occurred_at": "2026-11-24T02:15:30Z",
                }
            ]
        },
    )

    member_id: str = Field(description="the referrer, who earns the bonus")
    referred_member_id: str = Field(description="the new member who was referred")
    order_id: str = Field(description="the referred member's first paid order")
    occurred_at: AwareDatetime = Field(description="when that order was paid")


RecommendLevel = Literal["very_likely", "possible", "unlikely"]
ComplaintStatus = Literal["received", "acknowledged", "investigating", "resolved", "closed"]
ComplaintCategory = Literal["product", "service", "delivery", "payment", "loyalty", "other"]


@event_type("member.survey_answered", topic=MEMBERS)
class MemberSurveyAnswered(EventData):
    """A member answered a satisfaction survey: a 1-5 satisfaction score, a 0-10 recommend
    likelihood, or both. The free-text comment never travels; `has_comment` says one exists."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "member_id": "01JDQ3M7K8V2X9Y4Z5A6B7C8D9",
                    "survey_id": "01JDR0B9X2C4D6F8G0H2J4K6M8",
                    "score": 4,
                    "recommend": 9,
                    "recommend_level": "very_likely",
                    "order_id": "01JDQ4A2B3C4D5E6F7G8H9J0K1",
                    "ticket_id": None,
                    "has_comment": True,
                    "occurred_at": "2026-11-25T11:03:00Z",
                }
            ]
        },
    )

    member_id: str
    survey_id: str
    score: int | None = Field(
        default=None,
        ge=1,
        le=5,
        description=(
            "satisfaction: 1 very dissatisfied, 2 dissatisfied, 3 neutral, 4 satisfied, "
            "5 very satisfied; absent when only the recommend question was answered"
        ),
    )
    recommend: int | None = Field(
        default=None,
        ge=0,
        le=10,
        description="likelihood to recommend us, 0-10; absent when not answered",
    )
    recommend_level: RecommendLevel | None = Field(
        default=None,
        description="recommend in three levels: 9-10 very_likely, 7-8 possible, 0-6 unlikely",
    )
    order_id: str | None = Field(default=None, description="the order the survey was about")
    ticket_id: str | None = Field(
        default=None, description="the complaint ticket the survey followed up"
    )
    has_comment: bool = Field(
        default=False, description="the member left a comment (its text stays in the service)"
    )
    occurred_at: AwareDatetime

    @model_validator(mode="after")
    def _answers_something(self) -> Self:
        if self.score is None and self.recommend is None:
            raise ValueError("a survey answer has a score, a recommend likelihood or both")
        return self


@event_type("member.complaint_opened", topic=MEMBERS)
class MemberComplaintOpened(EventData):
    """A complaint ticket was opened for a member (status `received`). Its subject and
    description are free text and stay in the member service."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "member_id": "01JDQ3M7K8V2X9Y4Z5A6B7C8D9",
                    "ticket_id": "01JDR2K4M6P8R0T2V4X6Z8B0D2",
                    "category": "delivery",
                    "channel": "phone",
                    "order_id": "01JDQ4A2B3C4D5E6F7G8H9J0K1",
                    "timezone": "Asia/Shanghai",
                    "response_due_at": "2026-11-30T07:30:00Z",
                    "occurred_at": "2026-11-27T07:30:00Z",
                }
            ]
        },
    )

    member_id: str
    ticket_id: str
    category: ComplaintCategory = "other"
    channel: str | None = Field(
        default=None, description="where it was received, e.g. store, phone, online, wechat"
    )
    order_id: str | None = Field(default=None, description="the order complained about")
    timezone: str = Field(
        default="Asia/Shanghai", description="IANA timezone the response deadline was set in"
    )
    response_due_at: AwareDatetime = Field(
        description="the first response is due one working day after receipt"
    )
    occurred_at: AwareDatetime = Field(description="when the complaint was received")


@event_type("member.complaint_status_changed", topic=MEMBERS)
class MemberComplaintStatusChanged(EventData):
    """A complaint ticket moved forward: received -> acknowledged -> investigating ->
    resolved -> closed (steps may be skipped; closed is final). Notes stay in the service."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "member_id": "01JDQ3M7K8V2X9Y4Z5A6B7C8D9",
                    "ticket_id": "01JDR2K4M6P8R0T2V4X6Z8B0D2",
                    "old_status": "received",
                    "new_status": "acknowledged",
                    "first_response": True,
                    "responded_in_time": True,
                    "response_due_at": "2026-11-30T07:30:00Z",
                    "occurred_at": "2026-11-28T02:10:00Z",
                }
            ]
        },
    )

    member_id: str
    ticket_id: str
    old_status: ComplaintStatus
    new_status: ComplaintStatus
    first_response: bool = Field(
        default=False, description="this move took the ticket out of `received`"
    )
    responded_in_time: bool | None = Field(
        default=None,
        description="for the first response: whether it came by response_due_at",
    )
    response_due_at: AwareDatetime
    occurred_at: AwareDatetime
