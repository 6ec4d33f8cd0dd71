"""The points service's jobs: release pending points, expire lots, warn before expiry.

Each job touches only what is due, through an index on the due time, in chunks that each lock
the members they change; the night's work grows with what is due, not with the member count.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from loyalty_shared.events import make_event
from loyalty_shared.events.points import ExpiringLot, PointsExpiringSoon
from loyalty_shared.ids import monotonic_ulid
from loyalty_shared.jobs import Job
from loyalty_shared.kafka import add_to_outbox
from loyalty_shared.service import Runtime
from sqlalchemy import text

from ..adapters.ledger_store import LedgerBatch, load_rulebook
from ..domain.ledger import Account, Entry
from .ledger_events import SOURCE, publish_operations

CHUNK = 2000
_NOTIFY_DUE = text(
    "UPDATE points_lots SET notified_at = :as_of WHERE lot_id IN ("
    " SELECT lot_id FROM points_lots WHERE state = 'available' AND remaining > 0"
    " AND notified_at IS NULL AND expires_at > :as_of AND expires_at <= :horizon"
    " ORDER BY expires_at, lot_id LIMIT :n FOR UPDATE SKIP LOCKED) "
    "RETURNING member_id, lot_id, remaining, expires_at"
)


async def _due_chunk(runtime: Runtime, as_of: datetime, due_sql: str, apply: Any) -> int:
    """Lock the members of one chunk of due lots, apply, write. Answers lots handled."""
    async with runtime.transaction() as conn:
        rows = (await conn.execute(text(due_sql), {"as_of": as_of, "n": CHUNK})).all()
        if not rows:
            return 0
        batch = LedgerBatch(conn, as_of)
        await batch.load(row.member_id for row in rows)
        await batch.load_lots(row.lot_id for row in rows)
        for row in rows:
            apply(batch.accounts[row.member_id], row.lot_id)
        await publish_operations(conn, batch)
        await batch.flush()
        return len(rows)


async def release_pending(runtime: Runtime, as_of: datetime) -> dict[str, Any]:
    released = 0

    def release(account: Account, lot_id: str) -> Entry | None:
        entry = account.release(lot_id, entry_id=monotonic_ulid(), now=as_of)
        if entry is not None and account.lots[lot_id].expires_at <= as_of:
            account.expire(lot_id, entry_id=monotonic_ulid(), now=as_of)  # it waited too long
        return entry

    while True:
        done = await _due_chunk(
            runtime,
            as_of,
            "SELECT member_id, lot_id FROM points_lots WHERE state = 'pending' "
            "AND available_at <= :as_of ORDER BY available_at, lot_id LIMIT :n",
            release,
        )
        released += done
        if done < CHUNK:
            return {"lots_released": released}


async def expire(runtime: Runtime, as_of: datetime) -> dict[str, Any]:
    expired = 0

    def expire_lot(account: Account, lot_id: str) -> Entry | None:
        return account.expire(lot_id, entry_id=monotonic_ulid(), now=as_of)

    while True:
        done = await _due_chunk(
            runtime,
            as_of,
            "SELECT member_id, lot_id FROM points_lots WHERE state = 'available' "
            "AND remaining > 0 AND expires_at <= :as_of ORDER BY expires_at, lot_id LIMIT :n",
            expire_lot,
        )
        expired += done
        if done < CHUNK:
            return {"lots_expired": expired}


async def expiry_notice(runtime: Runtime, as_of: datetime) -> dict[str, Any]:
    """Warn once per lot, `notice_days` ahead: one points.expiring_soon per member and run."""
    async with runtime.engine.connect() as conn:
        rules = await load_rulebook(conn)
    expiry = rules.enabled("expiry")
    if expiry is None or expiry.notice_days <= 0:
        return {"members_warned": 0, "lots": 0}
    horizon = as_of + timedelta(days=expiry.notice_days)
    warned = lots = 0
    while True:
        async with runtime.transaction() as conn:
            params = {"as_of": as_of, "horizon": horizon, "n": CHUNK}
            rows = (await conn.execute(_NOTIFY_DUE, params)).all()
            if not rows:
                return {"members_warned": warned, "lots": lots}
            by_member: dict[str, list[Any]] = defaultdict(list)
            for row in rows:
                by_member[row.member_id].append(row)
            balances = {
                r.member_id: r
                for r in await conn.execute(
                    text(
                        "SELECT member_id, available, pending FROM accounts "
                        "WHERE member_id = ANY(CAST(:m AS text[]))"
                    ),
                    {"m": list(by_member)},
                )
            }
            events = []
            for member_id, member_lots in sorted(by_member.items()):
                member_lots.sort(key=lambda r: (r.expires_at, r.lot_id))
                balance = balances[member_id]
                events.append(
                    make_event(
                        "points.expiring_soon",
                        PointsExpiringSoon(
                            member_id=member_id,
                            points=sum(r.remaining for r in member_lots),
                            expires_at=member_lots[0].expires_at,
                            lots=[
                                ExpiringLot(
                                    lot_id=r.lot_id, points=r.remaining, expires_at=r.expires_at
                                )
                                for r in member_lots
                            ],
                            available_after=balance.available,
                            pending_after=balance.pending,
                            occurred_at=as_of,
                        ),
                        subject=member_id,
                        source=SOURCE,
                        time=as_of,
                    )
                )
            await add_to_outbox(conn, events)
            warned += len(events)
            lots += len(rows)


JOBS = [
    Job(
        "release-pending",
        release_pending,
        every=timedelta(minutes=15),
        description="makes pending points available when their pending period is over",
    ),
    Job(
        "expire",
        expire,
        every=timedelta(hours=1),
        description="expires what remains of each lot at its expires_at",
    ),
    Job(
        "expiry-notice",
        expiry_notice,
        every=timedelta(hours=6),
        description="emits points.expiring_soon once per lot, notice_days ahead",
    ),
]
