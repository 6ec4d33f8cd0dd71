"""HTTP routes for members."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import available_timezones

from fastapi import APIRouter
from loyalty_shared.auth import Scope
from loyalty_shared.errors import NotFound
from loyalty_shared.service import RuntimeDep
from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator

from ..service_layer.registration import RegisterMember, get_member, register_member

router = APIRouter(prefix="/v1", tags=["members"])

CONSENT_CHANNELS = {"email", "sms", "wechat", "push"}
_TIMEZONES = available_timezones()


class MemberBase(BaseModel):
    email: EmailStr | None = None
    name: str | None = Field(default=None, max_length=200)
    birthday: date | None = None
    locale: str = Field(default="zh-CN", pattern=r"^(zh-CN|en)$")
    timezone: str = "Asia/Shanghai"

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


class MemberCreate(MemberBase):
    model_config = ConfigDict(extra="forbid")

    phone: str = Field(min_length=1, max_length=32)
    referral_code: str | None = Field(default=None, max_length=16)
    store_id: str | None = Field(default=None, max_length=64)
    channel: str | None = Field(default=None, max_length=32)
    consents: dict[str, bool] = Field(default_factory=dict)

    @field_validator("consents")
    @classmethod
    def _known_channels(cls, value: dict[str, bool]) -> dict[str, bool]:
        unknown = set(value) - CONSENT_CHANNELS
        if unknown:
            raise ValueError(
                f"unknown consent channels {sorted(unknown)}; use {sorted(CONSENT_CHANNELS)}"
            )
        return value


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
