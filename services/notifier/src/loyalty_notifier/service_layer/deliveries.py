"""Deliveries: planning them for a message (one per channel), the notification.* events that
report their outcome, and the read side (deliveries and the inbox, newest first)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from loyalty_shared.events import Event, make_event
from loyalty_shared.events.notifications import (
    NotificationFailed,
    NotificationSent,
    NotificationSuppressed,
)
from loyalty_shared.ids import monotonic_ulid
from loyalty_shared.kafka import add_to_outbox
from loyalty_shared.paging import cursor_after, encode_cursor
from loyalty_shared.service import Runtime
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ..adapters.store import insert_deliveries
from ..domain.policy import Preferences, plan
from ..domain.templates import Template, TemplateKey, channels_with_template

SOURCE = "loyalty/notifier"


@dataclass(frozen=True)
class Message:
    """One message to plan: what it is about and the data its templates render."""

    event_id: str
    member_id: str
    message_type: str
    context: dict[str, Any]


def plan_rows(
    message: Message,
    preferences: Preferences,
    custom: dict[TemplateKey, Template],
    now: datetime,
) -> list[dict[str, Any]]:
    channels = channels_with_template(custom, message.message_type)
    rows = []
    for channel, category, decision in plan(message.message_type, channels, preferences, now):
        rows.append(
            {
                "delivery_id": monotonic_ulid(),
                "member_id": message.member_id,
                "event_id": message.event_id,
                "event_type": message.message_type,
                "channel": channel,
                "category": category,
                "status": decision.status,
                "reason": decision.reason,
                "attempts": 0,
                "provider": None,
                "provider_index": 0,
                "provider_attempts": 0,
                "locale": preferences.locale,
                "context": message.context,
                "next_attempt_at": decision.not_before or now,
                "not_before": decision.not_before,
                "claimed_until": None,
                "created_at": now,
                "updated_at": now,
                "sent_at": None,
            }
        )
    return rows


async def enqueue(conn: AsyncConnection, rows: list[dict[str, Any]], now: datetime) -> int:
    """Write planned deliveries (duplicates of an earlier arrival are dropped) and report the
    ones suppressed at once. Answers how many are new."""
    fresh = await insert_deliveries(conn, rows)
    suppressed = [r for r in rows if r["delivery_id"] in fresh and r["status"] == "suppressed"]
    await add_to_outbox(conn, [outcome_event(r, now) for r in suppressed])
    return len(fresh)


_MODELS: dict[str, Any] = {
    "sent": NotificationSent,
    "failed": NotificationFailed,
    "suppressed": NotificationSuppressed,
}


def outcome_event(row: dict[str, Any], at: datetime) -> Event[Any]:
    """`notification.sent|failed|suppressed` for a delivery: ids, channel and outcome only."""
    status = row["status"]
    fields = {
        "delivery_id": row["delivery_id"],
        "member_id": row["member_id"],
        "event_id": row["event_id"],
        "event_type": row["event_type"],
        "channel": row["channel"],
        "category": row["category"],
        "locale": row.get("locale"),
        "attempts": row.get("attempts") or 0,
        "occurred_at": at,
        "provider": row.get("provider"),
        "reason": row.get("reason"),
    }
    if status == "sent":
        fields["provider"] = fields["provider"] or row["channel"]
    else:
        fields["reason"] = fields["reason"] or status
    return make_event(
        f"notification.{status}",
        _MODELS[status](**fields),
        subject=row["member_id"],
        source=SOURCE,
        time=at,
    )


# ---------------------------------------------------------------------------------------------
# Read side
# ---------------------------------------------------------------------------------------------
_DELIVERY_COLUMNS = (
    "delivery_id, member_id, event_id, event_type, channel, category, status, reason, attempts, "
    "provider, locale, created_at, sent_at, not_before AS deferred_until"
)


async def delivery_page(
    runtime: Runtime,
    *,
    member_id: str | None,
    event_id: str | None,
    status: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    sql = (
        f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE "
        "(CAST(:member AS text) IS NULL OR member_id = :member) "
        "AND (CAST(:event AS text) IS NULL OR event_id = :event) "
        "AND (CAST(:status AS text) IS NULL OR status = :status) "
        "AND (CAST(:cursor AS text) IS NULL OR delivery_id < :cursor) "
        "ORDER BY delivery_id DESC LIMIT :n"
    )
    params = {
        "member": member_id,
        "event": event_id,
        "status": status,
        "cursor": _after(cursor),
        "n": limit + 1,
    }
    async with runtime.engine.connect() as conn:
        rows = [dict(r._mapping) for r in await conn.execute(text(sql), params)]
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (encode_cursor(rows[-1]["delivery_id"]) if more and rows else None)


def _after(cursor: str | None) -> str | None:
    """The id a page continues after (newest first): a cursor these lists handed out, else
    422 (one shared codec, contract §3)."""
    after = cursor_after(cursor, 1)
    return after[0] if after else None


async def one_delivery(runtime: Runtime, delivery_id: str) -> dict[str, Any] | None:
    async with runtime.engine.connect() as conn:
        row = (
            await conn.execute(
                text(f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE delivery_id = :d"),
                {"d": delivery_id},
            )
        ).first()
    return dict(row._mapping) if row else None


async def inbox_page(
    runtime: Runtime, member_id: str, limit: int, cursor: str | None, unread_only: bool = False
) -> tuple[list[dict[str, Any]], str | None]:
    sql = (
        "SELECT message_id, delivery_id, event_id, event_type, category, title, body, "
        "created_at, read_at FROM inbox_messages WHERE member_id = :m "
        "AND (CAST(:cursor AS text) IS NULL OR message_id < :cursor) "
        + ("AND read_at IS NULL " if unread_only else "")
        + "ORDER BY message_id DESC LIMIT :n"
    )
    async with runtime.engine.connect() as conn:
        rows = [
            dict(r._mapping)
            for r in await conn.execute(
                text(sql), {"m": member_id, "cursor": _after(cursor), "n": limit + 1}
            )
        ]
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (encode_cursor(rows[-1]["message_id"]) if more and rows else None)


async def mark_read(runtime: Runtime, member_id: str, message_id: str) -> dict[str, Any] | None:
    async with runtime.transaction() as conn:
        row = (
            await conn.execute(
                text(
                    "UPDATE inbox_messages SET read_at = coalesce(read_at, :now) "
                    "WHERE member_id = :m AND message_id = :id "
                    "RETURNING message_id, delivery_id, event_id, event_type, category, title, "
                    "body, created_at, read_at"
                ),
                {"m": member_id, "id": message_id, "now": runtime.clock.now()},
            )
        ).first()
    return dict(row._mapping) if row else None
