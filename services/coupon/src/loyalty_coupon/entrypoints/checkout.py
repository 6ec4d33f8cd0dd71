"""HTTP routes a member and a checkout use: the wallet, validation, redemption, exchange."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query
from loyalty_shared.api_types import RequestModel
from loyalty_shared.auth import Principal, Scope, require_scope
from loyalty_shared.paging import Cursor
from loyalty_shared.service import RuntimeDep
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from ..domain.templates import Cart, CartLine
from ..service_layer import exchange, wallet

router = APIRouter(prefix="/v1", tags=["wallet and checkout"])

MemberPath = Annotated[str, Path(max_length=64)]
_BIG = 10**12


class CouponPublic(BaseModel):
    coupon_code: str
    template_code: str
    campaign_code: str | None
    status: Literal["issued", "redeemed", "expired"]
    valid_from: AwareDatetime
    valid_until: AwareDatetime
    issued_at: AwareDatetime
    issued_via: Literal["campaign", "bulk_issue", "exchange"]
    kind: Literal["amount_off", "percent_off", "free_shipping", "gift"]
    value: int
    min_spend_minor: int
    max_discount_minor: int | None
    gift_sku: str | None
    categories: list[str]
    name: str
    order_id: str | None = Field(description="the order that redeemed it")
    redeemed_at: AwareDatetime | None


class CouponPage(BaseModel):
    items: list[CouponPublic]
    next_cursor: str | None


@router.get(
    "/members/{member_id}/coupons",
    response_model=CouponPage,
    dependencies=[Scope("members:read")],
    summary="A member's coupons, newest first, optionally by status",
)
async def get_wallet(
    member_id: MemberPath,
    runtime: RuntimeDep,
    status: Literal["issued", "redeemed", "expired"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Cursor = None,
) -> dict[str, Any]:
    items, next_cursor = await wallet.wallet(runtime, member_id, status, limit, cursor)
    return {"items": items, "next_cursor": next_cursor}


class MemberCouponPublic(CouponPublic):
    member_id: str


@router.get(
    "/coupons/{coupon_code}",
    response_model=MemberCouponPublic,
    dependencies=[Scope("members:read")],
    summary="One coupon",
)
async def get_coupon(
    coupon_code: Annotated[str, Path(max_length=32)], runtime: RuntimeDep
) -> dict[str, Any]:
    return await wallet.get_coupon(runtime, coupon_code)


class Line(RequestModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"sku": "tea-0042", "category": "tea", "quantity": 2, "unit_price_minor": 6400}
            ]
        },
    )

    sku: str = Field(min_length=1, max_length=64)
    category: str = Field(min_length=1, max_length=64)
    quantity: int = Field(ge=1, le=10**6)
    unit_price_minor: int = Field(ge=0, le=_BIG)


def _cart(total_minor: int, lines: list[Line] | None) -> Cart:
    return Cart(
        total_minor=total_minor,
        lines=tuple(CartLine(**line.model_dump()) for line in lines or ()),
    )


class ValidationRequest(RequestModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "member_id": "01JD4M3MB3R0000000000000AB",
                    "total_minor": 12800,
                    "lines": [
                        {
                            "sku": "tea-0042",
                            "category": "tea",
                            "quantity": 2,
                            "unit_price_minor": 6400,
                        }
                    ],
                    "coupon_codes": ["CPN-7H2K-9QX4"],
                }
            ]
        },
    )

    member_id: str = Field(min_length=1, max_length=64)
    total_minor: int = Field(ge=0, le=_BIG)
    lines: list[Line] | None = Field(default=None, max_length=1000)
    coupon_codes: list[Annotated[str, Field(max_length=32)]] = Field(min_length=1, max_length=50)


class ValidationResult(BaseModel):
    coupon_code: str
    valid: bool
    discount_minor: int = Field(description="0 for free shipping and gifts, and when not valid")
    kind: str | None = None
    gift_sku: str | None = None
    reason: (
        Literal[
            "not_found",
            "not_owned",
            "already_redeemed",
            "expired",
            "not_yet_valid",
            "below_min_spend",
            "wrong_category",
        ]
        | None
    ) = None
    detail: str | None = None


class ValidationResponse(BaseModel):
    items: list[ValidationResult]


@router.post(
    "/validations",
    response_model=ValidationResponse,
    response_model_exclude_none=True,
    dependencies=[Scope("events:write")],
    summary="Each coupon's discount on a cart, or why it does not apply (changes nothing)",
)
async def post_validation(body: ValidationRequest, runtime: RuntimeDep) -> dict[str, Any]:
    items = await wallet.validate(
        runtime, body.member_id, _cart(body.total_minor, body.lines), body.coupon_codes
    )
    return {"items": items}


class RedemptionRequest(RequestModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "coupon_code": "CPN-7H2K-9QX4",
                    "member_id": "01JD4M3MB3R0000000000000AB",
                    "order_id": "sh-001-20261124-0042",
                    "total_minor": 12800,
                }
            ]
        },
    )

    coupon_code: str = Field(min_length=1, max_length=32)
    member_id: str = Field(min_length=1, max_length=64)
    order_id: str = Field(min_length=1, max_length=64)
    total_minor: int | None = Field(
        default=None, ge=0, le=_BIG, description="the cart: checks minimum spend and categories"
    )
    lines: list[Line] | None = Field(default=None, max_length=1000)


class RedemptionPublic(BaseModel):
    redemption_id: str
    coupon_code: str
    member_id: str
    order_id: str
    discount_minor: int | None
    status: Literal["redeemed"]
    redeemed_at: AwareDatetime


@router.post(
    "/redemptions",
    status_code=201,
    response_model=RedemptionPublic,
    dependencies=[Scope("events:write")],
    summary="Use a coupon on an order, once: 409 coupon_already_redeemed for any second try",
    responses={
        404: {"description": "no such coupon (`not_found`)"},
        409: {"description": "the coupon was used already (`coupon_already_redeemed`)"},
        422: {
            "description": "`validation_error`, `coupon_expired`, `coupon_not_owned`, "
            "`coupon_not_yet_valid`, `coupon_min_spend_not_met`, `coupon_not_applicable`"
        },
    },
)
async def post_redemption(body: RedemptionRequest, runtime: RuntimeDep) -> dict[str, Any]:
    cart = None if body.total_minor is None else _cart(body.total_minor, body.lines)
    return await wallet.redeem(
        runtime,
        coupon_code=body.coupon_code,
        member_id=body.member_id,
        order_id=body.order_id,
        cart=cart,
    )


class ExchangeRequest(RequestModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"template_code": "TEA-15PCT"}]}
    )

    template_code: str = Field(min_length=1, max_length=64)


class ExchangePublic(MemberCouponPublic):
    exchange_id: str
    points_cost: int
    points_redemption_id: str | None


@router.post(
    "/members/{member_id}/coupons:exchange",
    status_code=201,
    response_model=ExchangePublic,
    summary="Buy a coupon with points (through the points service)",
    responses={
        503: {
            "description": "the points service (`points_unavailable`: no coupon was issued, no "
            "points taken) or the database (`service_unavailable`) is unavailable; retry "
            "later with the same Idempotency-Key"
        }
    },
)
async def post_exchange(
    member_id: MemberPath,
    body: ExchangeRequest,
    runtime: RuntimeDep,
    principal: Annotated[Principal, Depends(require_scope("coupons:write"))],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> dict[str, Any]:
    return await exchange.exchange(
        runtime,
        member_id=member_id,
        template_code=body.template_code,
        principal=principal.key_id,
        idempotency_key=idempotency_key,
    )
