"""HTTP routes for orders intake: orders, their status and refunds (scope `events:write`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from loyalty_shared.api_types import AwareDatetime, RequestModel
from loyalty_shared.auth import Scope
from loyalty_shared.paging import Cursor
from loyalty_shared.service import RuntimeDep
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from ..domain import orders as rules
from ..service_layer.orders import (
    ChangeOrderStatus,
    PlaceOrder,
    RefundOrder,
    change_order_status,
    get_order,
    list_member_orders,
    place_order,
    refund_order,
)
from .members import PHONE_PATTERN

router = APIRouter(prefix="/v1", tags=["orders"])


def _no_nul(value: str) -> str:
    if "\x00" in value:  # PostgreSQL text cannot hold U+0000
        raise ValueError("must not contain the NUL character")
    return value


Amount = Annotated[int, Field(strict=True, ge=0, le=rules.MAX_AMOUNT_MINOR)]
PositiveAmount = Annotated[int, Field(strict=True, gt=0, le=rules.MAX_AMOUNT_MINOR)]
# Lengths follow the columns they are stored in (adapters/tables.py).
ExternalId = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_no_nul)]
Id32 = Annotated[str, Field(min_length=1, max_length=32), AfterValidator(_no_nul)]
Code64 = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_no_nul)]
Note = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_no_nul)]
# Checked by the service (422 `invalid_phone`), documented here: see members.PHONE_PATTERN.
BuyerPhone = Annotated[Id32, Field(json_schema_extra={"pattern": PHONE_PATTERN})]
# A business time (contract §3): any past since 1970, at most 5 minutes ahead of now; the
# service checks it against its clock (422 `validation_error`), which no schema can say.
BUSINESS_TIME = (
    "RFC 3339 with an offset; from 1970 on and at most 5 minutes ahead of now (422 "
    "`validation_error` otherwise)"
)


class OrderLineIn(RequestModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"sku": "tea-0042", "category": "tea", "quantity": 2, "unit_price_minor": 4900}
            ]
        },
    )

    sku: Code64
    category: Code64
    quantity: int = Field(strict=True, ge=1, le=1_000_000)
    unit_price_minor: Amount


class OrderCreate(RequestModel):
    """An order as a POS terminal or shop posts it. The buyer is named by `member_id`, else
    `phone`, else `card_no` (the first one given decides); none of them: a guest order."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "channel": "pos",
                    "external_id": "sh-001-20261124-0042",
                    "store_id": "sh-001",
                    "phone": "13800138000",
                    "occurred_at": "2026-11-24T16:30:00+08:00",
                    "status": "paid",
                    "currency": "CNY",
                    "total_minor": 12800,
                    "paid_minor": 9800,
                    "lines": [
                        {
                            "sku": "tea-0042",
                            "category": "tea",
                            "quantity": 2,
                            "unit_price_minor": 6400,
                        }
                    ],
                    "coupon_codes": [],
                }
            ]
        },
    )

    channel: Literal["pos", "online"]
    external_id: ExternalId = Field(description="the order's id in the POS or shop")
    store_id: Code64 | None = None
    member_id: Id32 | None = None
    phone: BuyerPhone | None = Field(
        default=None, description="not a valid number: 422 `invalid_phone`"
    )
    card_no: Id32 | None = None
    enroll_if_unknown: bool = Field(
        default=False,
        description="an unknown phone signs the buyer up on the spot (otherwise: a guest order)",
    )
    occurred_at: AwareDatetime | None = Field(
        default=None, description="when the order happened (default: now); " + BUSINESS_TIME
    )
    status: Literal["placed", "paid"]
    currency: str = Field(
        max_length=3,
        description="CNY",
        json_schema_extra={"enum": list[Any](sorted(rules.SUPPORTED_CURRENCIES))},
    )
    total_minor: Amount = Field(description="the order total, authoritative")
    paid_minor: Amount = Field(description="what the customer pays; <= total_minor")
    lines: list[OrderLineIn] = Field(max_length=1000)
    coupon_codes: list[Code64] = Field(default_factory=list, max_length=50)

    @field_validator("currency")
    @classmethod
    def _supported_currency(cls, value: str) -> str:
        return rules.check_currency(value)

    @field_validator("paid_minor")
    @classmethod
    def _paid_within_total(cls, value: int, info: ValidationInfo) -> int:
        total = info.data.get("total_minor")
        if total is not None:
            rules.check_amounts(total, value)
        return value


class OrderStatusChange(RequestModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"status": "shipped", "carrier": "sf-express", "tracking_no": "SF1234567890"}
            ],
            # carrier and tracking_no with shipped only, reason with cancelled only (the
            # validators below)
            "allOf": [
                {
                    "if": {"properties": {"status": {"not": {"const": rules.SHIPPED}}}},
                    "then": {
                        "properties": {"carrier": {"type": "null"}, "tracking_no": {"type": "null"}}
                    },
                },
                {
                    "if": {"properties": {"status": {"not": {"const": rules.CANCELLED}}}},
                    "then": {"properties": {"reason": {"type": "null"}}},
                },
            ],
        },
    )

    status: Literal["paid", "shipped", "delivered", "cancelled"]
    occurred_at: AwareDatetime | None = Field(default=None, description=BUSINESS_TIME)
    carrier: Code64 | None = Field(default=None, description="shipped only")
    tracking_no: Code64 | None = Field(default=None, description="shipped only")
    reason: Note | None = Field(default=None, description="cancelled only")

    @field_validator("carrier", "tracking_no")
    @classmethod
    def _shipped_only(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("status") != rules.SHIPPED:
            raise ValueError("is given only with the status shipped")
        return value

    @field_validator("reason")
    @classmethod
    def _cancelled_only(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("status") != rules.CANCELLED:
            raise ValueError("is given only with the status cancelled")
        return value


class RefundCreate(RequestModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"external_id": "sh-001-20261124-0042-r1", "amount_minor": 4900}]
        },
    )

    external_id: ExternalId = Field(description="the refund's id in the POS or shop")
    amount_minor: PositiveAmount
    occurred_at: AwareDatetime | None = Field(default=None, description=BUSINESS_TIME)


class OrderLinePublic(BaseModel):
    sku: str
    category: str
    quantity: int
    unit_price_minor: int


class OrderPublic(BaseModel):
    order_id: str
    channel: str
    external_id: str
    store_id: str | None
    member_id: str | None = Field(description="null: a guest order")
    status: str
    currency: str
    total_minor: int
    paid_minor: int
    refunded_total_minor: int
    lines: list[OrderLinePublic]
    coupon_codes: list[str]
    member_tier: str | None = Field(description="the member's tier before this order was paid")
    occurred_at: datetime
    paid_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: dict[str, Any]) -> OrderPublic:
        return cls(**row, refunded_total_minor=row["refunded_minor"])


class RefundPublic(BaseModel):
    refund_id: str
    order_id: str
    external_id: str
    amount_minor: int
    occurred_at: datetime
    created_at: datetime


class OrderDetail(OrderPublic):
    refunds: list[RefundPublic]


class RefundAccepted(RefundPublic):
    refunded_total_minor: int = Field(description="all refunds of the order so far")
    paid_minor: int
    order_status: str


class OrderList(BaseModel):
    items: list[OrderPublic]
    next_cursor: str | None


_REPEAT = "the same thing again: the first answer, nothing changed, no event"


@router.post(
    "/orders",
    status_code=202,
    response_model=OrderPublic,
    dependencies=[Scope("events:write")],
    summary="Post an order (once per channel and external_id)",
    responses={
        200: {"description": f"(channel, external_id) known already: {_REPEAT}"},
        422: {
            "description": "`validation_error` (incl. occurred_at > 5 min ahead), "
            "`invalid_phone`, `unknown_member` (unknown or erased member_id / card_no)"
        },
    },
)
async def create_order(body: OrderCreate, runtime: RuntimeDep, response: Response) -> OrderPublic:
    fields = body.model_dump()
    fields["lines"] = [line.model_dump() for line in body.lines]
    order, created = await place_order(runtime, PlaceOrder(**fields))
    if not created:
        response.status_code = 200
    return OrderPublic.of(order)


@router.post(
    "/orders/{order_id}/status",
    status_code=202,
    response_model=OrderPublic,
    dependencies=[Scope("events:write")],
    summary="Move an order to paid, shipped, delivered or cancelled",
    responses={
        200: {"description": f"the order has this status already: {_REPEAT}"},
        404: {"description": "no such order (`not_found`)"},
        409: {"description": "the order cannot make this move (`invalid_status_transition`)"},
        422: {"description": "`validation_error`"},
    },
)
async def post_order_status(
    order_id: str, body: OrderStatusChange, runtime: RuntimeDep, response: Response
) -> OrderPublic:
    order, changed = await change_order_status(
        runtime, ChangeOrderStatus(order_id=order_id, **body.model_dump())
    )
    if not changed:
        response.status_code = 200
    return OrderPublic.of(order)


@router.post(
    "/orders/{order_id}/refunds",
    status_code=202,
    response_model=RefundAccepted,
    dependencies=[Scope("events:write")],
    summary="Refund part or all of a paid order (once per order and external_id)",
    responses={
        200: {"description": f"(order, external_id) known already: {_REPEAT}"},
        404: {"description": "no such order (`not_found`)"},
        409: {"description": "placed (unpaid) or cancelled order (`order_not_refundable`)"},
        422: {"description": "`refund_exceeds_paid` (nothing changes), `validation_error`"},
    },
)
async def create_refund(
    order_id: str, body: RefundCreate, runtime: RuntimeDep, response: Response
) -> RefundAccepted:
    outcome = await refund_order(runtime, RefundOrder(order_id=order_id, **body.model_dump()))
    if not outcome.created:
        response.status_code = 200
    return RefundAccepted(
        **outcome.refund,
        refunded_total_minor=outcome.order["refunded_minor"],
        paid_minor=outcome.order["paid_minor"],
        order_status=outcome.order["status"],
    )


@router.get(
    "/orders/{order_id}",
    response_model=OrderDetail,
    dependencies=[Scope("members:read")],
    summary="One order with its refunds",
    responses={404: {"description": "no such order (`not_found`)"}},
)
async def read_order(order_id: str, runtime: RuntimeDep) -> OrderDetail:
    order = await get_order(runtime, order_id)
    return OrderDetail(**order, refunded_total_minor=order["refunded_minor"])


@router.get(
    "/members/{member_id}/orders",
    response_model=OrderList,
    dependencies=[Scope("members:read")],
    summary="A member's orders, newest first",
    responses={404: {"description": "no such member (`not_found`)"}},
)
async def read_member_orders(
    member_id: str,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Cursor = None,
) -> OrderList:
    page = await list_member_orders(runtime, member_id, limit=limit, cursor=cursor)
    return OrderList(items=[OrderPublic.of(o) for o in page.items], next_cursor=page.next_cursor)
