"""Queries on accounts: balances and the ledger that explains them."""

from __future__ import annotations

from typing import Any

from loyalty_shared.service import Runtime

from ..adapters.ledger_store import read_account, read_expiring, read_ledger


async def account_view(runtime: Runtime, member_id: str) -> dict[str, Any]:
    now = runtime.clock.now()
    async with runtime.engine.connect() as conn:
        account = await read_account(conn, member_id)
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
    async with runtime.engine.connect() as conn:
        rows = await read_ledger(conn, member_id, limit + 1, cursor)
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1]["entry_id"] if more and rows else None)
