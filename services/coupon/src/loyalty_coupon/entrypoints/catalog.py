"""HTTP routes for coupon templates and campaigns, and bulk issue with its job progress."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal, Self, Union

from fastapi import APIRouter, Path, Query
from loyalty_shared import api_types
from loyalty_shared.api_types import DocumentedAs, RequestModel
from loyalty_shared.auth import Scope
from loyalty_shared.paging import Cursor
from loyalty_shared.service import RuntimeDep
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    create_model,
    model_validator,
)

from ..domain.campaigns import TRIGGER_PARAMS
from ..domain.templates import CouponTemplate
from ..service_layer import bulk, catalog

router = APIRouter(prefix="/v1", tags=["templates and campaigns"])

CODE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
CodePath = Annotated[str, Path(max_length=64)]
Limit = Annotated[int, Query(ge=1, le=500)]
_BIG = 10**12


def _at_least(minimum: int) -> Any:
    """A lower bound `template_problems` checks (naming every field at once), documented."""
    return Field(json_schema_extra={"minimum": minimum})


def _when_kind(kinds: list[str], then: dict[str, Any]) -> dict[str, Any]:
    return {"if": {"properties": {"kind": {"enum": kinds}}}, "then": then}


# The terms `template_problems` checks across fields, as the OpenAPI document states them
# (422 `validation_error` naming each field). Not stated: a window ends after it starts.
_TEMPLATE_TERMS: list[Any] = [
    _when_kind(["amount_off"], {"required": ["value"], "properties": {"value": {"minimum": 1}}}),
    _when_kind(
        ["percent_off"],
        {"required": ["value"], "properties": {"value": {"minimum": 1, "maximum": 100}}},
    ),
    _when_kind(["free_shipping", "gift"], {"properties": {"value": {"const": 0}}}),
    _when_kind(
        ["amount_off", "free_shipping", "gift"],
        {"properties": {"max_discount_minor": {"type": "null"}}},
    ),
    _when_kind(
        ["gift"],
        {"required": ["gift_sku"], "properties": {"gift_sku": {"type": "string", "minLength": 1}}},
    ),
    _when_kind(
        ["amount_off", "percent_off", "free_shipping"],
        {"properties": {"gift_sku": {"maxLength": 0}}},
    ),
    {
        "if": {"required": ["valid_days"], "properties": {"valid_days": {"type": "integer"}}},
        "then": {"properties": {"starts_at": {"type": "null"}, "ends_at": {"type": "null"}}},
        "else": {"required": ["ends_at"], "properties": {"ends_at": {"type": "string"}}},
    },
]


class TemplateCreate(RequestModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "code": "NEW-20OFF",
                    "name": "20 yuan off your first order over 100",
                    "kind": "amount_off",
                    "value": 2000,
                    "min_spend_minor": 10000,
                    "valid_days": 30,
                    "per_member_limit": 1,
                    "stock": 10000,
                },
                {
                    "code": "TEA-15PCT",
                    "name": "15% off tea, at most 30 yuan",
                    "kind": "percent_off",
                    "value": 15,
                    "max_discount_minor": 3000,
                    "categories": ["tea"],
                    "starts_at": "2026-12-01T00:00:00+08:00",
                    "ends_at": "2027-01-01T00:00:00+08:00",
                    "points_cost": 500,
                },
            ],
            "allOf": _TEMPLATE_TERMS,
        },
    )

    code: str = Field(pattern=CODE, description="your own code, e.g. NEW-20OFF")
    name: str = Field(min_length=1, max_length=200)
    kind: Literal["amount_off", "percent_off", "free_shipping", "gift"]
    value: Annotated[int, _at_least(0)] = Field(
        default=0, le=_BIG, description="amount_off: minor units; percent_off: 1-100; else 0"
    )
    min_spend_minor: Annotated[int, _at_least(0)] = Field(default=0, le=_BIG)
    max_discount_minor: Annotated[int, _at_least(1), Field(le=_BIG)] | None = Field(
        default=None, description="percent_off cap"
    )
    gift_sku: str | None = Field(default=None, max_length=64, description="gift coupons only")
    categories: list[Annotated[str, Field(max_length=64, json_schema_extra={"pattern": r"\S"})]] = (
        Field(
            default_factory=list,
            max_length=100,
            description="the coupon applies only to lines in these categories (empty: whole cart)",
        )
    )
    valid_days: Annotated[int, _at_least(1), Field(le=3650)] | None = Field(
        default=None, description="valid N days from issue; or a window, not both"
    )
    starts_at: api_types.AwareDatetime | None = Field(
        default=None, description="fixed window start"
    )
    ends_at: api_types.AwareDatetime | None = Field(
        default=None, description="fixed window end (without valid_days, required)"
    )
    per_member_limit: Annotated[int, _at_least(1)] = Field(default=1, le=10**6)
    stock: Annotated[int, _at_least(0), Field(le=_BIG)] | None = Field(
        default=None, description="coupons to issue at most"
    )
    points_cost: Annotated[int, _at_least(1), Field(le=10**9)] | None = Field(
        default=None, description="price in points (coupons:exchange)"
    )
    currency: str = Field(default="CNY", pattern=r"^[A-Z]{3}$")

    def to_domain(self) -> CouponTemplate:
        return CouponTemplate(**{**self.model_dump(), "categories": tuple(self.categories)})


class TemplatePublic(TemplateCreate):
    # A response: rows as stored, validated as before (the strictness is for request bodies).
    model_config = ConfigDict(extra="ignore", strict=False, json_schema_extra=None)

    issued_count: int
    stock_left: int | None


class TemplatePage(BaseModel):
    items: list[TemplatePublic]
    next_cursor: str | None


@router.post(
    "/coupon-templates",
    status_code=201,
    response_model=TemplatePublic,
    dependencies=[Scope("coupons:write")],
    summary="Create a coupon template (invalid terms: 422 naming each field)",
)
async def post_template(body: TemplateCreate, runtime: RuntimeDep) -> dict[str, Any]:
    return await catalog.create_template(runtime, body.to_domain())


@router.get(
    "/coupon-templates",
    response_model=TemplatePage,
    dependencies=[Scope("members:read")],
    summary="Coupon templates, by code",
)
async def list_templates(
    runtime: RuntimeDep, limit: Limit = 50, cursor: Cursor = None
) -> dict[str, Any]:
    items, next_cursor = await catalog.list_templates(runtime, limit, cursor)
    return {"items": items, "next_cursor": next_cursor}


@router.get(
    "/coupon-templates/{code}",
    response_model=TemplatePublic,
    dependencies=[Scope("members:read")],
    summary="One coupon template, with what is issued and left",
)
async def get_template(code: CodePath, runtime: RuntimeDep) -> dict[str, Any]:
    return await catalog.get_template(runtime, code)


def _trigger(kind: str) -> type[BaseModel]:
    """The shape of one trigger type, from the table `trigger_problems` checks it by."""
    fields: dict[str, Any] = {"type": (Literal[kind], ...)}
    for name, (required, minimum) in TRIGGER_PARAMS[kind].items():
        value: Any = (
            Annotated[int, Field(ge=minimum)]
            if minimum is not None
            else Annotated[str, Field(min_length=1, max_length=64, pattern=r"\S")]
        )
        fields[name] = (value, ...) if required else (value | None, None)
    title = "".join(p.capitalize() for p in kind.replace(".", "_").split("_"))
    return create_model(
        f"{title}Trigger",
        __config__=ConfigDict(extra="forbid"),
        __doc__=f"A `{kind}` trigger.",
        **fields,
    )


class Trigger(RootModel[Union[tuple(_trigger(kind) for kind in TRIGGER_PARAMS)]]):  # type: ignore[misc]  # noqa: UP007
    """What makes a campaign issue its coupons: `{type, ...}` with the type's parameters.
    The service checks it (422 `validation_error` at `trigger.<field>`); this is the OpenAPI
    document's word for what it takes."""


class CampaignCreate(RequestModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "code": "winback-2026q4",
                    "name": "Win-back: 20 off for easy win-backs",
                    "template_codes": ["NEW-20OFF"],
                    "trigger": {"type": "segment.entered", "segment_code": "easy-winback"},
                    "starts_at": "2026-10-01T00:00:00+08:00",
                    "ends_at": "2027-01-01T00:00:00+08:00",
                    "budget": 5000,
                    "holdout_percent": 10,
                }
            ]
        },
    )

    code: str = Field(pattern=CODE)
    name: str | None = Field(default=None, max_length=200)
    template_codes: list[Annotated[str, Field(max_length=64)]] = Field(min_length=1, max_length=20)
    trigger: Annotated[dict[str, Any], DocumentedAs(Trigger)] = Field(
        description=(
            "{type, ...}: member.registered | first_order | nth_order {n} | segment.entered "
            "{segment_code} | tier_changed {tier} | birthday | checkin_streak {days} | manual"
        )
    )
    starts_at: api_types.AwareDatetime | None = None
    ends_at: api_types.AwareDatetime | None = None
    budget: int | None = Field(default=None, ge=1, le=_BIG, description="most coupons to issue")
    holdout_percent: float = Field(
        default=0, ge=0, le=100, description="share of members kept as a control group"
    )


class CampaignResults(BaseModel):
    members_issued: int
    members_holdout: int
    members_not_issued: int
    coupons_redeemed: int


class CampaignPublic(BaseModel):
    code: str
    name: str
    template_codes: list[str]
    trigger: dict[str, Any]
    starts_at: AwareDatetime | None
    ends_at: AwareDatetime | None
    budget: int | None
    issued_count: int
    budget_left: int | None
    holdout_percent: float
    status: Literal["active", "paused"]
    created_at: AwareDatetime
    results: CampaignResults | None = None


class CampaignPage(BaseModel):
    items: list[CampaignPublic]
    next_cursor: str | None


class CampaignChange(RequestModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"status": "paused"}]}
    )

    status: Literal["active", "paused"]


@router.post(
    "/campaigns",
    status_code=201,
    response_model=CampaignPublic,
    dependencies=[Scope("coupons:write")],
    summary="Create a campaign: templates, a trigger, dates, budget, holdout",
)
async def post_campaign(body: CampaignCreate, runtime: RuntimeDep) -> dict[str, Any]:
    return await catalog.create_campaign(runtime, body.model_dump())


@router.get(
    "/campaigns",
    response_model=CampaignPage,
    dependencies=[Scope("members:read")],
    summary="Campaigns, by code",
)
async def list_campaigns(
    runtime: RuntimeDep, limit: Limit = 50, cursor: Cursor = None
) -> dict[str, Any]:
    items, next_cursor = await catalog.list_campaigns(runtime, limit, cursor)
    return {"items": items, "next_cursor": next_cursor}


@router.get(
    "/campaigns/{code}",
    response_model=CampaignPublic,
    dependencies=[Scope("members:read")],
    summary="A campaign and its results so far (issued, holdout, redeemed)",
)
async def get_campaign(code: CodePath, runtime: RuntimeDep) -> dict[str, Any]:
    return await catalog.get_campaign(runtime, code)


@router.patch(
    "/campaigns/{code}",
    response_model=CampaignPublic,
    dependencies=[Scope("coupons:write")],
    summary="Pause or resume a campaign",
)
async def patch_campaign(
    code: CodePath, body: CampaignChange, runtime: RuntimeDep
) -> dict[str, Any]:
    return await catalog.set_campaign_status(runtime, code, body.status)


class BulkIssue(RequestModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"segment_code": "easy-winback"},
                {"member_ids": ["01JD4M3MB3R0000000000000AB", "01JD4M3MB3R0000000000000AC"]},
            ],
            # one of them (`_one_source`)
            "oneOf": [
                {
                    "required": ["member_ids"],
                    "properties": {
                        "member_ids": {"type": "array"},
                        "segment_code": {"type": "null"},
                    },
                },
                {
                    "required": ["segment_code"],
                    "properties": {
                        "segment_code": {"type": "string"},
                        "member_ids": {"type": "null"},
                    },
                },
            ],
        },
    )

    member_ids: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        default=None, min_length=1, max_length=50_000
    )
    segment_code: str | None = Field(default=None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.member_ids is None) == (self.segment_code is None):
            raise ValueError("give member_ids or segment_code, one of them")
        return self


class JobAccepted(BaseModel):
    job_id: str
    status: str


class JobPublic(BaseModel):
    job_id: str
    kind: Literal["bulk_issue"]
    campaign_code: str
    source: Literal["member_ids", "segment", "birthdays"]
    segment_code: str | None
    birthdays_on: date | None = Field(
        default=None, description="`birthdays` jobs: the day (Asia/Shanghai) it issues for"
    )
    status: Literal["queued", "running", "completed", "failed"]
    total: int | None = Field(description="members to go through (a segment's is not known)")
    processed: int
    members_issued: int
    coupons_issued: int
    holdout: int
    not_issued: int = Field(description="members refused: budget, stock or per-member limit")
    duplicates: int = Field(description="members this job (or this year's birthday) had served")
    pages_done: int
    attempts: int = Field(
        description="failures in a row of the segmenter (member service); retried every minute"
    )
    last_error: str | None
    created_at: AwareDatetime
    updated_at: AwareDatetime
    finished_at: AwareDatetime | None


@router.post(
    "/campaigns/{code}/issue",
    status_code=202,
    response_model=JobAccepted,
    dependencies=[Scope("coupons:write")],
    summary="Bulk issue a campaign to members or a segment, as a background job",
)
async def post_bulk_issue(code: CodePath, body: BulkIssue, runtime: RuntimeDep) -> dict[str, Any]:
    return await bulk.start_bulk_issue(runtime, code, body.member_ids, body.segment_code)


@router.get(
    "/jobs/{job_id}",
    response_model=JobPublic,
    dependencies=[Scope("members:read")],
    summary="Progress of a bulk issue",
)
async def get_job(
    job_id: Annotated[str, Path(max_length=32)], runtime: RuntimeDep
) -> dict[str, Any]:
    return await bulk.get_job(runtime, job_id)
