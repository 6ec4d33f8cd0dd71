"""The coupon service's jobs: expire unused coupons, warn 3 days before, carry on bulk issues,
issue the day's birthday coupons, settle exchanges. Each touches only what is due, through an
index on the due time, in chunks."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from loyalty_shared.jobs import Job
from loyalty_shared.kafka import add_to_outbox
from loyalty_shared.service import Runtime
from sqlalchemy import text

from . import coupon_events
from .birthdays import issue_birthdays
from .bulk import resume_bulk_jobs
from .exchange import reconcile_exchanges

CHUNK = 2000
NOTICE_AHEAD = timedelta(days=3)

_EXPIRE_DUE = text(
    "UPDATE coupons SET status = 'expired', expired_at = :as_of WHERE coupon_code IN ("
    " SELECT coupon_code FROM coupons WHERE status = 'issued' AND valid_until <= :as_of"
    " ORDER BY valid_until, coupon_code LIMIT :n FOR UPDATE SKIP LOCKED) RETURNING *"
)
_NOTICE_DUE = text(
    "WITH due AS (UPDATE coupons SET notified_at = :as_of WHERE coupon_code IN ("
    " SELECT coupon_code FROM coupons WHERE status = 'issued' AND notified_at IS NULL"
    " AND valid_until > :as_of AND valid_until <= :horizon"
    " ORDER BY valid_until, coupon_code LIMIT :n FOR UPDATE SKIP LOCKED) RETURNING *) "
    "SELECT due.*, t.kind, t.value, t.min_spend_minor, t.currency FROM due "
    "JOIN coupon_templates t ON t.code = due.template_code"
)


async def expire(runtime: Runtime, as_of: datetime) -> dict[str, Any]:
    expired = 0
    while True:
        async with runtime.transaction() as conn:
            rows = (await conn.execute(_EXPIRE_DUE, {"as_of": as_of, "n": CHUNK})).all()
            # The coupon's own end is when it expired, not when the job noticed.
            await add_to_outbox(conn, [coupon_events.expired(r, r.valid_until) for r in rows])
        expired += len(rows)
        if len(rows) < CHUNK:
            return {"coupons_expired": expired}


async def expiry_notice(runtime: Runtime, as_of: datetime) -> dict[str, Any]:
    noticed = 0
    while True:
        async with runtime.transaction() as conn:
            rows = (
                await conn.execute(
                    _NOTICE_DUE, {"as_of": as_of, "horizon": as_of + NOTICE_AHEAD, "n": CHUNK}
                )
            ).all()
            await add_to_outbox(conn, [coupon_events.expiring_soon(r, as_of) for r in rows])
        noticed += len(rows)
        if len(rows) < CHUNK:
            return {"coupons_noticed": noticed}


JOBS = [
    Job("expire", expire, timedelta(hours=1), "expire unused coupons past valid_until"),
    Job(
        "expiry-notice",
        expiry_notice,
        timedelta(hours=1),
        "coupon.expiring_soon for unused coupons ending within 3 days, once per coupon",
    ),
    Job(
        "bulk-issue",
        resume_bulk_jobs,
        timedelta(minutes=1),
        "carry on unfinished bulk issues (after a restart or a segmenter outage)",
    ),
    Job(
        "birthday",
        issue_birthdays,
        timedelta(hours=1),
        "birthday campaigns: one bulk issue per campaign and day (Asia/Shanghai) to the members"
        " whose birthday it is, from the member service; later runs that day carry it on",
    ),
    Job(
        "exchange-reconcile",
        reconcile_exchanges,
        timedelta(minutes=5),
        "give back the points of exchanges whose coupon was not issued",
    ),
]
