"""Turns a batch of events into preferences and planned deliveries, in the consumer's
transaction. Nothing is sent here: the dispatcher sends after this commits.

For a batch: load (and lock) the preferences of the members it names, apply member events
(consents, time zone, locale, erasure) in order in memory, plan one delivery per channel for
each message, note payment reminders to schedule or cancel, then write everything with one
statement per table."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import orjson
from loyalty_shared.events import NOTIFICATIONS, REGISTRY, Event
from loyalty_shared.idempotency import forget_answers_about
from loyalty_shared.kafka import Handlers, add_to_outbox
from loyalty_shared.service import Runtime
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ..adapters.store import StoredPreferences, load_preferences, save_preferences
from ..domain.policy import CONSENT_CHANNELS, message_types
from ..domain.templates import BUILTIN
from .context import Notifier
from .deliveries import Message, enqueue, outcome_event, plan_rows
from .templates import NEVER_MESSAGED

PREFERENCE_TYPES = ("member.registered", "member.updated", "member.erased")
REMINDER_TYPES = ("order.placed", "order.paid", "order.cancelled")
BUILTIN_TYPES = frozenset(t for (t, _, _) in BUILTIN)


def _member_of(event: Event[Any]) -> str | None:
    return getattr(event.data, "member_id", None)


def _consents(value: dict[str, bool] | None) -> dict[str, bool]:
    return {c: bool(v) for c, v in (value or {}).items() if c in CONSENT_CHANNELS}


def handlers(notifier: Notifier) -> Callable[[Runtime], Handlers]:
    """Every event type except the notifier's own: any of them may have a template."""

    def build(runtime: Runtime) -> Handlers:
        async def apply(conn: AsyncConnection, events: list[Event[Any]]) -> None:
            await apply_batch(notifier, conn, events, runtime.clock.now())

        registered = Handlers()
        for event_type, spec in REGISTRY.items():
            if spec.topic != NOTIFICATIONS and event_type not in NEVER_MESSAGED:
                registered.by_type[event_type] = apply
        return registered

    return build


async def apply_batch(
    notifier: Notifier, conn: AsyncConnection, events: list[Event[Any]], now: datetime
) -> None:
    custom = await notifier.templates.get(conn)
    with_templates = BUILTIN_TYPES | {t for (t, _, _) in custom}
    relevant = [
        event
        for event in events
        if _member_of(event) is not None  # guest orders: nobody to tell
        and (
            event.type in PREFERENCE_TYPES
            or event.type in REMINDER_TYPES
            or any(t in with_templates for t in message_types(event.type, vars(event.data)))
        )
    ]
    if not relevant:
        return
    members = {_member_of(e) for e in relevant}
    writes_preferences = any(e.type in PREFERENCE_TYPES for e in relevant)
    stored = await load_preferences(conn, members, lock=writes_preferences)  # type: ignore[arg-type]
    changed: dict[str, StoredPreferences] = {}
    erased: set[str] = set()
    rows: list[dict[str, Any]] = []
    reminders: dict[str, dict[str, Any]] = {}
    minutes = timedelta(minutes=notifier.settings.payment_reminder_minutes)

    for event in relevant:
        member_id: str = _member_of(event)  # type: ignore[assignment]
        data = event.data
        if event.type in PREFERENCE_TYPES:
            row = changed.get(member_id) or stored.get(member_id) or StoredPreferences(member_id)
            row = row.copy()
            if event.type == "member.registered":
                row.consents = _consents(data.consents)
                row.timezone, row.locale = data.timezone, data.locale
            elif event.type == "member.updated":
                if data.consents is not None:
                    row.consents = _consents(data.consents)
                row.timezone = data.timezone or row.timezone
                row.locale = data.locale or row.locale
            else:
                row.erased_at = data.occurred_at
                row.consents = {}
                erased.add(member_id)
            changed[member_id] = row
            stored[member_id] = row
        if event.type == "order.placed":
            reminders.setdefault(
                data.order_id,
                {
                    "order_id": data.order_id,
                    "member_id": member_id,
                    "event_id": event.id,
                    "status": "pending",
                    "due_at": data.occurred_at + minutes,
                    "context": data.model_dump(mode="json"),
                },
            )
        elif event.type in ("order.paid", "order.cancelled"):
            reminders[data.order_id] = {
                "order_id": data.order_id,
                "member_id": member_id,
                "event_id": None,
                "status": "cancelled",
                "due_at": None,
                "context": None,
            }
        preferences = (
            stored[member_id].to_domain(notifier.default_quiet_hours)
            if member_id in stored
            else notifier.default_preferences(member_id)
        )
        context = data.model_dump(mode="json")
        for message_type in message_types(event.type, context):
            message = Message(event.id, member_id, message_type, context)
            rows.extend(plan_rows(message, preferences, custom, now))

    await save_preferences(conn, changed.values(), now)
    await enqueue(conn, rows, now)
    await _write_reminders(conn, list(reminders.values()), now)
    if erased:
        await forget_erased(notifier, conn, sorted(erased), now)


async def _write_reminders(
    conn: AsyncConnection, rows: list[dict[str, Any]], now: datetime
) -> None:
    """Schedule reminders for placed orders; cancel them for paid or cancelled ones (a cancel
    that comes first leaves a cancelled row, so the order is never reminded)."""
    if not rows:
        return
    await conn.execute(
        text(
            "INSERT INTO payment_reminders "
            "(order_id, member_id, event_id, status, due_at, context, updated_at) "
            "SELECT u.*, CAST(:now AS timestamptz) FROM unnest(CAST(:orders AS text[]), "
            "CAST(:members AS text[]), CAST(:events AS text[]), CAST(:statuses AS text[]), "
            "CAST(:due AS timestamptz[]), CAST(:contexts AS jsonb[])) AS u "
            "ON CONFLICT (order_id) DO UPDATE SET status = 'cancelled', "
            "updated_at = EXCLUDED.updated_at "
            "WHERE EXCLUDED.status = 'cancelled' AND payment_reminders.status = 'pending'"
        ),
        {
            "orders": [r["order_id"] for r in rows],
            "members": [r["member_id"] for r in rows],
            "events": [r["event_id"] for r in rows],
            "statuses": [r["status"] for r in rows],
            "due": [r["due_at"] for r in rows],
            "contexts": [
                orjson.dumps(r["context"]).decode() if r["context"] is not None else None
                for r in rows
            ],
            "now": now,
        },
    )


async def forget_erased(
    notifier: Notifier, conn: AsyncConnection, member_ids: list[str], now: datetime
) -> None:
    """An erased member gets nothing more: open deliveries are suppressed, stored messages and
    pending reminders dropped, cached contact data forgotten, and the stored answers to
    Idempotency-Keys about the member (marking an inbox message read answers the message's
    title and body) deleted, all in the consumer's transaction (docs/http.md)."""
    suppressed = [
        dict(r._mapping)
        for r in await conn.execute(
            text(
                "UPDATE deliveries SET status = 'suppressed', reason = 'member_erased', "
                "updated_at = :now, not_before = NULL WHERE member_id = ANY(CAST(:m AS text[])) "
                "AND status IN ('queued', 'deferred') RETURNING delivery_id, member_id, "
                "event_id, event_type, channel, category, status, reason, attempts, provider, "
                "locale"
            ),
            {"m": member_ids, "now": now},
        )
    ]
    await add_to_outbox(conn, [outcome_event(r, now) for r in suppressed])
    await conn.execute(
        text("DELETE FROM inbox_messages WHERE member_id = ANY(CAST(:m AS text[]))"),
        {"m": member_ids},
    )
    await conn.execute(
        text(
            "UPDATE payment_reminders SET status = 'cancelled', context = NULL, updated_at = :now "
            "WHERE member_id = ANY(CAST(:m AS text[])) AND status = 'pending'"
        ),
        {"m": member_ids, "now": now},
    )
    for member_id in member_ids:
        await forget_answers_about(conn, member_id)
    for member_id in member_ids:
        notifier.directory.forget(member_id)
