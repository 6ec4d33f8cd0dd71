"""Use cases on one account: balances, the ledger, redemptions, adjustments."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from loyalty_shared.errors import Conflict, NotFound, Unprocessable
from loyalty_shared.ids import monotonic_ulid
from loyalty_shared.paging import cursor_after, encode_cursor
from loyalty_shared.service import Runtime
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ..adapters.ledger_store import (
    LedgerBatch,
    erased_at,
    load_rulebook,
    read_account,
    read_expiring,
    read_ledger,
)
from ..adapters.tables import POINTS_LEDGER, LedgerTables, redemptions
from ..domain.ledger import Account, InsufficientPoints, Portion, Source
from .ledger_events import publish_operations


async def account_view(runtime: Runtime, member_id: str) -> dict[str, Any]:
    now = runtime.clock.now()
    async with runtime.reading() as conn:
        account = await read_account(conn, member_id, now)
        expiring = await read_expiring(conn, member_id, now) if account else []
    account = account or {
        "available": 0,
        "pending": 0,
        "lifetime_earned": 0,
        "lifetime_redeemed": 0,
        "tier": None,
    }
    return {
        "member_id": member_id,
        "available": account["available"],
        "pending": account["pending"],
        "lifetime_earned": account["lifetime_earned"],
        "lifetime_redeemed": account["lifetime_redeemed"],
        "expiring": expiring,
        "tier": account["tier"],
    }


async def ledger_page(
    runtime: Runtime, member_id: str, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    after = cursor_after(cursor, 1)  # the last entry of the page before
    async with runtime.reading() as conn:
        rows = await read_ledger(conn, member_id, limit + 1, after[0] if after else None)
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (encode_cursor(rows[-1]["entry_id"]) if more and rows else None)


@asynccontextmanager
async def one_account(
    runtime: Runtime, member_id: str, ledger: LedgerTables = POINTS_LEDGER
) -> AsyncIterator[tuple[LedgerBatch, Account]]:
    """A unit of work on one member's ledger: locked, changed in memory, written on exit.
    The points ledger reports its operations as points.* events; other assets their own."""
    async with runtime.transaction() as conn:
        batch = LedgerBatch(conn, runtime.clock.now(), ledger)
        await batch.load([member_id])
        yield batch, batch.accounts[member_id]
        if ledger is POINTS_LEDGER:
            await publish_operations(conn, batch)
        await batch.flush()


async def give_back(batch: LedgerBatch, account: Account, entry_id: str, source: Source) -> None:
    """Return what an entry took (a redemption, a spend) to the lots it came from."""
    portions = batch.ledger.portions
    rows = (await batch.conn.execute(select(portions).where(portions.c.entry_id == entry_id))).all()
    await batch.load_lots(row.lot_id for row in rows)
    taken = [Portion(r.entry_id, r.lot_id, r.points, r.expires_at) for r in rows]
    account.cancel_redemption(
        taken, entry_id=monotonic_ulid(), source=source, now=batch.now, new_id=monotonic_ulid
    )


async def refuse_if_erased(conn: AsyncConnection, member_id: str) -> None:
    """Contract §4: after erasure the account takes no new money (it stays readable)."""
    if await erased_at(conn, member_id) is not None:
        raise Conflict("member_erased", "the member was erased: their account takes no new money")


def _insufficient(exc: InsufficientPoints) -> Unprocessable:
    return Unprocessable(
        "insufficient_points",
        f"{exc.wanted} points wanted, {exc.available} available",
        available=exc.available,
    )


async def redeem(
    runtime: Runtime, *, member_id: str, points: int, reason: str, order_id: str | None
) -> dict[str, Any]:
    redemption_id = monotonic_ulid()
    async with one_account(runtime, member_id) as (batch, account):
        await refuse_if_erased(batch.conn, member_id)
        account.expire_due(batch.now, monotonic_ulid)  # expired points are not spent
        try:
            entry = account.redeem(
                points,
                entry_id=monotonic_ulid(),
                reason=reason,
                source=Source(order_id=order_id, redemption_id=redemption_id),
                now=batch.now,
            )
        except InsufficientPoints as exc:
            raise _insufficient(exc) from exc
        await batch.conn.execute(
            redemptions.insert().values(
                redemption_id=redemption_id,
                member_id=member_id,
                points=points,
                reason=reason,
                order_id=order_id,
                status="redeemed",
                entry_id=entry.entry_id,
                created_at=batch.now,
            )
        )
        return {
            "redemption_id": redemption_id,
            "member_id": member_id,
            "points": points,
            "status": "redeemed",
            "available_after": account.available,
        }


async def cancel_redemption(runtime: Runtime, redemption_id: str) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
        found = (
            await conn.execute(
                select(redemptions).where(redemptions.c.redemption_id == redemption_id)
            )
        ).first()
    if found is None:
        raise NotFound(f"no redemption '{redemption_id}'")
    async with one_account(runtime, found.member_id) as (batch, account):
        done = await batch.conn.execute(
            update(redemptions)
            .where(redemptions.c.redemption_id == redemption_id, redemptions.c.status == "redeemed")
            .values(status="cancelled", cancelled_at=batch.now)
            .returning(redemptions.c.entry_id)
        )
        entry_id = done.scalar()
        if entry_id is None:
            raise Conflict("redemption_cancelled", "this redemption was cancelled already")
        await give_back(
            batch, account, entry_id, Source(order_id=found.order_id, redemption_id=redemption_id)
        )
        return {
            "redemption_id": redemption_id,
            "member_id": found.member_id,
            "points": found.points,
            "status": "cancelled",
            "available_after": account.available,
        }


async def adjust(
    runtime: Runtime, *, member_id: str, points: int, reason: str, adjusted_by: str | None
) -> dict[str, Any]:
    async with one_account(runtime, member_id) as (batch, account):
        if points > 0:
            await refuse_if_erased(batch.conn, member_id)
        account.expire_due(batch.now, monotonic_ulid)  # a deduction takes no expired points
        rules = await load_rulebook(batch.conn)
        try:
            entry = account.adjust(
                points,
                entry_id=monotonic_ulid(),
                reason=reason,
                source=Source(type="adjustment"),
                now=batch.now,
                lot_id=monotonic_ulid(),
                expires_at=rules.lot_expiry(batch.now),
            )
        except InsufficientPoints as exc:
            raise _insufficient(exc) from exc
        return {
            "entry_id": entry.entry_id,
            "member_id": member_id,
            "points": points,
            "reason": reason,
            "available_after": account.available,
        }
