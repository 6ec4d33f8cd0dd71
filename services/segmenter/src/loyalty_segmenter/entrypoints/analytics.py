"""HTTP routes for programme analytics (`/v1/analytics/...`, scope members:read)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Path, Query
from loyalty_shared.api_types import TIME_ZONE_SCHEMA
from loyalty_shared.auth import Scope
from loyalty_shared.errors import NotFound, ProblemError
from loyalty_shared.service import RuntimeDep
from pydantic import AwareDatetime

from ..service_layer import analytics

router = APIRouter(prefix="/v1/analytics", tags=["analytics"], dependencies=[Scope("members:read")])

Start = Annotated[AwareDatetime | None, Query(description="RFC 3339; default: end - 30 days")]
End = Annotated[AwareDatetime | None, Query(description="RFC 3339; default: now")]
ActiveDays = Annotated[
    int, Query(ge=1, le=3650, description="a customer bought within this many days")
]
Month = Annotated[
    str,
    Query(pattern=r"^(19|2\d)\d{2}-(0[1-9]|1[0-2])$", description="YYYY-MM, years 1900 to 2999"),
]


def _invalid(loc: list[str], msg: str) -> ProblemError:
    return ProblemError(422, "validation_error", msg, errors=[{"loc": loc, "msg": msg}])


def _period(
    runtime: Any, start: datetime | None, end: datetime | None
) -> tuple[datetime, datetime]:
    end = end or runtime.clock.now()
    start = start or end - timedelta(days=30)
    if start >= end:
        raise _invalid(["query", "start"], "start must be before end")
    return start, end


@router.get("/retention", summary="Retention rate (E - N) / S x 100 over a period")
async def retention(
    runtime: RuntimeDep, start: Start = None, end: End = None, active_days: ActiveDays = 360
) -> dict[str, Any]:
    start, end = _period(runtime, start, end)
    return await analytics.retention(runtime, start, end, active_days)


@router.get("/leaky-bucket", summary="Customers gained versus lost, month by month")
async def leaky_bucket(
    runtime: RuntimeDep,
    start_month: Month,
    end_month: Month,
    timezone: Annotated[str, Query(max_length=64, json_schema_extra=TIME_ZONE_SCHEMA)] = (
        "Asia/Shanghai"
    ),
    active_days: ActiveDays = 360,
) -> dict[str, Any]:
    if start_month > end_month:
        raise _invalid(["query", "start_month"], "start_month must not be after end_month")
    first_year, first_month = (int(p) for p in start_month.split("-"))
    last_year, last_month = (int(p) for p in end_month.split("-"))
    if (last_year - first_year) * 12 + last_month - first_month >= 36:
        raise _invalid(["query", "end_month"], "at most 36 months at a time")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise _invalid(["query", "timezone"], f"unknown time zone {timezone!r}") from exc
    return await analytics.leaky_bucket(runtime, start_month, end_month, timezone, active_days)


@router.get("/repeat-purchase", summary="Share of buyers who bought at least twice")
async def repeat_purchase(
    runtime: RuntimeDep, start: Start = None, end: End = None
) -> dict[str, Any]:
    start, end = _period(runtime, start, end)
    return await analytics.repeat_purchase(runtime, start, end)


@router.get("/members-vs-guests", summary="Spend per order and orders per buyer, both groups")
async def members_vs_guests(
    runtime: RuntimeDep, start: Start = None, end: End = None
) -> dict[str, Any]:
    start, end = _period(runtime, start, end)
    return await analytics.members_vs_guests(runtime, start, end)


@router.get("/points-liability", summary="Outstanding points now, and movements in a period")
async def points_liability(
    runtime: RuntimeDep, start: Start = None, end: End = None
) -> dict[str, Any]:
    start, end = _period(runtime, start, end)
    return await analytics.points_liability(runtime, start, end)


@router.get("/lifecycle", summary="Members per lifecycle stage and buyer weight, now")
async def lifecycle(runtime: RuntimeDep) -> dict[str, Any]:
    return await analytics.lifecycle_mix(runtime)


@router.get(
    "/campaigns/{code}",
    summary="Issued, redeemed, redemption rate; receivers' revenue against the holdout",
)
async def campaign_results(
    code: Annotated[str, Path(max_length=64)],
    runtime: RuntimeDep,
    window_days: Annotated[
        int,
        Query(
            ge=1,
            le=365,
            description="each member's measurement window: the days from their first coupon "
            "(receivers) or first holdout assignment (holdout)",
        ),
    ] = 30,
) -> dict[str, Any]:
    """Receivers against the campaign's holdout group (`coupon.holdout_assigned`): members,
    buyers, orders, revenue, revenue per member and response rate per group, and the lift;
    against non-receivers when no holdout member has been seen. 404 when neither a coupon nor
    a holdout member of the campaign has been seen."""
    result = await analytics.campaign_results(runtime, code, window_days)
    if result is None:
        raise NotFound(f"no coupon or holdout member of campaign '{code}' has been seen")
    return result
