"""HTTP routes for deliveries (one per event and channel) and a member's inbox."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from loyalty_shared.auth import Scope
from loyalty_shared.errors import NotFound
from loyalty_shared.paging import Cursor
from loyalty_shared.service import RuntimeDep
from pydantic import BaseModel, Field

from ..service_layer.deliveries import delivery_page, inbox_page, mark_read, one_delivery

router = APIRouter(prefix="/v1", tags=["deliveries"])

Limit = Annotated[int, Query(ge=1, le=500)]
Status = Literal["queued", "deferred", "sent", "failed", "suppressed"]


class DeliveryPublic(BaseModel):
    delivery_id: str
    member_id: str
    event_id: str
    event_type: str = Field(description="the message type (the event's type, or a derived one)")
    channel: Literal["email", "sms", "wechat", "push", "inbox"]
    category: Literal["transactional", "marketing"]
    status: Status
    reason: str | None = None
    attempts: int
    provider: str | None = None
    locale: str | None = None
    created_at: datetime
    sent_at: datetime | None = None
    deferred_until: datetime | None = None


class DeliveryPage(BaseModel):
    items: list[DeliveryPublic]
    next_cursor: str | None


class InboxMessagePublic(BaseModel):
    message_id: str
    delivery_id: str
    event_id: str
    event_type: str
    category: Literal["transactional", "marketing"]
    title: str | None
    body: str
    created_at: datetime
    read_at: datetime | None = None


class InboxPage(BaseModel):
    items: list[InboxMessagePublic]
    next_cursor: str | None


@router.get(
    "/deliveries",
    response_model=DeliveryPage,
    dependencies=[Scope("members:read")],
    summary="Deliveries, newest first (one per event and channel)",
)
async def list_deliveries(
    runtime: RuntimeDep,
    member_id: Annotated[str | None, Query(max_length=64)] = None,
    event_id: Annotated[str | None, Query(max_length=64)] = None,
    status: Status | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> DeliveryPage:
    rows, next_cursor = await delivery_page(
        runtime,
        member_id=member_id,
        event_id=event_id,
        status=status,
        limit=limit,
        cursor=cursor,
    )
    return DeliveryPage(items=[DeliveryPublic(**r) for r in rows], next_cursor=next_cursor)


@router.get(
    "/deliveries/{delivery_id}",
    response_model=DeliveryPublic,
    dependencies=[Scope("members:read")],
    summary="One delivery",
)
async def get_delivery(
    delivery_id: Annotated[str, Path(max_length=64)], runtime: RuntimeDep
) -> DeliveryPublic:
    row = await one_delivery(runtime, delivery_id)
    if row is None:
        raise NotFound(f"no delivery '{delivery_id}'")
    return DeliveryPublic(**row)


@router.get(
    "/members/{member_id}/inbox",
    response_model=InboxPage,
    dependencies=[Scope("members:read")],
    summary="The member's in-app messages, newest first",
)
async def get_inbox(
    member_id: Annotated[str, Path(max_length=64)],
    runtime: RuntimeDep,
    unread: bool = False,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> InboxPage:
    rows, next_cursor = await inbox_page(runtime, member_id, limit, cursor, unread_only=unread)
    return InboxPage(items=[InboxMessagePublic(**r) for r in rows], next_cursor=next_cursor)


@router.post(
    "/members/{member_id}/inbox/{message_id}/read",
    response_model=InboxMessagePublic,
    dependencies=[Scope("notify:write")],
    summary="Mark an inbox message read (again: no change)",
)
async def read_inbox_message(
    member_id: Annotated[str, Path(max_length=64)],
    message_id: Annotated[str, Path(max_length=64)],
    runtime: RuntimeDep,
) -> InboxMessagePublic:
    row = await mark_read(runtime, member_id, message_id)
    if row is None:
        raise NotFound(f"no inbox message '{message_id}' for member '{member_id}'")
    return InboxMessagePublic(**row)
