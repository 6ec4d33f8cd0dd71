"""HTTP route for member profiles."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path
from loyalty_shared.auth import Scope
from loyalty_shared.errors import NotFound
from loyalty_shared.service import RuntimeDep
from pydantic import BaseModel, Field
from sqlalchemy import select

from ..adapters.profile_store import profile_from_row
from ..adapters.tables import profiles, segment_members

router = APIRouter(prefix="/v1", tags=["profiles"])


class Rfm(BaseModel):
    recency_days: int | None = Field(description="whole days since the last paid order, now")
    frequency: int = Field(description="paid orders (= orders_count)")
    monetary_minor: int = Field(description="net spend (= spend_minor)")
    r: int | None = Field(description="1-5, 5 most recent; null until the recompute job ranks")
    f: int | None
    m: int | None
    scored_at: datetime | None


class ChurnReason(BaseModel):
    code: str
    detail: str


class ProfilePublic(BaseModel):
    member_id: str
    registered_at: datetime | None
    erased: bool
    orders_count: int = Field(description="paid orders that are not cancelled or fully refunded")
    first_order_at: datetime | None
    last_order_at: datetime | None
    spend_minor: int = Field(description="lifetime paid amount less refunds")
    spend_365d_minor: int
    orders_365d: int
    rfm: Rfm
    lifecycle_stage: str | None
    stage_changed_at: datetime | None
    buyer_weight: str = Field(description="none, light, medium, heavy by orders_365d")
    preference_tags: list[str]
    category_spend_minor: dict[str, int] = Field(description="line value per category, net")
    churn_risk: float | None
    churn_reasons: list[ChurnReason]
    churn_inputs: dict[str, Any] = Field(description="the figures the churn score came from")
    tier: str | None
    points_available: int
    points_pending: int
    segments: list[str]
    evaluated_at: datetime | None = Field(description="the time stage and churn were derived for")
    next_transition_at: datetime | None = Field(
        description="when time alone may next change stage, churn or a window"
    )


@router.get(
    "/profiles/{member_id}",
    response_model=ProfilePublic,
    dependencies=[Scope("members:read")],
    summary="A member's profile: RFM, lifecycle stage, buyer weight, tags, churn risk",
)
async def get_profile(
    member_id: Annotated[str, Path(max_length=64)], runtime: RuntimeDep
) -> ProfilePublic:
    async with runtime.engine.connect() as conn:
        row = (
            await conn.execute(select(profiles).where(profiles.c.member_id == member_id))
        ).first()
        if row is None:
            raise NotFound(f"no profile for member '{member_id}'")
        codes = list(
            await conn.scalars(
                select(segment_members.c.segment_code)
                .where(segment_members.c.member_id == member_id)
                .order_by(segment_members.c.segment_code)
            )
        )
    profile = profile_from_row(row)
    return ProfilePublic(
        member_id=profile.member_id,
        registered_at=profile.registered_at,
        erased=profile.erased_at is not None,
        orders_count=profile.orders_count,
        first_order_at=profile.first_order_at,
        last_order_at=profile.last_order_at,
        spend_minor=profile.spend_minor,
        spend_365d_minor=profile.spend_365d_minor,
        orders_365d=profile.orders_365d,
        rfm=Rfm(
            recency_days=profile.recency_days(runtime.clock.now()),
            frequency=profile.orders_count,
            monetary_minor=profile.spend_minor,
            r=profile.rfm_r,
            f=profile.rfm_f,
            m=profile.rfm_m,
            scored_at=profile.rfm_scored_at,
        ),
        lifecycle_stage=profile.lifecycle_stage,
        stage_changed_at=profile.stage_changed_at,
        buyer_weight=profile.buyer_weight,
        preference_tags=profile.preference_tags,
        category_spend_minor=profile.category_spend,
        churn_risk=profile.churn_risk,
        churn_reasons=[ChurnReason(**r) for r in profile.churn_reasons],
        churn_inputs=profile.churn_inputs,
        tier=profile.tier,
        points_available=profile.points_available,
        points_pending=profile.points_pending,
        segments=codes,
        evaluated_at=profile.evaluated_at,
        next_transition_at=profile.next_transition_at,
    )
