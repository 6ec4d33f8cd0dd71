"""Emitting the member service's events: written to the outbox in the caller's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from loyalty_shared.events import Event, EventData, make_event
from loyalty_shared.kafka import add_to_outbox
from sqlalchemy.ext.asyncio import AsyncConnection

SOURCE = "loyalty/member"


async def emit(
    conn: AsyncConnection,
    event_type: str,
    data: EventData,
    *,
    subject: str | None,
    time: datetime,
    key: str | None = None,
) -> Event[Any]:
    """Write one event to the outbox; it is published only if the transaction commits."""
    event = make_event(event_type, data, subject=subject, source=SOURCE, time=time, key=key)
    await add_to_outbox(conn, [event])
    return event
