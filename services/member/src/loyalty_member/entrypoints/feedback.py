"""HTTP routes for feedback: survey answers and complaint tickets (see the service README)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self

from fastapi import APIRouter, Query
from loyalty_shared.api_types import AwareDatetime, RequestModel
from loyalty_shared.auth import Scope
from loyalty_shared.paging import Cursor
from loyalty_shared.service import RuntimeDep
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..service_layer.feedback import (
    AnswerSurvey,
    ChangeComplaintStatus,
    OpenComplaint,
    answer_survey,
    change_complaint_status,
    get_complaint,
    list_complaints,
    list_surveys,
    open_complaint,
)

router = APIRouter(prefix="/v1", tags=["feedback"])

ComplaintStatus = Literal["received", "acknowledged", "investigating", "resolved", "closed"]
ComplaintCategory = Literal["product", "service", "delivery", "payment", "loyalty", "other"]
RecommendLevel = Literal["very_likely", "possible", "unlikely"]
# Strings are stripped first (`str_strip_whitespace`): a non-blank one has a non-space character.
NOT_BLANK: dict[str, Any] = {"pattern": r"\S"}
Id = Annotated[str, Field(min_length=1, max_length=32, json_schema_extra=NOT_BLANK)]
Limit = Annotated[int, Query(ge=1, le=500)]

_BUSINESS_TIME = (
    "when it happened (default: now); the past is fine from 1970 on, more than 5 minutes "
    "ahead is refused (422 `validation_error`)"
)


class _Request(RequestModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: object) -> object:
        if isinstance(value, str) and "\x00" in value:  # PostgreSQL text cannot hold U+0000
            raise ValueError("must not contain the NUL character")
        return value


# ---------------------------------------------------------------------------------------------
# Surveys
# ---------------------------------------------------------------------------------------------


class SurveyAnswerCreate(_Request):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"score": 4, "recommend": 9, "comment": "friendly staff", "order_id": "01JD0RDER"}
            ],
            # a score, a recommend likelihood or both (`_answers_something`)
            "anyOf": [
                {"required": ["score"], "properties": {"score": {"type": "integer"}}},
                {"required": ["recommend"], "properties": {"recommend": {"type": "integer"}}},
            ],
        }
    )

    score: int | None = Field(
        default=None,
        strict=True,
        ge=1,
        le=5,
        description="satisfaction 1-5: very dissatisfied, dissatisfied, neutral, satisfied, very",
    )
    recommend: int | None = Field(
        default=None, strict=True, ge=0, le=10, description="likelihood to recommend us, 0-10"
    )
    comment: str | None = Field(
        default=None, max_length=2000, description="free text; kept here, never in an event"
    )
    order_id: Id | None = Field(default=None, description="the member's order it is about")
    ticket_id: Id | None = Field(
        default=None, description="the member's complaint ticket it follows up"
    )
    occurred_at: AwareDatetime | None = Field(default=None, description=_BUSINESS_TIME)

    @model_validator(mode="after")
    def _answers_something(self) -> Self:
        if self.score is None and self.recommend is None:
            raise ValueError("answer with a score (1-5), a recommend likelihood (0-10) or both")
        if self.comment == "":
            self.comment = None
        return self


class SurveyAnswerPublic(BaseModel):
    survey_id: str
    member_id: str
    score: int | None
    recommend: int | None
    recommend_level: RecommendLevel | None = Field(
        description="9-10 very_likely, 7-8 possible, 0-6 unlikely"
    )
    comment: str | None
    order_id: str | None
    ticket_id: str | None
    occurred_at: datetime
    created_at: datetime


class SurveyAnswerPage(BaseModel):
    items: list[SurveyAnswerPublic]
    next_cursor: str | None


@router.post(
    "/members/{member_id}/surveys",
    status_code=201,
    response_model=SurveyAnswerPublic,
    dependencies=[Scope("members:write")],
    summary="Record a member's survey answer (satisfaction and/or recommend likelihood)",
    responses={
        404: {"description": "unknown or erased member (`not_found`)"},
        409: {"description": "already answered about this order or ticket"},
        422: {"description": "`validation_error`, `unknown_order`, `unknown_complaint`"},
    },
)
async def create_survey_answer(
    member_id: str, body: SurveyAnswerCreate, runtime: RuntimeDep
) -> SurveyAnswerPublic:
    row = await answer_survey(runtime, AnswerSurvey(member_id=member_id, **body.model_dump()))
    return SurveyAnswerPublic(**row)


@router.get(
    "/members/{member_id}/surveys",
    response_model=SurveyAnswerPage,
    dependencies=[Scope("members:read")],
    summary="A member's survey answers, newest first",
)
async def get_survey_answers(
    member_id: str, runtime: RuntimeDep, limit: Limit = 50, cursor: Cursor = None
) -> SurveyAnswerPage:
    page = await list_surveys(runtime, member_id, limit=limit, cursor=cursor)
    return SurveyAnswerPage(**page)


# ---------------------------------------------------------------------------------------------
# Complaints
# ---------------------------------------------------------------------------------------------


class ComplaintCreate(_Request):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "member_id": "01JD4M3MB3R0000000000000AB",
                    "subject": "Delivery two days late",
                    "description": "The order arrived two days after the promised date.",
                    "channel": "phone",
                    "category": "delivery",
                }
            ]
        }
    )

    member_id: Id
    subject: str = Field(
        min_length=1,
        max_length=200,
        description="free text; never in an event",
        json_schema_extra=NOT_BLANK,
    )
    description: str = Field(
        min_length=1,
        max_length=5000,
        description="free text; never in an event",
        json_schema_extra=NOT_BLANK,
    )
    order_id: Id | None = Field(default=None, description="the member's order it is about")
    channel: str | None = Field(
        default=None,
        pattern=r"^[a-z][a-z0-9_-]{0,31}$",
        description="where it was received: a code such as store, phone, online, wechat",
    )
    category: ComplaintCategory = "other"
    occurred_at: AwareDatetime | None = Field(
        default=None, description="when it was received; " + _BUSINESS_TIME
    )


class ComplaintStatusChange(_Request):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"status": "acknowledged", "note": "called the member back"}]
        }
    )

    status: ComplaintStatus
    note: str | None = Field(
        default=None, max_length=2000, description="free text; kept here, never in an event"
    )
    occurred_at: AwareDatetime | None = Field(
        default=None, description="when it moved; not before its last change; " + _BUSINESS_TIME
    )


class StatusChangePublic(BaseModel):
    from_status: ComplaintStatus | None
    to_status: ComplaintStatus
    note: str | None
    occurred_at: datetime


class ComplaintPublic(BaseModel):
    ticket_id: str
    member_id: str
    subject: str
    description: str
    category: ComplaintCategory
    channel: str | None
    order_id: str | None
    status: ComplaintStatus
    next_statuses: list[ComplaintStatus] = Field(description="where the ticket may move next")
    timezone: str = Field(description="the member's timezone the deadline was set in")
    received_at: datetime
    response_due_at: datetime = Field(description="one working day after receipt")
    responded_at: datetime | None = Field(description="when it first left `received`")
    responded_in_time: bool | None
    overdue: bool = Field(description="still `received` and past its response deadline")
    status_changed_at: datetime
    created_at: datetime
    updated_at: datetime


class ComplaintDetail(ComplaintPublic):
    history: list[StatusChangePublic]


class ComplaintPage(BaseModel):
    items: list[ComplaintPublic]
    next_cursor: str | None


@router.post(
    "/complaints",
    status_code=201,
    response_model=ComplaintDetail,
    dependencies=[Scope("members:write")],
    summary="Open a complaint ticket",
    responses={
        404: {"description": "unknown or erased member (`not_found`)"},
        422: {"description": "`validation_error`, `unknown_order`"},
    },
)
async def create_complaint(body: ComplaintCreate, runtime: RuntimeDep) -> ComplaintDetail:
    row = await open_complaint(runtime, OpenComplaint(**body.model_dump()))
    return ComplaintDetail(**row)


@router.post(
    "/complaints/{ticket_id}/status",
    response_model=ComplaintDetail,
    dependencies=[Scope("members:write")],
    summary="Move a complaint ticket forward",
    responses={
        404: {"description": "unknown ticket (`not_found`)"},
        409: {"description": "backwards, unchanged or after closed (`invalid_status_transition`)"},
    },
)
async def move_complaint(
    ticket_id: str, body: ComplaintStatusChange, runtime: RuntimeDep
) -> ComplaintDetail:
    row = await change_complaint_status(
        runtime, ChangeComplaintStatus(ticket_id=ticket_id, **body.model_dump())
    )
    return ComplaintDetail(**row)


@router.get(
    "/complaints/{ticket_id}",
    response_model=ComplaintDetail,
    dependencies=[Scope("members:read")],
    summary="One complaint ticket with its history",
)
async def read_complaint(ticket_id: str, runtime: RuntimeDep) -> ComplaintDetail:
    return ComplaintDetail(**await get_complaint(runtime, ticket_id))


@router.get(
    "/complaints",
    response_model=ComplaintPage,
    dependencies=[Scope("members:read")],
    summary="Complaint tickets, newest first; overdue=true lists those past their deadline",
)
async def get_complaints(
    runtime: RuntimeDep,
    overdue: bool | None = None,
    status: ComplaintStatus | None = None,
    member_id: Annotated[str | None, Query(max_length=32)] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> ComplaintPage:
    page: dict[str, Any] = await list_complaints(
        runtime, overdue=overdue, status=status, member_id=member_id, limit=limit, cursor=cursor
    )
    return ComplaintPage(**page)
