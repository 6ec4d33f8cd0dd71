"""Events on `loyalty.orders`: orders posted by POS terminals and shops, and what happens to them.

Guest orders (no member) are published too, keyed by their order id; `member_id` is then absent.
Amounts are integer minor units (fen for CNY); `total_minor` is authoritative and need not
equal the sum of the lines (discounts, shipping).
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue, model_validator

from .registry import ORDERS, EventData, event_type

OrderChannel = Literal["pos", "online"]
CancellableStatus = Literal["placed", "paid", "shipped", "delivered"]


class OrderLine(BaseModel):
    """One line of an order; lines feed categories and preference tags, not amounts."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    sku: str
    category: str
    quantity: int = Field(ge=1)
    unit_price_minor: int = Field(ge=0)


class _OrderEvent(EventData):
    """Fields every order event carries."""

    order_id: str
    channel: OrderChannel
    external_id: str = Field(description="the order's id in the POS or shop that posted it")
    store_id: str | None = None
    member_id: str | None = Field(default=None, description="absent for guest orders")
    occurred_at: AwareDatetime


class _OrderAmounts(_OrderEvent):
    currency: str = "CNY"
    total_minor: int = Field(ge=0, description="order total before payment, authoritative")
    paid_minor: int = Field(
        ge=0, description="what the customer pays after discounts and coupons; <= total_minor"
    )
    lines: list[OrderLine] = Field(default_factory=list)
    coupon_codes: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _paid_within_total(self) -> Self:
        if self.paid_minor > self.total_minor:
            raise ValueError("paid_minor exceeds total_minor")
        return self


_LINES_EXAMPLE: list[JsonValue] = [
    {"sku": "SNK-0042", "category": "snacks", "quantity": 3, "unit_price_minor": 1290},
    {"sku": "BEV-0107", "category": "beverages", "quantity": 2, "unit_price_minor": 650},
]


@event_type("order.placed", topic=ORDERS)
class OrderPlaced(_OrderAmounts):
    """An order was placed and is waiting for payment (drives payment reminders)."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "order_id": "01JDQ4A2B3C4D5E6F7G8H9J0K1",
                    "channel": "online",
                    "external_id": "SHOP-2026-118842",
                    "member_id": "01JDQ3M7K8V2X9Y4Z5A6B7C8D9",
                    "currency": "CNY",
                    "total_minor": 5170,
                    "paid_minor": 4170,
                    "lines": _LINES_EXAMPLE,
                    "coupon_codes": ["CPN-7H2K-9QX4"],
                    "occurred_at": "2026-11-24T10:05:00+08:00",
                }
            ]
        },
    )


@event_type("order.paid", topic=ORDERS)
class OrderPaid(_OrderAmounts):
    """An order was paid: the fact that earns points, counts as spend for tiers and lifecycle,
    and redeems its coupons."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "order_id": "01JDQ4A2B3C4D5E6F7G8H9J0K1",
                    "channel": "pos",
                    "external_id": "POS-SH001-20261124-0193",
                    "store_id": "store-sh-001",
                    "member_id": "01JDQ3M7K8V2X9Y4Z5A6B7C8D9",
                    "member_tier": "bronze",
                    "member_tier_multiplier": 1.0,
                    "paid_order_count": 1,
                    "currency": "CNY",
                    "total_minor": 5170,
                    "paid_minor": 4170,
                    "lines": _LINES_EXAMPLE,
                    "coupon_codes": ["CPN-7H2K-9QX4"],
                    "occurred_at": "2026-11-24T10:15:30+08:00",
                },
                {
                    "order_id": "01JDQ5F9G8H7J6K5M4N3P2Q1R0",
                    "channel": "pos",
                    "external_id": "POS-SH001-20261124-0194",
                    "store_id": "store-sh-001",
                    "currency": "CNY",
                    "total_minor": 1290,
                    "paid_minor": 1290,
                    "lines": [
                        {
                            "sku": "SNK-0042",
                            "category": "snacks",
                            "quantity": 1,
                            "unit_price_minor": 1290,
                        }
                    ],
                    "occurred_at": "2026-11-24T10:17:02+08:00",
                },
            ]
        },
    )

    member_tier: str | None = Field(
        default=None,
        description=(
            "the tier the member held before this order (the order that lifts a member into "
            "a tier earns at the old tier); absent for guest orders"
        ),
    )
    member_tier_multiplier: float | None = Field(
        default=None,
        ge=0,
        description="purchase points multiplier of member_tier on the ladder at order time",
    )
    paid_order_count: int | None = Field(
        default=None,
        ge=1,
        description=(
            "the member's paid orders including this one, as counted by the member service "
            "when it was paid (1 = first order); absent for guest orders"
        ),
    )


@event_type("order.shipped", topic=ORDERS)
class OrderShipped(_OrderEvent):
    """An order left the warehouse (transactional notice)."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "order_id": "01JDQ4A2B3C4D5E6F7G8H9J0K1",
                    "channel": "online",
                    "external_id": "SHOP-2026-118842",
                    "member_id": "01JDQ3M7K8V2X9Y4Z5A6B7C8D9",
                    "carrier": "SF Express",
                    "tracking_no": "SF1402837746512",
                    "occurred_at": "2026-11-25T09:00:00+08:00",
                }
            ]
        },
    )

    carrier: str | None = None
    tracking_no: str | None = None


@event_type("order.delivered", topic=ORDERS)
class OrderDelivered(_OrderEvent):
    """An order reached the customer (signed for)."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "order_id": "01JDQ4A2B3C4D5E6F7G8H9J0K1",
                    "channel": "online",
                    "external_id": "SHOP-2026-118842",
                    "member_id": "01JDQ3M7K8V2X9Y4Z5A6B7C8D9",
                    "occurred_at": "2026-11-26T15:42:00+08:00",
                }
            ]
        },
    )


@event_type("order.cancelled", topic=ORDERS)
class OrderCancelled(_OrderEvent):
    """An order was cancelled. Cancelling a paid order reverses its points like a full refund
    and releases its coupons if they are still valid."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "order_id": "01JDQ4A2B3C4D5E6F7G8H9J0K1",
                    "channel": "online",
                    "external_id": "SHOP-2026-118842",
                    "member_id": "01JDQ3M7K8V2X9Y4Z5A6B7C8D9",
                    "previous_status": "paid",
                    "currency": "CNY",
                    "total_minor": 5170,
                    "paid_minor": 4170,
                    "refunded_total_minor": 0,
                    "coupon_codes": ["CPN-7H2K-9QX4"],
                    "occurred_at": "2026-11-24T18:30:00+08:00",
                }
            ]
        },
    )

    previous_status: CancellableStatus = Field(
        description="status before cancelling; placed = unpaid"
    )
    currency: str = "CNY"
    total_minor: int = Field(ge=0)
    paid_minor: int = Field(
        ge=0, description="what had been paid (0 for an unpaid order); <= total_minor"
    )
    refunded_total_minor: int = Field(
        default=0, ge=0, description="already refunded before the cancel; <= paid_minor"
    )
    coupon_codes: list[str] = Field(default_factory=list)
    reason: str | None = None

    @model_validator(mode="after")
    def _amounts_consistent(self) -> Self:
        if self.paid_minor > self.total_minor:
            raise ValueError("paid_minor exceeds total_minor")
        if self.refunded_total_minor > self.paid_minor:
            raise ValueError("refunded_total_minor exceeds paid_minor")
        return self


@event_type("order.refunded", topic=ORDERS)
class OrderRefunded(_OrderEvent):
    """Part or all of a paid order was refunded. `external_id` is the refund's own id in the
    POS or shop (the dedupe key of the refund); the order's is `order_external_id`."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "order_id": "01JDQ4A2B3C4D5E6F7G8H9J0K1",
                    "refund_id": "01JDR0N1P2Q3R4S5T6V7W8X9Y0",
                    "channel": "pos",
                    "external_id": "RF-SH001-20261126-0007",
                    "order_external_id": "POS-SH001-20261124-0193",
                    "store_id": "store-sh-001",
                    "member_id": "01JDQ3M7K8V2X9Y4Z5A6B7C8D9",
                    "currency": "CNY",
                    "amount_minor": 1290,
                    "refunded_total_minor": 1290,
                    "paid_minor": 4170,
                    "total_minor": 5170,
                    "occurred_at": "2026-11-26T11:02:00+08:00",
                }
            ]
        },
    )

    refund_id: str
    external_id: str = Field(description="the refund's id in the POS or shop that posted it")
    order_external_id: str | None = Field(
        default=None, description="the order's id in the POS or shop"
    )
    currency: str = "CNY"
    amount_minor: int = Field(ge=0, description="this refund")
    refunded_total_minor: int = Field(
        ge=0, description="all refunds of the order so far, this one included; <= paid_minor"
    )
    paid_minor: int = Field(ge=0, description="what the order paid")
    total_minor: int | None = Field(default=None, ge=0, description="the order's total")

    @property
    def fully_refunded(self) -> bool:
        return self.refunded_total_minor >= self.paid_minor

    @model_validator(mode="after")
    def _amounts_consistent(self) -> Self:
        if self.amount_minor > self.refunded_total_minor:
            raise ValueError("amount_minor exceeds refunded_total_minor")
        if self.refunded_total_minor > self.paid_minor:
            raise ValueError("refunded_total_minor exceeds paid_minor")
        return self
