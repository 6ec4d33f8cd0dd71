"""HTTP routes for the tier ladder and a member's standing on it."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from loyalty_shared.api_types import RequestModel
from loyalty_shared.auth import Scope
from loyalty_shared.errors import NotFound
from loyalty_shared.service import RuntimeDep
from pydantic import BaseModel, ConfigDict, Field

from ..domain.tiers import MAX_MULTIPLIER, MAX_TIERS, MIN_MULTIPLIER, TIER_CODE, Tier, TierBenefits
from ..service_layer.tiers import ladder_view, replace_ladder, tier_progress

router = APIRouter(prefix="/v1", tags=["tiers"])

Metric = Literal["spend_365d", "lifetime_points", "order_count_365d"]
# The ladder is validated as a whole by `ladder_errors` (every broken rule named at its place),
# so the constraints below are the OpenAPI document's word for it, not pydantic's.


class TierBenefitsIn(RequestModel):
    model_config = ConfigDict(extra="forbid")

    discount_percent: int = Field(default=0, ge=0, le=100, description="member discount, % off")
    free_shipping: bool = False


class TierIn(RequestModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(
        min_length=1,
        max_length=64,
        description="lowercase a-z 0-9 - _, ≤ 32; unique in the ladder",
        json_schema_extra={"pattern": TIER_CODE.pattern, "maxLength": 32},
    )
    name: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00]*$")
    threshold: int = Field(
        le=10**15,
        description="the metric's value from which a member holds this tier",
        json_schema_extra={"minimum": 0},
    )
    points_multiplier: float = Field(
        description="purchase points multiplier, 1.0 to 10.0",
        json_schema_extra={"minimum": MIN_MULTIPLIER, "maximum": MAX_MULTIPLIER},
    )
    benefits: TierBenefitsIn | None = Field(
        default=None, description="carried by the member's tier card (`member.card_issued`)"
    )


class LadderUpdate(RequestModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "metric": "spend_365d",
                    "tiers": [
                        {
                            "code": "bronze",
                            "name": "Bronze",
                            "threshold": 0,
                            "points_multiplier": 1.0,
                        },
                        {
                            "code": "silver",
                            "name": "Silver",
                            "threshold": 100000,
                            "points_multiplier": 1.2,
                            "benefits": {"discount_percent": 5, "free_shipping": False},
                        },
                        {
                            "code": "gold",
                            "name": "Gold",
                            "threshold": 500000,
                            "points_multiplier": 1.5,
                            "benefits": {"discount_percent": 10, "free_shipping": True},
                        },
                    ],
                }
            ]
        },
    )

    metric: Metric = Field(
        description=(
            "spend_365d: net paid minor units in a rolling 365 days; lifetime_points: points "
            "earned, net of refunds' reversals; order_count_365d: paid orders in 365 days"
        )
    )
    tiers: list[TierIn] = Field(
        description="lowest first; thresholds start at 0 and strictly increase",
        json_schema_extra={
            "minItems": 1,
            "maxItems": MAX_TIERS,
            # the first tier's threshold is 0 (a branch of its own: `prefixItems` next to
            # `items` would take the first tier out of `items`)
            "allOf": [{"prefixItems": [{"properties": {"threshold": {"const": 0}}}]}],
        },
    )


class TierBenefitsPublic(BaseModel):
    discount_percent: int
    free_shipping: bool


class TierPublic(BaseModel):
    code: str
    name: str
    threshold: int
    points_multiplier: float
    benefits: TierBenefitsPublic


class LadderPublic(BaseModel):
    metric: Metric
    tiers: list[TierPublic]
    updated_at: datetime | None


class NextTier(BaseModel):
    code: str
    name: str
    threshold: int
    remaining: int = Field(description="how much more of the metric the next tier needs")


class TierProgress(BaseModel):
    member_id: str
    tier: str
    points_multiplier: float
    metric: Metric
    value: int = Field(description="the member's value of the ladder's metric now")
    as_of: datetime
    qualified_tier: str = Field(
        description="the tier the value reaches now (lower than `tier` until tier-review runs)"
    )
    next_tier: NextTier | None


@router.get(
    "/tiers",
    response_model=LadderPublic,
    dependencies=[Scope("members:read")],
    summary="The tier ladder",
)
async def read_ladder(runtime: RuntimeDep) -> LadderPublic:
    return LadderPublic(**await ladder_view(runtime))


@router.put(
    "/tiers",
    response_model=LadderPublic,
    dependencies=[Scope("admin")],
    summary="Set the tier ladder",
    description=(
        "Validated as a whole (422 `validation_error`): at least one tier, unique codes, the "
        "first threshold 0, thresholds strictly increasing, multipliers from 1.0 to 10.0. "
        "Moves nobody by itself: a member rises on their next paid order (or points credit "
        "under lifetime_points) and falls in the next `tier-review`."
    ),
)
async def put_ladder(body: LadderUpdate, runtime: RuntimeDep) -> LadderPublic:
    tiers = [
        Tier(
            code=t.code,
            name=t.name,
            threshold=t.threshold,
            points_multiplier=t.points_multiplier,
            benefits=TierBenefits(**(t.benefits.model_dump() if t.benefits else {})),
        )
        for t in body.tiers
    ]
    return LadderPublic(**await replace_ladder(runtime, body.metric, tiers))


@router.get(
    "/members/{member_id}/tier",
    response_model=TierProgress,
    dependencies=[Scope("members:read")],
    summary="A member's tier, metric and what the next tier needs",
)
async def read_member_tier(member_id: str, runtime: RuntimeDep) -> TierProgress:
    progress = await tier_progress(runtime, member_id)
    if progress is None:
        raise NotFound(f"no member '{member_id}'")
    return TierProgress(**progress)
