"""HTTP routes for points redemptions and their cancellation."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path
from loyalty_shared.api_types import RequestModel
from loyalty_shared.auth import require_scope
from loyalty_shared.errors import ProblemError
from loyalty_shared.service import RuntimeDep
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request

from ..service_layer.accounts import cancel_redemption, redeem

router = APIRouter(prefix="/v1", tags=["redemptions"])


async def checkout_or_points_writer(request: Request) -> None:
    """Redemptions are what a checkout does (events:write) or a points operator (points:write)."""
    for scope in ("events:write", "points:write"):
        try:
            await require_scope(scope)(request)
            return
        except ProblemError as exc:
            if exc.status != 403:
                raise
    raise ProblemError(403, "forbidden", "this API key lacks 'events:write' or 'points:write'")


class RedemptionCreate(RequestModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "member_id": "01JD4M3MB3R0000000000000AB",
                    "points": 300,
                    "reason": "points paid part of an order",
                    "order_id": "sh-001-20261124-0042",
                }
            ]
        },
    )

    member_id: str = Field(min_length=1, max_length=32)
    points: int = Field(gt=0, le=10**9)
    reason: str = Field(min_length=1, max_length=500, pattern=r"\S")
    order_id: str | None = Field(default=None, max_length=64)


class RedemptionPublic(BaseModel):
    redemption_id: str
    member_id: str
    points: int
    status: Literal["redeemed", "cancelled"]
    available_after: int


@router.post(
    "/redemptions",
    status_code=201,
    response_model=RedemptionPublic,
    dependencies=[Depends(checkout_or_points_writer)],
    summary="Spend points; 422 insufficient_points changes nothing",
)
async def post_redemption(body: RedemptionCreate, runtime: RuntimeDep) -> RedemptionPublic:
    return RedemptionPublic(
        **await redeem(
            runtime,
            member_id=body.member_id,
            points=body.points,
            reason=body.reason.strip(),
            order_id=body.order_id,
        )
    )


@router.post(
    "/redemptions/{redemption_id}/cancel",
    response_model=RedemptionPublic,
    dependencies=[Depends(checkout_or_points_writer)],
    summary="Give a redemption's points back to the lots they came from",
)
async def post_cancel(
    redemption_id: Annotated[str, Path(max_length=32)], runtime: RuntimeDep
) -> RedemptionPublic:
    return RedemptionPublic(**await cancel_redemption(runtime, redemption_id))
