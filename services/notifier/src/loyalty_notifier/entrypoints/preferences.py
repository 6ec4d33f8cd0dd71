"""HTTP routes for a member's notification preferences."""

from __future__ import annotations

from datetime import time
from typing import Annotated
from zoneinfo import available_timezones

from fastapi import APIRouter, Path
from loyalty_shared.api_types import TIME_ZONE_SCHEMA, RequestModel
from loyalty_shared.auth import Scope
from loyalty_shared.service import RuntimeDep
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..domain.policy import CONSENT_CHANNELS
from ..service_layer.context import Notifier
from ..service_layer.preferences import get_preferences, update_preferences

_TIMEZONES = available_timezones()
MemberPath = Annotated[str, Path(max_length=64)]


class ChannelPreference(RequestModel):
    model_config = ConfigDict(extra="forbid")

    marketing: bool


class QuietHoursIn(RequestModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"start": "22:00", "end": "08:00"}]}
    )

    start: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", examples=["22:00"])
    end: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", examples=["08:00"])

    @model_validator(mode="after")
    def _a_window(self) -> QuietHoursIn:
        if self.start == self.end:
            raise ValueError("start and end must differ; send null to turn quiet hours off")
        return self


class PreferencesUpdate(RequestModel):
    """Only the fields sent change; channels merge one by one; `quiet_hours: null` turns
    quiet hours off."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "channels": {"email": {"marketing": True}, "sms": {"marketing": False}},
                    "quiet_hours": {"start": "22:00", "end": "08:00"},
                    "timezone": "Asia/Shanghai",
                    "locale": "zh-CN",
                }
            ]
        },
    )

    # channel names and time zones are checked by the validators below; the document says so
    channels: (
        Annotated[
            dict[str, ChannelPreference],
            Field(json_schema_extra={"propertyNames": {"enum": list(CONSENT_CHANNELS)}}),
        ]
        | None
    ) = None
    quiet_hours: QuietHoursIn | None = None
    timezone: Annotated[str, Field(max_length=64, json_schema_extra=TIME_ZONE_SCHEMA)] | None = None
    locale: str | None = Field(default=None, pattern=r"^(zh-CN|en)$")

    @field_validator("channels")
    @classmethod
    def _known_channels(
        cls, value: dict[str, ChannelPreference] | None
    ) -> dict[str, ChannelPreference] | None:
        unknown = set(value or {}) - set(CONSENT_CHANNELS)
        if unknown:
            raise ValueError(f"unknown channels {sorted(unknown)}; use {list(CONSENT_CHANNELS)}")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        if value is not None and value not in _TIMEZONES:
            raise ValueError(f"unknown time zone '{value}'")
        return value


class QuietHoursPublic(BaseModel):
    start: str
    end: str


class PreferencesPublic(BaseModel):
    member_id: str
    channels: dict[str, ChannelPreference]
    quiet_hours: QuietHoursPublic | None
    quiet_hours_source: str = Field(description="default (the service's), custom or off")
    timezone: str
    locale: str
    erased: bool


def router(notifier: Notifier) -> APIRouter:
    routes = APIRouter(prefix="/v1/members", tags=["preferences"])

    @routes.get(
        "/{member_id}/preferences",
        response_model=PreferencesPublic,
        dependencies=[Scope("members:read")],
        summary="A member's consents, quiet hours, time zone and locale",
    )
    async def read_preferences(member_id: MemberPath, runtime: RuntimeDep) -> PreferencesPublic:
        return PreferencesPublic(**await get_preferences(runtime, notifier, member_id))

    @routes.put(
        "/{member_id}/preferences",
        response_model=PreferencesPublic,
        dependencies=[Scope("notify:write")],
        summary="Change a member's consents, quiet hours, time zone or locale",
    )
    async def write_preferences(
        member_id: MemberPath, body: PreferencesUpdate, runtime: RuntimeDep
    ) -> PreferencesPublic:
        kwargs: dict[str, object] = {
            "consents": {c: p.marketing for c, p in (body.channels or {}).items()},
            "timezone": body.timezone,
            "locale": body.locale,
        }
        if "quiet_hours" in body.model_fields_set:
            q = body.quiet_hours
            kwargs["quiet_hours"] = (
                (time.fromisoformat(q.start), time.fromisoformat(q.end)) if q else None
            )
        view = await update_preferences(runtime, notifier, member_id, **kwargs)  # type: ignore[arg-type]
        return PreferencesPublic(**view)

    return routes
