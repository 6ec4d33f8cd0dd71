"""Stored value: money on a member's balance, on the same ledger engine as points.

Top-ups (with bonus rules) are lots that never expire; spends take the oldest lots first and a
refund gives a spend back to the lots it came from. Amounts are minor units.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from loyalty_shared.errors import Conflict, NotFound, Unprocessable
from loyalty_shared.events import make_event
from loyalty_shared.events.points import (
    StoredValueRefunded,
    StoredValueSpent,
    StoredValueToppedUp,
)
from loyalty_shared.ids import monotonic_ulid
from loyalty_shared.kafka import add_to_outbox
from loyalty_shared.paging import cursor_after, encode_cursor
from loyalty_shared.service import Runtime
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from ..adapters.ledger_store import LedgerBatch, load_rulebook, read_account, read_ledger
from ..adapters.tables import VALUE_LEDGER, top_ups, value_spends
from ..domain.ledger import InsufficientPoints, Source
from ..domain.rules import TopUpBonusParams
from .accounts import give_back, one_account, refuse_if_erased
from .ledger_events import SOURCE

NEVER = datetime(9999, 12, 31, tzinfo=UTC)


async def _emit(batch: LedgerBatch, event_type: str, data: Any, member_id: str) -> None:
    await add_to_outbox(
        batch.conn, [make_event(event_type, data, subject=member_id, source=SOURCE, time=batch.now)]
    )


async def top_up(
    runtime: Runtime, *, member_id: str, external_id: str, amount_minor: int
) -> tuple[dict[str, Any], bool]:
    """Answers (top-up, created); the same external_id again answers the first top-up.
    Only members the points service knows (from member.registered) can hold money."""
    async with runtime.reading() as conn:
        if await read_account(conn, member_id, runtime.clock.now()) is None:
            raise NotFound(f"no member '{member_id}' is known to the points service")
        await refuse_if_erased(conn, member_id)
    async with one_account(runtime, member_id, VALUE_LEDGER) as (batch, account):
        top_up_id = monotonic_ulid()
        rules = await load_rulebook(batch.conn)
        bonus_rule: TopUpBonusParams | None = rules.enabled("top_up_bonus")
        bonus = bonus_rule.bonus_for(amount_minor) if bonus_rule else 0
        inserted = await batch.conn.scalar(
            pg_insert(top_ups)
            .values(
                top_up_id=top_up_id,
                member_id=member_id,
                external_id=external_id,
                amount_minor=amount_minor,
                bonus_minor=bonus,
                created_at=batch.now,
            )
            .on_conflict_do_nothing(index_elements=["external_id"])
            .returning(top_ups.c.top_up_id)
        )
        if inserted is None:
            first = (
                await batch.conn.execute(
                    select(top_ups).where(top_ups.c.external_id == external_id)
                )
            ).one()
            if first.member_id != member_id:
                raise Conflict(
                    "top_up_exists", "this external_id was used for another member's top-up"
                )
            return {**dict(first._mapping), "balance_minor": account.available}, False
        source = Source(event_id=top_up_id, type="top_up")
        for points, rule, reason in (
            (amount_minor, "top_up", f"top-up {external_id}"),
            (bonus, "top_up_bonus", "top-up bonus"),
        ):
            if points > 0:
                account.earn(
                    points,
                    lot_id=monotonic_ulid(),
                    entry_id=monotonic_ulid(),
                    rule=rule,
                    reason=reason,
                    source=source,
                    occurred_at=batch.now,
                    now=batch.now,
                    available_at=batch.now,
                    expires_at=NEVER,
                )
        await _emit(
            batch,
            "stored_value.topped_up",
            StoredValueToppedUp(
                member_id=member_id,
                top_up_id=top_up_id,
                external_id=external_id,
                amount_minor=amount_minor,
                bonus_minor=bonus,
                balance_after_minor=account.available,
                occurred_at=batch.now,
            ),
            member_id,
        )
        return {
            "top_up_id": top_up_id,
            "member_id": member_id,
            "external_id": external_id,
            "amount_minor": amount_minor,
            "bonus_minor": bonus,
            "created_at": batch.now,
            "balance_minor": account.available,
        }, True


async def spend(
    runtime: Runtime, *, member_id: str, amount_minor: int, reason: str, order_id: str | None
) -> dict[str, Any]:
    async with one_account(runtime, member_id, VALUE_LEDGER) as (batch, account):
        await refuse_if_erased(batch.conn, member_id)
        spend_id = monotonic_ulid()
        try:
            entry = account.redeem(
                amount_minor,
                entry_id=monotonic_ulid(),
                reason=reason,
                source=Source(order_id=order_id, redemption_id=spend_id),
                now=batch.now,
            )
        except InsufficientPoints as exc:
            raise Unprocessable(
                "insufficient_balance",
                f"{exc.wanted} wanted, {exc.available} on the balance",
                balance_minor=exc.available,
            ) from exc
        await batch.conn.execute(
            value_spends.insert().values(
                spend_id=spend_id,
                member_id=member_id,
                amount_minor=amount_minor,
                order_id=order_id,
                reason=reason,
                status="spent",
                entry_id=entry.entry_id,
                created_at=batch.now,
            )
        )
        await _emit(
            batch,
            "stored_value.spent",
            StoredValueSpent(
                member_id=member_id,
                spend_id=spend_id,
                amount_minor=amount_minor,
                order_id=order_id,
                balance_after_minor=account.available,
                occurred_at=batch.now,
            ),
            member_id,
        )
        return {
            "spend_id": spend_id,
            "member_id": member_id,
            "amount_minor": amount_minor,
            "order_id": order_id,
            "status": "spent",
            "balance_minor": account.available,
        }


async def refund_spend(runtime: Runtime, spend_id: str) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
        found = (
            await conn.execute(select(value_spends).where(value_spends.c.spend_id == spend_id))
        ).first()
    if found is None:
        raise NotFound(f"no stored-value spend '{spend_id}'")
    async with one_account(runtime, found.member_id, VALUE_LEDGER) as (batch, account):
        entry_id = await batch.conn.scalar(
            update(value_spends)
            .where(value_spends.c.spend_id == spend_id, value_spends.c.status == "spent")
            .values(status="refunded", refunded_at=batch.now)
            .returning(value_spends.c.entry_id)
        )
        if entry_id is None:
            raise Conflict("spend_refunded", "this spend was refunded already")
        await give_back(
            batch, account, entry_id, Source(order_id=found.order_id, redemption_id=spend_id)
        )
        await _emit(
            batch,
            "stored_value.refunded",
            StoredValueRefunded(
                member_id=found.member_id,
                spend_id=spend_id,
                amount_minor=found.amount_minor,
                order_id=found.order_id,
                balance_after_minor=account.available,
                occurred_at=batch.now,
            ),
            found.member_id,
        )
        return {
            "spend_id": spend_id,
            "member_id": found.member_id,
            "amount_minor": found.amount_minor,
            "order_id": found.order_id,
            "status": "refunded",
            "balance_minor": account.available,
        }


async def balance(runtime: Runtime, member_id: str) -> dict[str, Any]:
    """The balance and its lifetime figures (contract §5): `lifetime_topped_up_minor` is the
    money paid in by top-ups, the bonus money their rules added is `lifetime_bonus_minor`."""
    async with runtime.engine.connect() as conn:
        row = await read_account(conn, member_id, runtime.clock.now(), VALUE_LEDGER)
        paid, bonus = (
            await conn.execute(
                select(
                    func.coalesce(func.sum(top_ups.c.amount_minor), 0),
                    func.coalesce(func.sum(top_ups.c.bonus_minor), 0),
                ).where(top_ups.c.member_id == member_id)
            )
        ).one()
    return {
        "member_id": member_id,
        "currency": "CNY",
        "balance_minor": row["available"] if row else 0,
        "lifetime_topped_up_minor": int(paid),
        "lifetime_bonus_minor": int(bonus),
        "lifetime_spent_minor": row["lifetime_redeemed"] if row else 0,
    }


async def statement(
    runtime: Runtime, member_id: str, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the statement, newest first; the cursor is the last entry of the page before
    (one shared codec: a cursor this list did not hand out is a 422)."""
    after = cursor_after(cursor, 1)
    async with runtime.engine.connect() as conn:
        rows = await read_ledger(
            conn, member_id, limit + 1, after[0] if after else None, VALUE_LEDGER
        )
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (encode_cursor(rows[-1]["entry_id"]) if more and rows else None)
