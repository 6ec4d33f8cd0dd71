"""HTTP routes for accounts: balances, the ledger behind them, adjustments, liability."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from loyalty_shared.api_types import RequestModel
from loyalty_shared.auth import Principal, Scope, require_scope
from loyalty_shared.paging import Cursor
from loyalty_shared.service import RuntimeDep
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..service_layer.accounts import account_view, adjust, ledger_page
from ..service_layer.reports import liability

router = APIRouter(prefix="/v1", tags=["accounts"])


class Expiring(BaseModel):
    on: date
    points: int


class AccountPublic(BaseModel):
    member_id: str
    available: int
    pending: int
    lifetime_earned: int
    lifetime_redeemed: int
    expiring: list[Expiring]
    tier: str | None


class EntrySource(BaseModel):
    event_id: str | None
    type: str | None
    order_id: str | None = None
    redemption_id: str | None = None


class CalculationFactor(BaseModel):
    kind: Literal["tier", "member_day", "card", "campaign"]
    value: float = Field(description="the multiplier (compute with exact decimals)")
    label: str | None = Field(default=None, description="e.g. the tier, the member day's date")


class Calculation(BaseModel):
    """How an earn entry's points came about: `points` = floor(`base_points` x the product of
    the factors' values) - `capped_points`."""

    base_points: int
    factors: list[CalculationFactor]
    capped_points: int


class LedgerEntryPublic(BaseModel):
    entry_id: str
    kind: Literal["earn", "release", "redeem", "reverse", "expire", "adjust"]
    bucket: Literal["available", "pending"] = Field(
        description="the balance the entry changes; a release moves pending to available"
    )
    points: int
    reason: str
    rule: str | None
    source: EntrySource
    lot_id: str | None
    created_at: datetime
    occurred_at: datetime | None = None
    available_at: datetime | None = None
    expires_at: datetime | None = None
    capped_points: int = Field(default=0, description="earned above the daily cap, not credited")
    calculation: Calculation | None = Field(
        default=None, description="on every earn entry: how its points were computed"
    )


class LedgerPage(BaseModel):
    items: list[LedgerEntryPublic]
    next_cursor: str | None


@router.get(
    "/accounts/{member_id}",
    response_model=AccountPublic,
    dependencies=[Scope("members:read")],
    summary="A member's points balances",
)
async def get_account(member_id: str, runtime: RuntimeDep) -> AccountPublic:
    return AccountPublic(**await account_view(runtime, member_id))


@router.get(
    "/accounts/{member_id}/ledger",
    response_model=LedgerPage,
    dependencies=[Scope("members:read")],
    summary="Every entry behind the balances",
)
async def get_ledger(
    member_id: str,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Cursor = None,
) -> LedgerPage:
    rows, next_cursor = await ledger_page(runtime, member_id, limit, cursor)
    items = [
        LedgerEntryPublic(
            **{
                k: r[k]
                for k in (
                    "entry_id",
                    "kind",
                    "bucket",
                    "points",
                    "reason",
                    "rule",
                    "lot_id",
                    "created_at",
                    "occurred_at",
                    "available_at",
                    "expires_at",
                    "capped_points",
                    "calculation",
                )
            },
            source=EntrySource(
                event_id=r["source_event_id"],
                type=r["source_type"],
                order_id=r["order_id"],
                redemption_id=r["redemption_id"],
            ),
        )
        for r in rows
    ]
    return LedgerPage(items=items, next_cursor=next_cursor)


class AdjustmentCreate(RequestModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"points": 500, "reason": "apology for a late delivery"}]},
    )

    points: int = Field(
        description="signed: a grant (> 0) or a deduction (< 0); not 0, at most 10^9 either way",
        # checked by `_not_zero` (one message for both), stated here for the document
        json_schema_extra={"minimum": -(10**9), "maximum": 10**9, "not": {"const": 0}},
    )
    reason: str = Field(min_length=1, max_length=500, pattern=r"\S")

    @field_validator("points")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0 or abs(value) > 10**9:
            raise ValueError("must be a non-zero number of points (at most 10^9)")
        return value


class AdjustmentPublic(BaseModel):
    entry_id: str
    member_id: str
    points: int
    reason: str
    available_after: int


@router.post(
    "/accounts/{member_id}/adjustments",
    status_code=201,
    response_model=AdjustmentPublic,
    summary="Grant or deduct points by hand (a reason is required)",
)
async def post_adjustment(
    member_id: Annotated[str, Path(max_length=32)],
    body: AdjustmentCreate,
    runtime: RuntimeDep,
    principal: Annotated[Principal, Depends(require_scope("points:write"))],
) -> AdjustmentPublic:
    result = await adjust(
        runtime,
        member_id=member_id,
        points=body.points,
        reason=body.reason.strip(),
        adjusted_by=principal.key_id,
    )
    return AdjustmentPublic(**result)


@router.get(
    "/reports/liability",
    dependencies=[Scope("members:read")],
    summary="Outstanding points (available and pending) and breakage by month",
)
async def get_liability(runtime: RuntimeDep) -> dict[str, Any]:
    return await liability(runtime)
