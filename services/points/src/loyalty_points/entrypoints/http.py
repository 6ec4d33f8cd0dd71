"""HTTP routes for accounts and their ledgers."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from loyalty_shared.auth import Scope
from loyalty_shared.service import RuntimeDep
from pydantic import BaseModel

from ..service_layer.accounts import account_view, ledger_page

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


class LedgerEntryPublic(BaseModel):
    entry_id: str
    kind: Literal["earn", "release", "redeem", "reverse", "expire", "adjust"]
    points: int
    reason: str
    rule: str | None
    source: EntrySource
    lot_id: str | None
    created_at: datetime
    available_at: datetime | None = None
    expires_at: datetime | None = None


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
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> LedgerPage:
    rows, next_cursor = await ledger_page(runtime, member_id, limit, cursor)
    items = [
        LedgerEntryPublic(
            **{
                k: r[k]
                for k in (
                    "entry_id",
                    "kind",
                    "points",
                    "reason",
                    "rule",
                    "lot_id",
                    "created_at",
                    "available_at",
                    "expires_at",
                )
            },
            source=EntrySource(
                event_id=r["source_event_id"], type=r["source_type"], order_id=r["order_id"]
            ),
        )
        for r in rows
    ]
    return LedgerPage(items=items, next_cursor=next_cursor)
