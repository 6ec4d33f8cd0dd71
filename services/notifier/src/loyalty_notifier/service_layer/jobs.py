"""The notifier's jobs: the dispatcher, releasing deferred deliveries when quiet hours end, and
payment reminders for orders still unpaid after the delay."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from loyalty_shared.jobs import Job
from loyalty_shared.service import Runtime
from sqlalchemy import text

from ..adapters.store import load_preferences
from ..domain.policy import PAYMENT_REMINDER
from .context import Notifier
from .deliveries import Message, enqueue, plan_rows
from .dispatch import dispatch

CHUNK = 1000

_RELEASE = text(
    "UPDATE deliveries SET status = 'queued', reason = NULL, next_attempt_at = not_before, "
    "updated_at = :as_of WHERE delivery_id IN ("
    " SELECT delivery_id FROM deliveries WHERE status = 'deferred' AND not_before <= :as_of"
    " ORDER BY not_before, delivery_id LIMIT :n FOR UPDATE SKIP LOCKED)"
)

_DUE_REMINDERS = text(
    "UPDATE payment_reminders SET status = CASE WHEN due_at < :stale THEN 'expired' "
    "ELSE 'sent' END, updated_at = :as_of WHERE order_id IN ("
    " SELECT order_id FROM payment_reminders WHERE status = 'pending' AND due_at <= :as_of"
    " ORDER BY due_at, order_id LIMIT :n FOR UPDATE SKIP LOCKED) "
    "RETURNING order_id, member_id, event_id, status, context"
)


async def release_deferred(runtime: Runtime, as_of: datetime) -> dict[str, Any]:
    """Deferred deliveries whose quiet hours are over go back to the dispatcher's queue (which
    checks consent, quiet hours and the cap once more when it sends them)."""
    released = 0
    while True:
        async with runtime.transaction() as conn:
            result = await conn.execute(_RELEASE, {"as_of": as_of, "n": CHUNK})
        done = int(result.rowcount or 0)  # type: ignore[attr-defined]
        released += done
        if done < CHUNK:
            return {"released": released}


def payment_reminders(notifier: Notifier) -> Any:
    async def run(runtime: Runtime, as_of: datetime) -> dict[str, Any]:
        """Remind members of orders placed `payment_reminder_minutes` ago and still unpaid;
        reminders overdue by more than the horizon (a backlog import) are dropped."""
        horizon = timedelta(hours=notifier.settings.payment_reminder_horizon_hours)
        reminded = expired = 0
        while True:
            async with runtime.transaction() as conn:
                params = {"as_of": as_of, "stale": as_of - horizon, "n": CHUNK}
                rows = (await conn.execute(_DUE_REMINDERS, params)).all()
                due = [r for r in rows if r.status == "sent" and r.member_id and r.event_id]
                expired += len(rows) - len(due)
                stored = await load_preferences(conn, {r.member_id for r in due})
                custom = await notifier.templates.get(conn)
                planned: list[dict[str, Any]] = []
                for r in due:
                    preferences = (
                        stored[r.member_id].to_domain(notifier.default_quiet_hours)
                        if r.member_id in stored
                        else notifier.default_preferences(r.member_id)
                    )
                    message = Message(r.event_id, r.member_id, PAYMENT_REMINDER, r.context or {})
                    planned.extend(plan_rows(message, preferences, custom, as_of))
                await enqueue(conn, planned, as_of)
                reminded += len(due)
            if len(rows) < CHUNK:
                return {"reminded": reminded, "expired": expired}

    return run


def jobs(notifier: Notifier) -> list[Job]:
    async def run_dispatch(runtime: Runtime, as_of: datetime) -> dict[str, Any]:
        return await dispatch(notifier, runtime, as_of)

    return [
        Job(
            "dispatch",
            run_dispatch,
            every=timedelta(seconds=notifier.settings.dispatch_every_seconds),
            description="sends due deliveries: retries with backoff, then the next provider",
        ),
        Job(
            "release-deferred",
            release_deferred,
            every=timedelta(minutes=1),
            description="queues deferred marketing messages again when quiet hours are over",
        ),
        Job(
            "payment-reminders",
            payment_reminders(notifier),
            every=timedelta(minutes=1),
            description="reminds members of orders still unpaid after the reminder delay",
        ),
    ]
