"""HTTP routes for members."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal
from zoneinfo import available_timezones

from fastapi import APIRouter, Query, Response
from loyalty_shared.api_types import TIME_ZONE_SCHEMA, Date, RequestModel
from loyalty_shared.auth import Scope
from loyalty_shared.errors import NotFound, Unprocessable
from loyalty_shared.paging import Cursor, cursor_after, encode_cursor
from loyalty_shared.service import RuntimeDep
from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator

from ..service_layer.members import (
    add_identity,
    erase_member,
    find_members,
    list_identities,
    update_member,
)
from ..service_layer.registration import RegisterMember, get_member, register_member

router = APIRouter(prefix="/v1", tags=["members"])

CONSENT_CHANNELS = {"email", "sms", "wechat", "push"}
_TIMEZONES = available_timezones()

# Constraints the OpenAPI document states and code checks (not pydantic): a phone's shape is
# checked with its number (422 `invalid_phone`, contract §4), a time zone is looked up, consent
# channels are named in the error. The shape of a phone `normalise_phone` takes: digits and
# the usual separators, 4 to 32 of them once surrounding blanks are stripped.
PHONE_PATTERN = r"^\s*[0-9()+.-][0-9 ()+.-]{2,30}[0-9()+.-]\s*$"
Phone = Annotated[
    str,
    Field(
        min_length=1,
        max_length=32,
        description="a mobile number; 11-digit mainland numbers get +86 (stored as E.164); "
        "not a valid number: 422 `invalid_phone`",
        json_schema_extra={"pattern": PHONE_PATTERN, "examples": ["13800138000"]},
    ),
]
Consents = Annotated[
    dict[str, bool],
    Field(json_schema_extra={"propertyNames": {"enum": sorted(CONSENT_CHANNELS)}}),
]


class MemberBase(RequestModel):
    email: EmailStr | None = None
    name: str | None = Field(default=None, max_length=200)
    birthday: Date | None = None
    locale: str = Field(default="zh-CN", pattern=r"^(zh-CN|en)$")
    timezone: str = Field(default="Asia/Shanghai", json_schema_extra=TIME_ZONE_SCHEMA)

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: object) -> object:
        if isinstance(value, str) and "\x00" in value:  # PostgreSQL text cannot hold U+0000
            raise ValueError("must not contain the NUL character")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        if value not in _TIMEZONES:
            raise ValueError(f"unknown time zone '{value}'")
        return value


def _known_consent_channels(value: dict[str, bool] | None) -> dict[str, bool] | None:
    unknown = set(value or {}) - CONSENT_CHANNELS
    if unknown:
        raise ValueError(
            f"unknown consent channels {sorted(unknown)}; use {sorted(CONSENT_CHANNELS)}"
        )
    return value


class MemberCreate(MemberBase):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "phone": "13800138000",
                    "email": "li.wei@example.com",
                    "name": "Li Wei",
                    "birthday": "1990-05-17",
                    "locale": "zh-CN",
                    "timezone": "Asia/Shanghai",
                    "store_id": "sh-001",
                    "channel": "pos",
                    "consents": {"email": True, "sms": False},
                }
            ]
        },
    )

    phone: Phone
    referral_code: str | None = Field(
        default=None, max_length=16, description="the referrer's code; unknown: 422"
    )
    store_id: str | None = Field(default=None, max_length=64)
    channel: str | None = Field(default=None, max_length=32)
    consents: Consents = Field(default_factory=dict)

    _consents = field_validator("consents")(_known_consent_channels)


class MemberUpdate(MemberBase):
    """Only the fields sent change; `consents` merge channel by channel."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"email": "li.wei@example.com", "consents": {"sms": True}}]
        },
    )

    phone: Phone | None = Field(default=None, description="a member keeps a phone: not null")
    locale: str = Field(default="zh-CN", pattern=r"^(zh-CN|en)$")
    store_id: str | None = Field(default=None, max_length=64)
    consents: Consents | None = None

    _consents = field_validator("consents")(_known_consent_channels)


class MemberPublic(BaseModel):
    member_id: str
    phone: str | None
    email: str | None
    name: str | None
    birthday: date | None
    locale: str
    timezone: str
    card_no: str
    referral_code: str
    referred_by: str | None
    tier: str
    store_id: str | None
    channel: str | None
    consents: dict[str, bool]
    created_at: datetime
    updated_at: datetime
    erased_at: datetime | None = None


class MemberList(BaseModel):
    items: list[MemberPublic]
    next_cursor: str | None = None


class IdentityCreate(RequestModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"kind": "wechat_openid", "value": "oUpF8uMuAJO_M2pxb1Q9"}]
        },
    )

    kind: Literal["wechat_openid", "push_token"]
    value: str = Field(min_length=1, max_length=512, pattern=r"^[^\x00]+$")


class IdentityPublic(BaseModel):
    kind: str
    value: str
    created_at: datetime


class IdentityList(BaseModel):
    items: list[IdentityPublic]
    next_cursor: str | None = None


@router.post(
    "/members",
    status_code=201,
    response_model=MemberPublic,
    dependencies=[Scope("members:write")],
    summary="Sign a member up",
)
async def create_member(body: MemberCreate, runtime: RuntimeDep) -> MemberPublic:
    row = await register_member(runtime, RegisterMember(**body.model_dump()))
    return MemberPublic(**row)


@router.get(
    "/members",
    response_model=MemberList,
    dependencies=[Scope("members:read")],
    summary="Look a member up by phone, card number or email (exactly one)",
)
async def lookup_members(
    runtime: RuntimeDep,
    phone: Annotated[str | None, Query(max_length=32)] = None,
    card_no: Annotated[str | None, Query(max_length=32)] = None,
    email: Annotated[str | None, Query(max_length=320)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Cursor = None,
) -> MemberList:
    given = [name for name, v in (("phone", phone), ("card_no", card_no), ("email", email)) if v]
    if len(given) != 1:
        raise Unprocessable(
            "validation_error",
            "give exactly one of phone, card_no, email",
            errors=[
                {"loc": ["query", n], "msg": "give exactly one"}
                for n in (given or ["phone", "card_no", "email"])
            ],
        )
    after = cursor_after(cursor, 1)  # the last member_id of the page before
    rows = await find_members(
        runtime,
        phone=phone,
        card_no=card_no,
        email=email,
        limit=limit + 1,
        after=after[0] if after else None,
    )
    more = len(rows) > limit  # lists page like every list of the contract (§3)
    rows = rows[:limit]
    return MemberList(
        items=[MemberPublic(**r) for r in rows],
        next_cursor=encode_cursor(rows[-1]["member_id"]) if more else None,
    )


@router.patch(
    "/members/{member_id}",
    response_model=MemberPublic,
    dependencies=[Scope("members:write")],
    summary="Change a member's data",
)
async def patch_member(member_id: str, body: MemberUpdate, runtime: RuntimeDep) -> MemberPublic:
    changes = body.model_dump(exclude_unset=True)
    return MemberPublic(**await update_member(runtime, member_id, changes))


@router.delete(
    "/members/{member_id}",
    status_code=204,
    dependencies=[Scope("members:write")],
    summary="Erase a member's personal data (keeps the member_id and its history)",
)
async def delete_member(member_id: str, runtime: RuntimeDep) -> Response:
    await erase_member(runtime, member_id)
    return Response(status_code=204)


@router.post(
    "/members/{member_id}/identities",
    status_code=201,
    response_model=IdentityPublic,
    dependencies=[Scope("members:write")],
    summary="Add a channel address (WeChat openid, push token)",
    responses={200: {"description": "the identity was recorded already"}},
)
async def post_identity(
    member_id: str, body: IdentityCreate, runtime: RuntimeDep, response: Response
) -> IdentityPublic:
    identity, created = await add_identity(runtime, member_id, body.kind, body.value)
    if not created:
        response.status_code = 200
    return IdentityPublic(**identity)


@router.get(
    "/members/{member_id}/identities",
    response_model=IdentityList,
    dependencies=[Scope("members:read")],
    summary="A member's channel addresses",
)
async def get_identities(member_id: str, runtime: RuntimeDep) -> IdentityList:
    return IdentityList(
        items=[IdentityPublic(**r) for r in await list_identities(runtime, member_id)]
    )


@router.get(
    "/members/{member_id}",
    response_model=MemberPublic,
    dependencies=[Scope("members:read")],
    summary="One member",
)
async def read_member(member_id: str, runtime: RuntimeDep) -> MemberPublic:
    row = await get_member(runtime, member_id)
    if row is None:
        raise NotFound(f"no member '{member_id}'")
    return MemberPublic(**row)
