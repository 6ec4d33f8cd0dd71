"""Turns what happened to accounts (their operations) into `points.*` events in the outbox."""

from __future__ import annotations

from typing import Any

from loyalty_shared.events import Event, make_event
from loyalty_shared.events.points import (
    LedgerPortion,
    PointsAdjusted,
    PointsCredited,
    PointsDebited,
    PointsExpired,
    PointsReleased,
    PointsReversed,
)
from loyalty_shared.kafka import add_to_outbox
from sqlalchemy.ext.asyncio import AsyncConnection

from ..adapters.ledger_store import LedgerBatch
from ..domain.ledger import Account, Entry, Operation

SOURCE = "loyalty/points"


def _portions(account: Account, entries: list[Entry]) -> list[LedgerPortion]:
    """Each entry's points per lot: taken from lots (outgoing entries) or given back to them
    (a cancelled redemption); what no lot accounts for (a debt) is listed without a lot."""
    listed: list[LedgerPortion] = []
    for entry in entries:
        mine = [p for p in account.portions if p.entry_id == entry.entry_id]
        moved = [p for p in mine if (p.points > 0) == (entry.points < 0)]
        portions = [
            LedgerPortion(
                entry_id=entry.entry_id,
                lot_id=p.lot_id,
                points=abs(p.points),
                expires_at=p.expires_at,
            )
            for p in moved
        ]
        rest = abs(entry.points) - sum(p.points for p in portions)
        if rest > 0:
            portions.append(
                LedgerPortion(
                    entry_id=entry.entry_id,
                    lot_id=entry.lot_id,
                    points=rest,
                    expires_at=entry.expires_at,
                )
            )
        listed += portions
    return listed


def _event(account: Account, op: Operation) -> Event[Any]:
    first = op.entries[0]
    member_id = account.member_id
    balances = {
        "member_id": member_id,
        "available_after": op.available_after,
        "pending_after": op.pending_after,
        "occurred_at": first.occurred_at,
    }
    points = sum(e.points for e in op.entries)
    data: Any
    if op.name == "credited":
        data = PointsCredited(
            **balances,
            entry_id=first.entry_id,
            lot_id=first.lot_id or "",
            points=first.points,
            rule=first.rule or "",
            reason=first.reason,
            order_id=first.source.order_id,
            status="pending" if first.bucket == "pending" else "available",
            capped_points=first.capped_points,
            available_at=first.available_at,
            expires_at=first.expires_at,
            source_event_id=first.source.event_id,
            source_type=first.source.type,
        )
        kind = "points.credited"
    elif op.name == "released":
        data = PointsReleased(
            **balances,
            entry_id=first.entry_id,
            lot_id=first.lot_id or "",
            points=first.points,
            rule=first.rule,
            order_id=first.source.order_id,
            expires_at=first.expires_at,
        )
        kind = "points.released"
    elif op.name == "debited":
        data = PointsDebited(
            **balances,
            redemption_id=first.source.redemption_id or "",
            points=-points,
            reason=first.reason,
            rule=first.rule,
            order_id=first.source.order_id,
            entries=_portions(account, op.entries),
        )
        kind = "points.debited"
    elif op.name in ("reversed_earning", "reversed_redemption"):
        data = PointsReversed(
            **balances,
            reverses="earn" if op.name == "reversed_earning" else "redeem",
            points=abs(points),
            reason=first.reason,
            rule=first.rule,
            order_id=first.source.order_id,
            redemption_id=first.source.redemption_id,
            entries=_portions(account, op.entries),
            source_event_id=first.source.event_id,
            source_type=first.source.type,
        )
        kind = "points.reversed"
    elif op.name == "expired":
        data = PointsExpired(
            **balances, points=-points, rule=first.rule, entries=_portions(account, op.entries)
        )
        kind = "points.expired"
    else:
        data = PointsAdjusted(
            **balances, points=points, reason=first.reason, entries=_portions(account, op.entries)
        )
        kind = "points.adjusted"
    return make_event(kind, data, subject=member_id, source=SOURCE, time=first.occurred_at)


async def publish_operations(conn: AsyncConnection, batch: LedgerBatch) -> int:
    """Write one event per account operation to the outbox, then forget the operations."""
    events = []
    for account in batch.accounts.values():
        events += [_event(account, op) for op in account.operations]
    await add_to_outbox(conn, events)
    return len(events)
