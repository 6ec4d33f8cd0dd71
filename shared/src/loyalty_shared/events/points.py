"""Events on `loyalty.points`: every change of a member's points balance, one event per
business action, and the notice of points about to expire.

`points` is a magnitude (>= 0) whose direction the event type gives, except in
`points.adjusted`, where it is signed. Each event carries the balances after it:
`available_after` may be negative (a refund took back points already spent; later earnings
repay it), `pending_after` never is. Ledger entry and lot ids match
`GET /v1/accounts/{member_id}/ledger`.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from .registry import POINTS, EventData, event_type

_MEMBER = "01JDQ3M7K8V2X9Y4Z5A6B7C8D9"
_ORDER = "01JDQ4A2B3C4D5E6F7G8H9J0K1"
_EARN_LOT = "01JDQ4C5D6E7F8G9H0J1K2M3N4"
_SIGNUP_LOT = "01JDQ3M9P0Q1R2S3T4V5W6X7Y8"


class LedgerPortion(BaseModel):
    """One ledger entry of an event, and the lot it touched."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    entry_id: str
    lot_id: str | None = Field(
        default=None,
        description=(
            "the lot the points came from or went back to; absent for the part of a reversal "
            "that no lot could cover (it makes available negative)"
        ),
    )
    points: int = Field(ge=0)
    expires_at: AwareDatetime | None = Field(default=None, description="the lot's expiry")


class ExpiringLot(BaseModel):
    """Points of one lot that will expire."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    lot_id: str
    points: int = Field(ge=0, description="what is left of the lot and will expire")
    expires_at: AwareDatetime


class _Balances(EventData):
    member_id: str
    available_after: int = Field(
        description="available points after this event; negative while a reversal is unpaid"
    )
    pending_after: int = Field(ge=0, description="pending points after this event")
    occurred_at: AwareDatetime


def _check_portions(points: int, entries: list[LedgerPortion]) -> None:
    if sum(entry.points for entry in entries) != abs(points):
        raise ValueError("the entries' points do not add up to points")


@event_type("points.credited", topic=POINTS)
class PointsCredited(_Balances):
    """Points were earned: a new lot, pending (purchase, referral) or available at once
    (signup, check-in). The part over the daily cap is reported in `capped_points`."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "member_id": _MEMBER,
                    "entry_id": "01JDQ4C5D6E7F8G9H0J1K2M3N5",
                    "lot_id": _EARN_LOT,
                    "points": 41,
                    "rule": "purchase",
                    "reason": "order POS-SH001-20261124-0193 paid",
                    "order_id": _ORDER,
                    "status": "pending",
                    "multiplier": 1.0,
                    "capped_points": 0,
                    "available_at": "2026-12-01T02:15:30Z",
                    "expires_at": "2027-11-24T02:15:30Z",
                    "source_event_id": "01JDQ4B7X2Y3Z4A5B6C7D8E9F0",
                    "source_type": "order.paid",
                    "available_after": 100,
                    "pending_after": 41,
                    "occurred_at": "2026-11-24T02:15:30Z",
                },
                {
                    "member_id": _MEMBER,
                    "entry_id": "01JDQ3M9P0Q1R2S3T4V5W6X7Y9",
                    "lot_id": _SIGNUP_LOT,
                    "points": 100,
                    "rule": "signup",
                    "reason": "welcome bonus",
                    "status": "available",
                    "expires_at": "2027-11-24T08:00:00Z",
                    "source_event_id": "01JDQ3M8A1B2C3D4E5F6G7H8J9",
                    "source_type": "member.registered",
                    "available_after": 100,
                    "pending_after": 0,
                    "occurred_at": "2026-11-24T08:00:00Z",
                },
            ]
        },
    )

    entry_id: str
    lot_id: str
    points: int = Field(ge=0, description="points credited, after the daily cap")
    rule: str = Field(
        description="the earning rule: purchase, signup, referral, check_in, check_in_streak, ..."
    )
    reason: str
    order_id: str | None = None
    status: Literal["pending", "available"] = Field(
        description="pending points become available at available_at (points.released)"
    )
    multiplier: float | None = Field(
        default=None, ge=0, description="tier multiplier times the member-day factor applied"
    )
    capped_points: int = Field(
        default=0, ge=0, description="points the rule gave beyond the daily cap, not credited"
    )
    available_at: AwareDatetime | None = Field(
        default=None, description="when pending points are due to be released"
    )
    expires_at: AwareDatetime | None = Field(default=None, description="when the lot expires")
    source_event_id: str | None = Field(default=None, description="the event that earned them")
    source_type: str | None = Field(default=None, description="that event's type")


@event_type("points.released", topic=POINTS)
class PointsReleased(_Balances):
    """Pending points became available (release-pending job)."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "member_id": _MEMBER,
                    "entry_id": "01JDY1A2B3C4D5E6F7G8H9J0K1",
                    "lot_id": _EARN_LOT,
                    "points": 28,
                    "rule": "purchase",
                    "reason": "pending period over",
                    "order_id": _ORDER,
                    "expires_at": "2027-11-24T02:15:30Z",
                    "available_after": 128,
                    "pending_after": 0,
                    "occurred_at": "2026-12-01T02:15:30Z",
                }
            ]
        },
    )

    entry_id: str
    lot_id: str
    points: int = Field(ge=0)
    rule: str | None = Field(default=None, description="the rule that earned the lot")
    reason: str = "pending period over"
    order_id: str | None = None
    expires_at: AwareDatetime | None = None


@event_type("points.debited", topic=POINTS)
class PointsDebited(_Balances):
    """Points were redeemed (spent), consuming the lots that expire first."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "member_id": _MEMBER,
                    "redemption_id": "01JDZ2K3M4N5P6Q7R8S9T0V1W2",
                    "points": 120,
                    "reason": "coupon exchange CPN-TPL-20OFF",
                    "rule": "coupon_exchange",
                    "entries": [
                        {
                            "entry_id": "01JDZ2K3M4N5P6Q7R8S9T0V1W3",
                            "lot_id": _SIGNUP_LOT,
                            "points": 100,
                            "expires_at": "2027-11-24T08:00:00Z",
                        },
                        {
                            "entry_id": "01JDZ2K3M4N5P6Q7R8S9T0V1W4",
                            "lot_id": _EARN_LOT,
                            "points": 20,
                            "expires_at": "2027-11-24T02:15:30Z",
                        },
                    ],
                    "available_after": 8,
                    "pending_after": 0,
                    "occurred_at": "2026-12-03T06:00:00Z",
                }
            ]
        },
    )

    redemption_id: str
    points: int = Field(ge=0)
    reason: str
    rule: str | None = Field(default=None, description="what the points paid for, if coded")
    order_id: str | None = None
    entries: list[LedgerPortion] = Field(min_length=1)

    @model_validator(mode="after")
    def _entries_add_up(self) -> Self:
        _check_portions(self.points, self.entries)
        return self


@event_type("points.reversed", topic=POINTS)
class PointsReversed(_Balances):
    """Points were taken back or given back. `reverses=earn`: a refund or cancel took back
    points an order earned (from the order's own lot first, then from available points).
    `reverses=redeem`: a cancelled redemption gave its points back with their original expiry."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "member_id": _MEMBER,
                    "reverses": "earn",
                    "points": 13,
                    "reason": "order refunded",
                    "rule": "purchase",
                    "order_id": _ORDER,
                    "refund_id": "01JDR0N1P2Q3R4S5T6V7W8X9Y0",
                    "entries": [
                        {
                            "entry_id": "01JDR0P3Q4R5S6T7V8W9X0Y1Z2",
                            "lot_id": _EARN_LOT,
                            "points": 13,
                            "expires_at": "2027-11-24T02:15:30Z",
                        }
                    ],
                    "source_event_id": "01JDR0N9M8K7J6H5G4F3E2D1C0",
                    "source_type": "order.refunded",
                    "available_after": 100,
                    "pending_after": 28,
                    "occurred_at": "2026-11-26T03:02:00Z",
                }
            ]
        },
    )

    reverses: Literal["earn", "redeem"] = Field(
        description="earn: points leave the balance; redeem: points come back to it"
    )
    points: int = Field(ge=0)
    reason: str
    rule: str | None = Field(default=None, description="the rule of the reversed earning")
    order_id: str | None = None
    refund_id: str | None = None
    redemption_id: str | None = None
    entries: list[LedgerPortion] = Field(min_length=1)
    source_event_id: str | None = None
    source_type: str | None = None

    @model_validator(mode="after")
    def _entries_add_up(self) -> Self:
        _check_portions(self.points, self.entries)
        return self


@event_type("points.expired", topic=POINTS)
class PointsExpired(_Balances):
    """What was left of one or more lots expired (expire job)."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "member_id": _MEMBER,
                    "points": 8,
                    "reason": "lot expired",
                    "rule": "purchase",
                    "entries": [
                        {
                            "entry_id": "01KB8E2F3G4H5J6K7M8N9P0Q1R",
                            "lot_id": _EARN_LOT,
                            "points": 8,
                            "expires_at": "2027-11-24T02:15:30Z",
                        }
                    ],
                    "available_after": 0,
                    "pending_after": 0,
                    "occurred_at": "2027-11-24T02:15:30Z",
                }
            ]
        },
    )

    points: int = Field(ge=0)
    reason: str = "lot expired"
    rule: str | None = None
    entries: list[LedgerPortion] = Field(min_length=1)

    @model_validator(mode="after")
    def _entries_add_up(self) -> Self:
        _check_portions(self.points, self.entries)
        return self


@event_type("points.expiring_soon", topic=POINTS)
class PointsExpiringSoon(_Balances):
    """Points will expire soon (expiry-notice job, 30 days ahead). Changes no balance."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "member_id": _MEMBER,
                    "points": 8,
                    "expires_at": "2027-11-24T02:15:30Z",
                    "lots": [
                        {"lot_id": _EARN_LOT, "points": 8, "expires_at": "2027-11-24T02:15:30Z"}
                    ],
                    "available_after": 8,
                    "pending_after": 0,
                    "occurred_at": "2027-10-25T00:00:00Z",
                }
            ]
        },
    )

    points: int = Field(ge=0, description="all points in the notice window")
    expires_at: AwareDatetime = Field(description="when the first of these lots expires")
    lots: list[ExpiringLot] = Field(min_length=1)
    reason: str | None = None
    rule: str | None = None


@event_type("points.adjusted", topic=POINTS)
class PointsAdjusted(_Balances):
    """An operator granted or removed points by hand. `points` is signed here: positive adds
    an available lot, negative takes points from the lots that expire first."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "member_id": _MEMBER,
                    "points": 500,
                    "reason": "goodwill after complaint CPL-20261203-17",
                    "rule": "adjustment",
                    "adjusted_by": "key:console-ops",
                    "entries": [
                        {
                            "entry_id": "01JE0A1B2C3D4E5F6G7H8J9K0M",
                            "lot_id": "01JE0A1B2C3D4E5F6G7H8J9K0N",
                            "points": 500,
                            "expires_at": "2027-12-04T01:00:00Z",
                        }
                    ],
                    "available_after": 500,
                    "pending_after": 0,
                    "occurred_at": "2026-12-04T01:00:00Z",
                }
            ]
        },
    )

    points: int = Field(description="signed change: positive grants, negative removes")
    reason: str = Field(min_length=1)
    rule: str | None = "adjustment"
    order_id: str | None = None
    adjusted_by: str | None = Field(
        default=None, description="who made it: the API key or operator id, never a person's name"
    )
    entries: list[LedgerPortion] = Field(min_length=1)

    @model_validator(mode="after")
    def _entries_add_up(self) -> Self:
        if self.points == 0:
            raise ValueError("an adjustment changes the balance")
        _check_portions(self.points, self.entries)
        return self


class _StoredValue(EventData):
    member_id: str
    currency: str = "CNY"
    balance_after_minor: int = Field(ge=0, description="the stored-value balance after this")
    occurred_at: AwareDatetime


@event_type("stored_value.topped_up", topic=POINTS)
class StoredValueToppedUp(_StoredValue):
    """Money was put on a member's stored-value balance, with any top-up bonus."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "member_id": _MEMBER,
                    "top_up_id": "01JE0B1C2D3E4F5G6H7J8K9M0N",
                    "external_id": "POS-17-000123",
                    "amount_minor": 10000,
                    "bonus_minor": 1000,
                    "currency": "CNY",
                    "balance_after_minor": 11000,
                    "occurred_at": "2026-12-04T01:00:00Z",
                }
            ]
        },
    )

    top_up_id: str
    external_id: str
    amount_minor: int = Field(gt=0)
    bonus_minor: int = Field(ge=0)


@event_type("stored_value.spent", topic=POINTS)
class StoredValueSpent(_StoredValue):
    """Stored value paid for (part of) an order."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "member_id": _MEMBER,
                    "spend_id": "01JE0C1D2E3F4G5H6J7K8M9N0P",
                    "amount_minor": 4500,
                    "order_id": "01JDQ4A2B3C4D5E6F7G8H9J0K1",
                    "currency": "CNY",
                    "balance_after_minor": 6500,
                    "occurred_at": "2026-12-05T03:00:00Z",
                }
            ]
        },
    )

    spend_id: str
    amount_minor: int = Field(gt=0)
    order_id: str | None = None


@event_type("stored_value.refunded", topic=POINTS)
class StoredValueRefunded(_StoredValue):
    """A spend was refunded: the money went back on the balance."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "member_id": _MEMBER,
                    "spend_id": "01JE0C1D2E3F4G5H6J7K8M9N0P",
                    "amount_minor": 4500,
                    "order_id": "01JDQ4A2B3C4D5E6F7G8H9J0K1",
                    "currency": "CNY",
                    "balance_after_minor": 11000,
                    "occurred_at": "2026-12-06T03:00:00Z",
                }
            ]
        },
    )

    spend_id: str
    amount_minor: int = Field(gt=0)
    order_id: str | None = None
