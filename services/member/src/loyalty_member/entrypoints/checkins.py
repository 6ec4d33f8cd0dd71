"""HTTP routes for daily check-ins (see the service README)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Body, Query
from loyalty_shared.api_types import AwareDatetime, RequestModel
from loyalty_shared.auth import Scope
from loyalty_shared.paging import Cursor, cursor_after, invalid_cursor
from loyalty_shared.service import RuntimeDep
from pydantic import BaseModel, ConfigDict, Field

from ..service_layer.checkins import CheckIn, check_in, list_checkins

router = APIRouter(prefix="/v1", tags=["checkins"])


class CheckInCreate(RequestModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"occurred_at": "2026-11-24T08:05:00+08:00"}]},
    )

    occurred_at: AwareDatetime | None = Field(
        default=None,
        description=(
            "when the member checked in (default: now); the past is fine (imports) from 1970 "
            "on, more than 5 minutes ahead is refused (422 `validation_error`)"
        ),
    )


class CheckInPublic(BaseModel):
    member_id: str
    date: dt.date = Field(description="the check-in day in the member's timezone")
    streak_days: int = Field(description="consecutive days including this one, as recorded")
    timezone: str
    occurred_at: dt.datetime


class CheckInPage(BaseModel):
    items: list[CheckInPublic]
    next_cursor: str | None
    streak_days: int = Field(
        description="the current streak: the run ending today, or yesterday if not yet today"
    )
    today: dt.date = Field(description="today in the member's timezone")
    checked_in_today: bool


def _public(row: dict) -> CheckInPublic:
    return CheckInPublic(
        member_id=row["member_id"],
        date=row["local_date"],
        streak_days=row["streak_days"],
        timezone=row["timezone"],
        occurred_at=row["occurred_at"],
    )


@router.post(
    "/members/{member_id}/check-ins",
    status_code=201,
    response_model=CheckInPublic,
    dependencies=[Scope("events:write")],
    summary="Check a member in for the day",
    responses={
        404: {"description": "unknown or erased member (`not_found`)"},
        409: {"description": "the member's local day has a check-in (`already_checked_in`)"},
        422: {"description": "`validation_error`, e.g. occurred_at more than 5 minutes ahead"},
    },
)
async def create_check_in(
    member_id: str,
    runtime: RuntimeDep,
    body: Annotated[CheckInCreate | None, Body()] = None,
) -> CheckInPublic:
    row = await check_in(
        runtime, CheckIn(member_id=member_id, occurred_at=body.occurred_at if body else None)
    )
    return _public(row)


@router.get(
    "/members/{member_id}/check-ins",
    response_model=CheckInPage,
    dependencies=[Scope("members:read")],
    summary="A member's check-ins, newest first, and the current streak",
)
async def get_check_ins(
    member_id: str,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Cursor = None,
) -> CheckInPage:
    before = None
    if after := cursor_after(cursor, 1):  # the last day of the page before
        try:
            before = dt.date.fromisoformat(after[0])
        except ValueError:
            raise invalid_cursor() from None
    page = await list_checkins(runtime, member_id, limit=limit, before=before)
    return CheckInPage(**{**page, "items": [_public(row) for row in page["items"]]})
