"""HTTP route: whose birthday falls on a day (member ids and time zones, nothing personal)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from loyalty_shared.auth import Scope
from loyalty_shared.paging import Cursor
from loyalty_shared.service import RuntimeDep
from pydantic import BaseModel

from ..service_layer.birthdays import birthdays_on

router = APIRouter(prefix="/v1", tags=["members"])

# Every MM-DD of a leap year, as `parse_month_day` checks it (422 `validation_error` with its
# own message otherwise): the OpenAPI document says so, pydantic does not check it again.
MONTH_DAY_PATTERN = (
    r"^(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-9])"
    r"|(?:0[13-9]|1[0-2])-30|(?:0[13578]|1[02])-31)$"
)


class BirthdayMember(BaseModel):
    member_id: str
    timezone: str


class BirthdayList(BaseModel):
    items: list[BirthdayMember]
    next_cursor: str | None = None


@router.get(
    "/members:birthdays",
    response_model=BirthdayList,
    dependencies=[Scope("members:read")],
    summary="Members whose birthday falls on a day: member ids and time zones only",
    description=(
        "Members (erased ones excluded) born on `on` (MM-DD), by member_id, a page at a time. "
        "29 February birthdays are listed on 02-28 in years without a 29 February; `year` "
        "(default: this year in Asia/Shanghai) says which. 02-29 of a year without one → 422."
    ),
)
async def list_birthdays(
    runtime: RuntimeDep,
    on: Annotated[
        str,
        Query(
            max_length=5,
            description="the day, MM-DD (any day of a leap year)",
            json_schema_extra={"pattern": MONTH_DAY_PATTERN},
            examples=["05-17"],
        ),
    ],
    year: Annotated[int | None, Query(ge=1, le=9999)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Cursor = None,
) -> BirthdayList:
    page = await birthdays_on(runtime, on, year=year, limit=limit, cursor=cursor)
    return BirthdayList(
        items=[BirthdayMember(**item) for item in page.items], next_cursor=page.next_cursor
    )
