"""Writes a batch's effects with one statement per table, and reads accounts back."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from loyalty_shared.db import insert_many
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from ..domain.ledger import Effects
from .tables import accounts, ledger_entries, points_lots

_UPSERT_BALANCES = text(
    """
    INSERT INTO accounts (member_id, available, pending, lifetime_earned, lifetime_redeemed,
                          updated_at)
    SELECT m, a, p, e, r, :now FROM unnest(CAST(:members AS text[]), CAST(:available AS bigint[]),
        CAST(:pending AS bigint[]), CAST(:earned AS bigint[]), CAST(:redeemed AS bigint[]))
        AS t(m, a, p, e, r)
    ON CONFLICT (member_id) DO UPDATE SET
        available = accounts.available + EXCLUDED.available,
        pending = accounts.pending + EXCLUDED.pending,
        lifetime_earned = accounts.lifetime_earned + EXCLUDED.lifetime_earned,
        lifetime_redeemed = accounts.lifetime_redeemed + EXCLUDED.lifetime_redeemed,
        updated_at = EXCLUDED.updated_at
    """
)


async def write_effects(conn: AsyncConnection, effects: Effects, now: datetime) -> None:
    if effects.lots:
        await insert_many(
            conn, points_lots, [{**asdict(lot), "remaining": lot.points} for lot in effects.lots]
        )
    if effects.entries:
        await insert_many(conn, ledger_entries, [asdict(entry) for entry in effects.entries])
    if effects.balances:
        members = sorted(effects.balances)  # a stable order keeps concurrent batches deadlock-free
        changes = [effects.balances[m] for m in members]
        await conn.execute(
            _UPSERT_BALANCES,
            {
                "now": now,
                "members": members,
                "available": [c.available for c in changes],
                "pending": [c.pending for c in changes],
                "earned": [c.lifetime_earned for c in changes],
                "redeemed": [c.lifetime_redeemed for c in changes],
            },
        )


async def read_account(conn: AsyncConnection, member_id: str) -> dict[str, Any] | None:
    row = (await conn.execute(select(accounts).where(accounts.c.member_id == member_id))).first()
    return dict(row._mapping) if row else None


async def read_expiring(
    conn: AsyncConnection, member_id: str, now: datetime
) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(
            "SELECT (expires_at AT TIME ZONE 'UTC')::date AS on, sum(remaining) AS points "
            "FROM points_lots WHERE member_id = :m AND remaining > 0 AND expires_at > :now "
            "AND available_at <= :now GROUP BY 1 ORDER BY 1"
        ),
        {"m": member_id, "now": now},
    )
    return [{"on": r.on, "points": int(r.points)} for r in rows]


async def read_ledger(
    conn: AsyncConnection, member_id: str, limit: int, after: str | None
) -> list[dict[str, Any]]:
    query = select(ledger_entries).where(ledger_entries.c.member_id == member_id)
    if after:
        query = query.where(ledger_entries.c.entry_id < after)
    query = query.order_by(ledger_entries.c.entry_id.desc()).limit(limit)
    return [dict(r._mapping) for r in await conn.execute(query)]
