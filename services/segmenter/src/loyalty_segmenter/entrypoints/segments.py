"""HTTP routes for segments: define (scope admin), preview, list, and page through members."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from loyalty_shared.api_types import DocumentedAs, RequestModel
from loyalty_shared.auth import Scope
from loyalty_shared.paging import Cursor
from loyalty_shared.service import RuntimeDep
from pydantic import BaseModel, ConfigDict, Field

from ..domain.rules import FIELDS, OPS
from ..service_layer import segments as use_cases
from .rule_schema import SegmentRule

router = APIRouter(prefix="/v1", tags=["segments"])

CODE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
RULE_DOC = (
    'JSON rule: {"all"|"any": [rule, ...]}, {"not": rule} or {"field", "op", "value"}; '
    "see GET /v1/segments:fields"
)
# A rule as sent: the rule parser judges it (every problem named at its place in the rule);
# the OpenAPI document declares its shape (`SegmentRule`).
Rule = Annotated[Any, DocumentedAs(SegmentRule)]


class SegmentCreate(RequestModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "code": "winback-easy-high-spend",
                    "name": "Easy win-backs who spent 1000 or more",
                    "rule": {
                        "all": [
                            {"field": "lifecycle_stage", "op": "eq", "value": "easy_winback"},
                            {"field": "spend_minor", "op": "gte", "value": 100000},
                        ]
                    },
                }
            ]
        },
    )

    code: str = Field(pattern=CODE, description="stable id, e.g. winback-easy-high-spend")
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    rule: Rule = Field(description=RULE_DOC)


class SegmentReplace(RequestModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "Easy win-backs who spent 1000 or more",
                    "description": "for the Q4 win-back campaign",
                    "rule": {
                        "all": [
                            {"field": "lifecycle_stage", "op": "eq", "value": "easy_winback"},
                            {"field": "spend_minor", "op": "gte", "value": 100000},
                        ]
                    },
                }
            ]
        },
    )

    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    rule: Rule = Field(description=RULE_DOC)


class SegmentPublic(BaseModel):
    code: str
    name: str
    description: str | None
    rule: dict[str, Any] = Field(
        description="the rule in its canonical form, a `SegmentRule` (times in UTC)"
    )
    time_relative: bool = Field(description="reads day counts: re-evaluated whole by the job")
    uses_rfm_scores: bool = Field(description="reads rfm.r/f/m: re-evaluated after re-ranking")
    members_count: int
    created_at: datetime
    updated_at: datetime


class SegmentPage(BaseModel):
    items: list[SegmentPublic]
    next_cursor: str | None


class PreviewRequest(RequestModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "rule": {
                        "any": [
                            {"field": "rfm.r", "op": "gte", "value": 4},
                            {"not": {"field": "registered", "op": "eq", "value": True}},
                        ]
                    }
                }
            ]
        },
    )

    rule: Rule = Field(description=RULE_DOC)


class PreviewResult(BaseModel):
    count: int
    sample: list[str] = Field(description=f"up to {use_cases.SAMPLE_SIZE} member ids")
    as_of: datetime


class SegmentMember(BaseModel):
    member_id: str
    entered_at: datetime
    lifecycle_stage: str | None
    buyer_weight: str
    churn_risk: float | None
    tier: str | None


class SegmentMemberPage(BaseModel):
    items: list[SegmentMember]
    next_cursor: str | None


CodePath = Annotated[str, Path(max_length=64)]
Limit = Annotated[int, Query(ge=1, le=500)]


@router.get(
    "/segments:fields",
    dependencies=[Scope("members:read")],
    summary="The profile fields a rule may use, their types and ops",
)
async def rule_fields() -> dict[str, Any]:
    return {
        "items": [
            {
                "field": spec.name,
                "type": spec.type,
                "ops": sorted(OPS[spec.type]),
                "values": list(spec.values) or None,
                "description": spec.description,
            }
            for spec in FIELDS.values()
        ]
    }


@router.post(
    "/segments",
    status_code=201,
    response_model=SegmentPublic,
    dependencies=[Scope("admin")],
    summary="Define a segment; its members are evaluated at once (segment.entered each)",
)
async def create_segment(body: SegmentCreate, runtime: RuntimeDep) -> SegmentPublic:
    view = await use_cases.create_segment(
        runtime, code=body.code, name=body.name, description=body.description, raw_rule=body.rule
    )
    return SegmentPublic(**view)


@router.put(
    "/segments/{code}",
    response_model=SegmentPublic,
    dependencies=[Scope("admin")],
    summary="Change a segment's name or rule; members are re-evaluated at once",
)
async def replace_segment(
    code: CodePath, body: SegmentReplace, runtime: RuntimeDep
) -> SegmentPublic:
    view = await use_cases.replace_segment(
        runtime, code, name=body.name, description=body.description, raw_rule=body.rule
    )
    return SegmentPublic(**view)


@router.post(
    "/segments:preview",
    response_model=PreviewResult,
    dependencies=[Scope("admin")],
    summary="How many members a rule holds now, and a sample; changes nothing",
)
async def preview_segment(body: PreviewRequest, runtime: RuntimeDep) -> PreviewResult:
    return PreviewResult(**await use_cases.preview(runtime, body.rule))


@router.get(
    "/segments",
    response_model=SegmentPage,
    dependencies=[Scope("members:read")],
    summary="Segments, by code",
)
async def list_segments(
    runtime: RuntimeDep, limit: Limit = 50, cursor: Cursor = None
) -> SegmentPage:
    items, next_cursor = await use_cases.list_segments(runtime, limit, cursor)
    return SegmentPage(items=[SegmentPublic(**i) for i in items], next_cursor=next_cursor)


@router.get(
    "/segments/{code}",
    response_model=SegmentPublic,
    dependencies=[Scope("members:read")],
    summary="One segment and its member count",
)
async def get_segment(code: CodePath, runtime: RuntimeDep) -> SegmentPublic:
    return SegmentPublic(**await use_cases.get_segment(runtime, code))


@router.get(
    "/segments/{code}/members",
    response_model=SegmentMemberPage,
    dependencies=[Scope("members:read")],
    summary="The segment's members, by member_id, page by page",
)
async def segment_members(
    code: CodePath, runtime: RuntimeDep, limit: Limit = 50, cursor: Cursor = None
) -> SegmentMemberPage:
    items, next_cursor = await use_cases.members_page(runtime, code, limit, cursor)
    return SegmentMemberPage(items=[SegmentMember(**i) for i in items], next_cursor=next_cursor)
