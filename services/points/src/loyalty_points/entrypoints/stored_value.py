"""HTTP routes for stored value: top-ups, spends, refunds, balance and statement."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Response
from loyalty_shared.api_types import RequestModel
from loyalty_shared.auth import Scope
from loyalty_shared.paging import Cursor
from loyalty_shared.service import RuntimeDep
from pydantic import BaseModel, ConfigDict, Field

from ..service_layer.stored_value import balance, refund_spend, spend, statement, top_up
from .redemptions import checkout_or_points_writer

router = APIRouter(prefix="/v1/stored-value", tags=["stored value"])
MemberId = Annotated[str, Path(max_length=32)]


class TopUpCreate(RequestModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"external_id": "pay-20261124-7781", "amount_minor": 10000, "currency": "CNY"}
            ]
        },
    )

    external_id: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[^\x00]+$",
        description="the till's or shop's id of the payment: retries match",
    )
    amount_minor: int = Field(gt=0, le=10**10)
    currency: Literal["CNY"] = "CNY"


class TopUpPublic(BaseModel):
    top_up_id: str
    member_id: str
    external_id: str
    amount_minor: int
    bonus_minor: int
    balance_minor: int
    created_at: datetime


class SpendCreate(RequestModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "amount_minor": 3500,
                    "reason": "order payment",
                    "order_id": "sh-001-20261124-0042",
                }
            ]
        },
    )

    amount_minor: int = Field(gt=0, le=10**10)
    reason: str = Field(min_length=1, max_length=500, pattern=r"\S")
    order_id: str | None = Field(default=None, max_length=64)


class SpendPublic(BaseModel):
    spend_id: str
    member_id: str
    amount_minor: int
    order_id: str | None
    status: Literal["spent", "refunded"]
    balance_minor: int


class BalancePublic(BaseModel):
    member_id: str
    currency: str
    balance_minor: int
    lifetime_topped_up_minor: int = Field(
        description="money paid in by top-ups, in minor units; the bonus is not in it"
    )
    lifetime_bonus_minor: int = Field(
        description="bonus money the top-up bonus rules added, in minor units (not paid in)"
    )
    lifetime_spent_minor: int


class StatementLine(BaseModel):
    entry_id: str
    kind: str
    amount_minor: int
    reason: str
    rule: str | None
    order_id: str | None
    created_at: datetime


class StatementPage(BaseModel):
    items: list[StatementLine]
    next_cursor: str | None


@router.post(
    "/{member_id}/top-ups",
    status_code=201,
    response_model=TopUpPublic,
    dependencies=[Scope("points:write")],
    responses={200: {"description": "this external_id was topped up already"}},
    summary="Put money on the balance (a top-up bonus rule may add more)",
)
async def post_top_up(
    member_id: MemberId, body: TopUpCreate, runtime: RuntimeDep, response: Response
) -> TopUpPublic:
    result, created = await top_up(
        runtime, member_id=member_id, external_id=body.external_id, amount_minor=body.amount_minor
    )
    if not created:
        response.status_code = 200
    return TopUpPublic(**result)


@router.post(
    "/{member_id}/spends",
    status_code=201,
    response_model=SpendPublic,
    dependencies=[Depends(checkout_or_points_writer)],
    summary="Pay with stored value; 422 insufficient_balance changes nothing",
)
async def post_spend(member_id: MemberId, body: SpendCreate, runtime: RuntimeDep) -> SpendPublic:
    return SpendPublic(
        **await spend(
            runtime,
            member_id=member_id,
            amount_minor=body.amount_minor,
            reason=body.reason.strip(),
            order_id=body.order_id,
        )
    )


@router.post(
    "/spends/{spend_id}/refund",
    response_model=SpendPublic,
    dependencies=[Depends(checkout_or_points_writer)],
    summary="Give a spend back to the balance",
)
async def post_refund(
    spend_id: Annotated[str, Path(max_length=32)], runtime: RuntimeDep
) -> SpendPublic:
    return SpendPublic(**await refund_spend(runtime, spend_id))


@router.get(
    "/{member_id}",
    response_model=BalancePublic,
    dependencies=[Scope("members:read")],
    summary="The stored-value balance",
)
async def get_balance(member_id: MemberId, runtime: RuntimeDep) -> BalancePublic:
    return BalancePublic(**await balance(runtime, member_id))


@router.get(
    "/{member_id}/statement",
    response_model=StatementPage,
    dependencies=[Scope("members:read")],
    summary="Every movement, newest first",
)
async def get_statement(
    member_id: MemberId,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Cursor = None,
) -> StatementPage:
    rows, next_cursor = await statement(runtime, member_id, limit, cursor)
    return StatementPage(
        items=[
            StatementLine(
                entry_id=r["entry_id"],
                kind=r["kind"],
                amount_minor=r["points"],
                reason=r["reason"],
                rule=r["rule"],
                order_id=r["order_id"],
                created_at=r["created_at"],
            )
            for r in rows
        ],
        next_cursor=next_cursor,
    )
