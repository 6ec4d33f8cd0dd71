"""HTTP routes for card plans, physical card batches and members' cards."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from loyalty_shared.api_types import AwareDatetime, RequestModel
from loyalty_shared.auth import Scope
from loyalty_shared.paging import Cursor
from loyalty_shared.service import RuntimeDep
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..domain.business_time import (
    BusinessTimeInFuture,
    BusinessTimeOutOfRange,
    check_business_time,
)
from ..domain.cards import MAX_BATCH, PLAN_CODE
from ..service_layer import cards as service
from ..service_layer.cards import CreateCardPlan, invalid

router = APIRouter(prefix="/v1", tags=["cards"])

MAX_PRICE_MINOR = 10**12
# A card number as `service.normalise_card_no` reads it: 16 digits, grouped by spaces or dashes
# if you like, blanks around; checked (with its Luhn digit) by the service, 422 `invalid_card_no`.
CARD_NO_PATTERN = r"^\s*[ -]*(?:[0-9][ -]*){16}\s*$"


class _Body(RequestModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: object) -> object:
        if isinstance(value, str) and "\x00" in value:  # PostgreSQL text cannot hold U+0000
            raise ValueError("must not contain the NUL character")
        return value


class BenefitsIn(_Body):
    points_multiplier: float = Field(
        default=1.0, ge=1.0, le=10.0, description="extra multiplier on purchase points"
    )
    discount_percent: int = Field(default=0, ge=0, le=100, description="member discount, % off")
    free_shipping: bool = False


class Benefits(BaseModel):
    points_multiplier: float
    discount_percent: int
    free_shipping: bool


class CardPlanCreate(_Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "code": "vip-year",
                    "name": "VIP card, one year",
                    "kind": "paid",
                    "price_minor": 19900,
                    "currency": "CNY",
                    "period": "year",
                    "benefits": {
                        "points_multiplier": 1.5,
                        "discount_percent": 5,
                        "free_shipping": True,
                    },
                }
            ],
            # a paid plan has a price and a period, any other kind neither (the service's check)
            "if": {"properties": {"kind": {"const": "paid"}}},
            "then": {
                "required": ["price_minor", "period"],
                "properties": {"price_minor": {"type": "integer"}, "period": {"type": "string"}},
            },
            "else": {"properties": {"price_minor": {"type": "null"}, "period": {"type": "null"}}},
        }
    )

    code: str = Field(pattern=PLAN_CODE.pattern, description="lowercase a-z 0-9 - _, ≤ 48")
    name: str = Field(min_length=1, max_length=200)
    kind: Literal["free", "paid", "tier", "internal"] = Field(
        description="tier plans are made by PUT /v1/tiers, not here (422)",
        json_schema_extra={"enum": ["free", "paid", "internal"]},
    )
    price_minor: int | None = Field(
        default=None, ge=0, le=MAX_PRICE_MINOR, description="paid plans only (required there)"
    )
    currency: Literal["CNY"] = "CNY"
    period: Literal["month", "year"] | None = Field(
        default=None, description="paid plans only (required there): validity bought"
    )
    benefits: BenefitsIn = Field(default_factory=BenefitsIn)


class CardPlanPublic(BaseModel):
    code: str
    name: str
    kind: str
    price_minor: int | None
    currency: str
    period: str | None
    benefits: Benefits
    tier: str | None = Field(description="tier plans: the tier whose card this is")
    active: bool
    created_at: datetime
    updated_at: datetime


class CardPlanPage(BaseModel):
    items: list[CardPlanPublic]
    next_cursor: str | None


class CardPublic(BaseModel):
    card_no: str
    member_id: str | None
    plan_code: str
    plan_name: str
    plan_kind: str
    status: Literal["unbound", "active", "expired"]
    batch_id: str | None = Field(description="physical cards: the batch they were printed in")
    valid_from: datetime | None
    expires_at: datetime | None = Field(description="paid cards; none for cards that last")
    issued_at: datetime | None
    benefits: Benefits


class CardPage(BaseModel):
    items: list[CardPublic]
    next_cursor: str | None


class PurchasePublic(BaseModel):
    purchase_id: str
    price_minor: int
    currency: str
    period_start: datetime
    period_end: datetime
    renewal: bool
    occurred_at: datetime


class CardPurchased(CardPublic):
    purchase: PurchasePublic


class CardPurchaseCreate(_Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"plan_code": "vip-year", "occurred_at": "2026-11-24T10:00:00+08:00"}]
        }
    )

    plan_code: str = Field(min_length=1, max_length=64)
    occurred_at: AwareDatetime | None = Field(
        default=None,
        description="when it was sold (default now); from 1970 on, at most 5 minutes ahead",
    )


class CardIssueCreate(_Body):
    model_config = ConfigDict(json_schema_extra={"examples": [{"plan_code": "staff"}]})

    plan_code: str = Field(min_length=1, max_length=64)


class CardBind(_Body):
    model_config = ConfigDict(json_schema_extra={"examples": [{"card_no": "8800 1234 5678 9010"}]})

    card_no: str = Field(
        min_length=1,
        max_length=64,
        description="16 digits ending in a Luhn check digit; spaces and dashes are ignored",
        json_schema_extra={"pattern": CARD_NO_PATTERN},
    )


class CardBatchCreate(_Body):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"count": 500, "prefix": "8800", "plan_code": "free"}]}
    )

    count: int = Field(ge=1, le=MAX_BATCH)
    prefix: str = Field(pattern=r"^[0-9]{1,8}$", description="1-8 digits every number starts with")
    plan_code: str = Field(
        default="free", max_length=64, description="a free or internal plan (default: free)"
    )


class CardBatchCreated(BaseModel):
    batch_id: str
    prefix: str
    plan_code: str
    count: int
    created_at: datetime
    card_nos: list[str]


class CardBatchPublic(BaseModel):
    batch_id: str
    prefix: str
    plan_code: str
    count: int
    bound: int
    unbound: int
    created_at: datetime


class BatchCard(BaseModel):
    card_no: str
    member_id: str | None
    bound_at: datetime | None


class BatchCardPage(BaseModel):
    items: list[BatchCard]
    next_cursor: str | None


Limit = Annotated[int, Query(ge=1, le=500)]

# ---------------------------------------------------------------------------------------------
# Card plans
# ---------------------------------------------------------------------------------------------


@router.post(
    "/card-plans",
    status_code=201,
    response_model=CardPlanPublic,
    dependencies=[Scope("members:write")],
    summary="Create a card plan (free, paid or internal)",
    description=(
        "Paid plans need `price_minor` and `period`; other kinds have neither. Tier plans "
        "mirror the tier ladder and are set with `PUT /v1/tiers`. A plan is immutable once "
        "created. 409 `card_plan_exists` for a code in use."
    ),
)
async def create_card_plan(body: CardPlanCreate, runtime: RuntimeDep) -> CardPlanPublic:
    row = await service.create_plan(
        runtime,
        CreateCardPlan(
            code=body.code,
            name=body.name,
            kind=body.kind,
            benefits=body.benefits.model_dump(),
            price_minor=body.price_minor,
            currency=body.currency,
            period=body.period,
        ),
    )
    return CardPlanPublic(**row)


@router.get(
    "/card-plans",
    response_model=CardPlanPage,
    dependencies=[Scope("members:read")],
    summary="Card plans, by code",
)
async def list_card_plans(
    runtime: RuntimeDep,
    kind: Literal["free", "paid", "tier", "internal"] | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> CardPlanPage:
    rows, next_cursor = await service.list_plans(runtime, kind=kind, limit=limit, cursor=cursor)
    return CardPlanPage(items=[CardPlanPublic(**r) for r in rows], next_cursor=next_cursor)


@router.get(
    "/card-plans/{code}",
    response_model=CardPlanPublic,
    dependencies=[Scope("members:read")],
    summary="One card plan",
)
async def read_card_plan(code: str, runtime: RuntimeDep) -> CardPlanPublic:
    return CardPlanPublic(**await service.get_plan(runtime, code))


# ---------------------------------------------------------------------------------------------
# Physical card batches
# ---------------------------------------------------------------------------------------------


@router.post(
    "/card-batches",
    status_code=201,
    response_model=CardBatchCreated,
    dependencies=[Scope("members:write")],
    summary="Generate a batch of unassigned card numbers for printing",
    description=(
        "`count` (1-10000) numbers of 16 digits starting with `prefix`, each ending in a Luhn "
        "check digit, unique across all cards. Members bind them with "
        "`POST /v1/members/{member_id}/cards:bind`."
    ),
)
async def create_card_batch(body: CardBatchCreate, runtime: RuntimeDep) -> CardBatchCreated:
    batch = await service.create_batch(
        runtime, count=body.count, prefix=body.prefix, plan_code=body.plan_code
    )
    return CardBatchCreated(**batch)


@router.get(
    "/card-batches/{batch_id}",
    response_model=CardBatchPublic,
    dependencies=[Scope("members:read")],
    summary="A card batch with its counts of bound and unbound cards",
)
async def read_card_batch(batch_id: str, runtime: RuntimeDep) -> CardBatchPublic:
    return CardBatchPublic(**await service.batch_summary(runtime, batch_id))


@router.get(
    "/card-batches/{batch_id}/cards",
    response_model=BatchCardPage,
    dependencies=[Scope("members:read")],
    summary="The numbers of a card batch",
)
async def list_batch_cards(
    batch_id: str,
    runtime: RuntimeDep,
    status: Literal["bound", "unbound"] | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> BatchCardPage:
    items, next_cursor = await service.batch_cards(
        runtime, batch_id, status=status, limit=limit, cursor=cursor
    )
    return BatchCardPage(items=[BatchCard(**i) for i in items], next_cursor=next_cursor)


# ---------------------------------------------------------------------------------------------
# A member's cards
# ---------------------------------------------------------------------------------------------


@router.get(
    "/members/{member_id}/cards",
    response_model=CardPage,
    dependencies=[Scope("members:read")],
    summary="A member's cards: the sign-up card first",
)
async def list_member_cards(member_id: str, runtime: RuntimeDep) -> CardPage:
    cards = await service.member_cards(runtime, member_id)
    return CardPage(items=[CardPublic(**c) for c in cards], next_cursor=None)


@router.post(
    "/members/{member_id}/cards",
    status_code=201,
    response_model=CardPublic,
    dependencies=[Scope("members:write")],
    summary="Grant an internal (staff) card",
    description=(
        "Only plans of kind `internal` (422 `wrong_card_plan_kind` otherwise, "
        "`unknown_card_plan` for no such plan); 409 `card_already_issued` if the member holds "
        "a card of the plan. Emits `member.card_issued`."
    ),
)
async def issue_member_card(
    member_id: str, body: CardIssueCreate, runtime: RuntimeDep
) -> CardPublic:
    return CardPublic(**await service.issue_internal_card(runtime, member_id, body.plan_code))


@router.post(
    "/members/{member_id}/cards:purchase",
    status_code=201,
    response_model=CardPurchased,
    dependencies=[Scope("members:write")],
    summary="Buy or renew a paid card",
    description=(
        "The first purchase of a paid plan issues a card valid for one period; each later one "
        "extends it by one period from the later of the purchase time and its current expiry. "
        "Emits `member.card_issued` (action `issued` or `renewed`) with the benefits, price and "
        "`expires_at`."
    ),
)
async def purchase_member_card(
    member_id: str, body: CardPurchaseCreate, runtime: RuntimeDep
) -> CardPurchased:
    if body.occurred_at is not None:
        try:
            check_business_time(body.occurred_at, runtime.clock.now())
        except BusinessTimeInFuture as exc:
            message = "must not lie more than 5 minutes in the future"
            raise invalid([(("occurred_at",), message)]) from exc
        except BusinessTimeOutOfRange as exc:
            raise invalid([(("occurred_at",), "must not lie before 1970")]) from exc
    card = await service.purchase_card(runtime, member_id, body.plan_code, body.occurred_at)
    return CardPurchased(**card)


@router.post(
    "/members/{member_id}/cards:bind",
    response_model=CardPublic,
    dependencies=[Scope("members:write")],
    summary="Bind an unassigned physical card to a member",
    description=(
        "422 `invalid_card_no` for a number that is not 16 digits with a valid check digit or "
        "was never generated; 409 `card_already_bound` for a card bound to another member. "
        "Binding a card the member holds already answers it again (200) and emits nothing."
    ),
)
async def bind_member_card(member_id: str, body: CardBind, runtime: RuntimeDep) -> CardPublic:
    card, _ = await service.bind_card(runtime, member_id, body.card_no)
    return CardPublic(**card)
