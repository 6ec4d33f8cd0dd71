"""HTTP routes for message templates: list, read, save (rendered with sample data first),
revert to the built-in default."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response
from loyalty_shared.api_types import RequestModel
from loyalty_shared.auth import Scope
from loyalty_shared.errors import Unprocessable
from loyalty_shared.events import REGISTRY
from loyalty_shared.service import RuntimeDep
from pydantic import BaseModel, ConfigDict, Field

from ..domain.policy import BUILTIN_KINDS, CHANNELS, LOCALES
from ..domain.templates import MAX_BODY, MAX_SUBJECT
from ..service_layer import templates as use_cases
from ..service_layer.context import Notifier

EventTypePath = Annotated[str, Path(max_length=100, description="event or message type")]
# What a template may be saved for: `save_template` refuses any other type (422
# `invalid_template`); reading or dropping an unknown one is a 404.
SavedEventTypePath = Annotated[
    str,
    Path(
        max_length=100,
        description="event or message type",
        json_schema_extra={
            "enum": sorted(
                t for t in {*BUILTIN_KINDS, *REGISTRY} if use_cases.message_type_known(t)
            )
        },
    ),
]
# `_check_path` answers an unknown channel or locale with 422 `invalid_template` (contract §7):
# the document lists them, pydantic does not check them again.
ChannelPath = Annotated[
    str,
    Path(
        max_length=16,
        description="email, sms, wechat, push, inbox",
        json_schema_extra={"enum": list(CHANNELS)},
    ),
]
LocalePath = Annotated[
    str, Path(max_length=16, description="zh-CN or en", json_schema_extra={"enum": list(LOCALES)})
]


class TemplateUpdate(RequestModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "subject": "Welcome, {{ member.name or 'new member' }}",
                    "body": "Your card number is {{ event.card_no }}; friends who join with "
                    "your code {{ event.referral_code }} earn you points.",
                }
            ]
        },
    )

    subject: str | None = Field(
        default=None, max_length=MAX_SUBJECT, description="email templates need one"
    )
    # an empty body renders to an empty message, which saving refuses (422 `invalid_template`)
    body: str = Field(max_length=MAX_BODY, json_schema_extra={"minLength": 1})


class TemplatePublic(BaseModel):
    event_type: str
    channel: str
    locale: str
    category: Literal["transactional", "marketing"]
    subject: str | None
    body: str
    source: Literal["builtin", "custom"]


class TemplateList(BaseModel):
    items: list[TemplatePublic]
    next_cursor: str | None = None


def _check_path(channel: str, locale: str) -> None:
    errors = []
    if channel not in CHANNELS:
        errors.append({"loc": ["path", "channel"], "msg": f"use one of {list(CHANNELS)}"})
    if locale not in LOCALES:
        errors.append({"loc": ["path", "locale"], "msg": f"use one of {list(LOCALES)}"})
    if errors:
        raise Unprocessable(
            "invalid_template", f"unknown channel or locale: {channel}/{locale}", errors=errors
        )


def router(notifier: Notifier) -> APIRouter:
    routes = APIRouter(prefix="/v1/templates", tags=["templates"])

    @routes.get(
        "",
        response_model=TemplateList,
        dependencies=[Scope("members:read")],
        summary="Every template in force: built-in defaults and the operator's own",
    )
    async def list_templates(
        runtime: RuntimeDep,
        event_type: Annotated[str | None, Query(max_length=100)] = None,
    ) -> TemplateList:
        items = await use_cases.effective_templates(runtime, notifier, event_type)
        return TemplateList(items=[TemplatePublic(**t) for t in items])

    @routes.get(
        "/{event_type}/{channel}/{locale}",
        response_model=TemplatePublic,
        dependencies=[Scope("members:read")],
        summary="The template in force for a message type, channel and locale",
    )
    async def get_template(
        event_type: EventTypePath, channel: ChannelPath, locale: LocalePath, runtime: RuntimeDep
    ) -> TemplatePublic:
        _check_path(channel, locale)
        found = await use_cases.one_template(runtime, notifier, event_type, channel, locale)
        return TemplatePublic(**found)

    @routes.put(
        "/{event_type}/{channel}/{locale}",
        response_model=TemplatePublic,
        dependencies=[Scope("notify:write")],
        summary="Save a template (sandboxed Jinja2, rendered with sample data first)",
        responses={422: {"description": "invalid_template: it does not compile or render"}},
    )
    async def put_template(
        event_type: SavedEventTypePath,
        channel: ChannelPath,
        locale: LocalePath,
        body: TemplateUpdate,
        runtime: RuntimeDep,
    ) -> TemplatePublic:
        _check_path(channel, locale)
        saved = await use_cases.save_template(
            runtime, notifier, event_type, channel, locale, body.subject, body.body
        )
        return TemplatePublic(**saved)

    @routes.delete(
        "/{event_type}/{channel}/{locale}",
        status_code=204,
        dependencies=[Scope("notify:write")],
        summary="Drop the operator's template: the built-in default (if any) applies again",
    )
    async def delete_template(
        event_type: EventTypePath, channel: ChannelPath, locale: LocalePath, runtime: RuntimeDep
    ) -> Response:
        _check_path(channel, locale)
        await use_cases.delete_template(runtime, notifier, event_type, channel, locale)
        return Response(status_code=204)

    return routes
