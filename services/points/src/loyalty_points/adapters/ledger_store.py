"""Loads the accounts a unit of work touches (row-locked, in member order) and writes back what
changed with one statement per table, however many members and events the batch holds."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import orjson
from loyalty_shared.db import insert_many
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from ..domain.earning import Card, Member, OrderPoints, ReferralBonus
from ..domain.ledger import Account, Lot
from ..domain.rules import PARAMS, Rule, Rulebook, default_rules
from .tables import (
    POINTS_LEDGER,
    LedgerTables,
    accounts,
    earning_rules,
    order_points,
    referral_bonuses,
)

_LOT_COLUMNS = [c.name for c in POINTS_LEDGER.lots.columns]


def _row(record: Any) -> dict[str, Any]:
    """A dataclass as a flat dict (dataclasses.asdict deep-copies: too slow per event)."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _card(stored: dict[str, Any]) -> Card:
    return Card(
        stored["multiplier"], _time(stored.get("expires_at")), _time(stored.get("valid_from"))
    )


def _lot(row: Any) -> Lot:
    return Lot(**{k: getattr(row, k) for k in _LOT_COLUMNS})


async def load_rulebook(conn: AsyncConnection) -> Rulebook:
    rules = default_rules()
    for row in await conn.execute(select(earning_rules)):
        if row.code in PARAMS:
            rules[row.code] = Rule(
                row.code, row.enabled, PARAMS[row.code].model_validate(row.params)
            )
    return Rulebook(rules)


async def save_rule(conn: AsyncConnection, rule: Rule, now: datetime) -> None:
    await conn.execute(
        text(
            "INSERT INTO earning_rules (code, enabled, params, updated_at) "
            "VALUES (:code, :enabled, CAST(:params AS jsonb), :now) ON CONFLICT (code) DO UPDATE "
            "SET enabled = EXCLUDED.enabled, params = EXCLUDED.params, updated_at = :now"
        ),
        {
            "code": rule.code,
            "enabled": rule.enabled,
            "params": rule.params.model_dump_json(),
            "now": now,
        },
    )


class LedgerBatch:
    """One unit of work over some members' ledgers."""

    def __init__(
        self, conn: AsyncConnection, now: datetime, ledger: LedgerTables = POINTS_LEDGER
    ) -> None:
        self.conn = conn
        self.now = now
        self.ledger = ledger
        self.accounts: dict[str, Account] = {}
        self.members: dict[str, Member] = {}
        self.orders: dict[str, OrderPoints] = {}
        self._known_orders: set[str] = set()
        self._member_changed: set[str] = set()
        # referral bonuses by the referred order they follow; new and reversed ones are written
        self.referrals: dict[str, list[ReferralBonus]] = {}
        self._new_referrals: list[ReferralBonus] = []

    # --- loading ------------------------------------------------------------------------

    async def load(
        self, member_ids: Iterable[str], *, lots_of: Iterable[str] | None = None
    ) -> None:
        """Lock and load the members' accounts with their open lots. `lots_of`: only these
        members' lots (the others' accounts can then only earn: `Account.lots_loaded`)."""
        wanted = sorted(set(member_ids) - set(self.accounts))
        if not wanted:
            return
        with_lots = set(wanted) if lots_of is None else set(lots_of) & set(wanted)
        # Create missing accounts first, then lock all in member order: concurrent batches and
        # requests touching the same members queue instead of deadlocking.
        await self.conn.execute(
            text(
                f"INSERT INTO {self.ledger.accounts.name} (member_id, available, pending, "
                "lifetime_earned, lifetime_redeemed, updated_at) SELECT m, 0, 0, 0, 0, :now "
                "FROM unnest(CAST(:members AS text[])) AS m ORDER BY m ON CONFLICT DO NOTHING"
            ),
            {"members": wanted, "now": self.now},
        )
        rows = await self.conn.execute(
            select(self.ledger.accounts)
            .where(self.ledger.accounts.c.member_id.in_(wanted))
            .order_by(self.ledger.accounts.c.member_id)
            .with_for_update()
        )
        for row in rows:
            self.accounts[row.member_id] = Account(
                member_id=row.member_id,
                available=row.available,
                pending=row.pending,
                lifetime_earned=row.lifetime_earned,
                lifetime_redeemed=row.lifetime_redeemed,
                lots_loaded=row.member_id in with_lots,
            )
            self.members[row.member_id] = Member(
                member_id=row.member_id,
                timezone=row.timezone,
                tier=row.tier,
                cards={
                    no: Card(
                        c["multiplier"], _time(c.get("expires_at")), _time(c.get("valid_from"))
                    )
                    for no, c in (row.cards or {}).items()
                },
                erased_at=row.erased_at,
            )
        if not with_lots:
            return
        lots = await self.conn.execute(
            select(self.ledger.lots).where(
                self.ledger.lots.c.member_id.in_(sorted(with_lots)),
                self.ledger.lots.c.remaining > 0,
            )
        )
        for row in lots:
            self.accounts[row.member_id].lots[row.lot_id] = _lot(row)

    async def load_lots(self, lot_ids: Iterable[str]) -> None:
        """Lots that may hold nothing now (a redemption to cancel took them)."""
        ids = list(set(lot_ids))
        if not ids:
            return
        for row in await self.conn.execute(
            select(self.ledger.lots).where(self.ledger.lots.c.lot_id.in_(ids))
        ):
            account = self.accounts[row.member_id]
            account.lots.setdefault(row.lot_id, _lot(row))

    async def load_orders(self, order_ids: Iterable[str]) -> None:
        ids = sorted(set(order_ids) - set(self.orders))
        if not ids:
            return
        rows = await self.conn.execute(
            select(order_points).where(order_points.c.order_id.in_(ids)).with_for_update()
        )
        for row in rows:
            order = OrderPoints(**{c.name: getattr(row, c.name) for c in order_points.columns})
            order.multiplier = Decimal(row.multiplier)
            self.orders[row.order_id] = order
            self._known_orders.add(row.order_id)
        # the lots of the batch's own members' orders (a referral names another member's order,
        # whose state it reads, not its lot)
        lot_ids = [
            o.lot_id for o in self.orders.values() if o.lot_id and o.member_id in self.accounts
        ]
        await self.load_lots(lot_ids)

    async def load_days(self, wanted: Iterable[tuple[str, date]]) -> None:
        pairs = sorted(set(wanted))
        if not pairs:
            return
        rows = await self.conn.execute(
            text(
                "SELECT d.member_id, d.local_date, d.points FROM daily_earnings d "
                "JOIN unnest(CAST(:members AS text[]), CAST(:days AS date[])) AS w(m, day) "
                "ON d.member_id = w.m AND d.local_date = w.day"
            ),
            {"members": [p[0] for p in pairs], "days": [p[1] for p in pairs]},
        )
        for row in rows:
            self.members[row.member_id].earned_by_day[row.local_date] = row.points

    async def load_referrals(self, order_ids: Iterable[str]) -> set[str]:
        """The referral bonuses, not yet reversed, that follow these orders; answers their
        referrers (whose accounts the batch must then load too)."""
        ids = sorted(set(order_ids))
        if not ids:
            return set()
        rows = await self.conn.execute(
            select(referral_bonuses).where(
                referral_bonuses.c.order_id.in_(ids), referral_bonuses.c.reversed_at.is_(None)
            )
        )
        for row in rows:
            bonus = ReferralBonus(**{c.name: getattr(row, c.name) for c in referral_bonuses.c})
            self.referrals.setdefault(bonus.order_id, []).append(bonus)
        return {b.referrer_id for bonuses in self.referrals.values() for b in bonuses}

    def add_referral(self, bonus: ReferralBonus) -> None:
        self.referrals.setdefault(bonus.order_id, []).append(bonus)
        self._new_referrals.append(bonus)

    def member_changed(self, member_id: str) -> None:
        self._member_changed.add(member_id)

    # --- writing ------------------------------------------------------------------------

    async def flush(self) -> None:
        changed = [a for a in self.accounts.values() if a.entries or a.changed_lots]
        new_lots = [lot for a in changed for lot in a.new_lots]
        new_ids = {lot.lot_id for lot in new_lots}
        if new_lots:
            await insert_many(self.conn, self.ledger.lots, [_row(lot) for lot in new_lots])
        updated = [a.lots[i] for a in changed for i in a.changed_lots if i not in new_ids]
        if updated:
            await self.conn.execute(
                text(
                    f"UPDATE {self.ledger.lots.name} l SET remaining = u.remaining, "
                    "state = u.state, notified_at = u.notified_at "
                    "FROM unnest(CAST(:ids AS text[]), "
                    "CAST(:remaining AS bigint[]), CAST(:states AS text[]), "
                    "CAST(:notified AS timestamptz[])) AS u(lot_id, remaining, state, notified_at) "
                    "WHERE l.lot_id = u.lot_id"
                ),
                {
                    "ids": [lot.lot_id for lot in updated],
                    "remaining": [lot.remaining for lot in updated],
                    "states": [lot.state for lot in updated],
                    "notified": [lot.notified_at for lot in updated],
                },
            )
        entries = [e for a in changed for e in a.entries]
        if entries:
            await insert_many(
                self.conn,
                self.ledger.entries,
                [
                    {
                        "entry_id": e.entry_id,
                        "member_id": e.member_id,
                        "kind": e.kind,
                        "bucket": e.bucket,
                        "points": e.points,
                        "reason": e.reason[:500],
                        "rule": e.rule,
                        "source_event_id": e.source.event_id,
                        "source_type": e.source.type,
                        "order_id": e.source.order_id,
                        "redemption_id": e.source.redemption_id,
                        "lot_id": e.lot_id,
                        "created_at": e.created_at,
                        "occurred_at": e.occurred_at,
                        "available_at": e.available_at,
                        "expires_at": e.expires_at,
                        "capped_points": e.capped_points,
                        "calculation": (
                            orjson.dumps(e.calculation.as_json()).decode()
                            if e.calculation
                            else None
                        ),
                    }
                    for e in entries
                ],
            )
        portions = [p for a in changed for p in a.portions]
        if portions:
            await insert_many(self.conn, self.ledger.portions, [_row(p) for p in portions])
        touched = sorted({a.member_id for a in changed} | self._member_changed)
        if touched:
            await self._write_accounts(touched)
        await self._write_days()
        await self._write_orders()
        await self._write_referrals()
        for account in changed:
            account.new_lots.clear()
            account.changed_lots.clear()
            account.entries.clear()
            account.portions.clear()
            account.operations.clear()
        self._member_changed.clear()

    async def _write_accounts(self, member_ids: list[str]) -> None:
        rows = [(self.accounts[m], self.members[m]) for m in member_ids]
        await self.conn.execute(
            text(
                f"UPDATE {self.ledger.accounts.name} a SET available = u.available, "
                "pending = u.pending, lifetime_earned = u.earned, "
                "lifetime_redeemed = u.redeemed, tier = u.tier, "
                "timezone = u.timezone, cards = u.cards, erased_at = u.erased_at, "
                "updated_at = :now "
                "FROM unnest(CAST(:ids AS text[]), CAST(:available AS bigint[]), "
                "CAST(:pending AS bigint[]), CAST(:earned AS bigint[]), "
                "CAST(:redeemed AS bigint[]), CAST(:tiers AS text[]), CAST(:tzs AS text[]), "
                "CAST(:cards AS jsonb[]), CAST(:erased AS timestamptz[])) "
                "AS u(member_id, available, pending, earned, redeemed, tier, timezone, cards, "
                "erased_at) WHERE a.member_id = u.member_id"
            ),
            {
                "now": self.now,
                "ids": member_ids,
                "available": [a.available for a, _ in rows],
                "pending": [a.pending for a, _ in rows],
                "earned": [a.lifetime_earned for a, _ in rows],
                "redeemed": [a.lifetime_redeemed for a, _ in rows],
                "tiers": [m.tier for _, m in rows],
                "tzs": [m.timezone for _, m in rows],
                "cards": [_cards_json(m) for _, m in rows],
                "erased": [m.erased_at for _, m in rows],
            },
        )

    async def _write_referrals(self) -> None:
        if self._new_referrals:
            await insert_many(self.conn, referral_bonuses, [_row(b) for b in self._new_referrals])
        new = {id(b) for b in self._new_referrals}
        reversed_now = [
            b
            for bonuses in self.referrals.values()
            for b in bonuses
            if b.reversed_at is not None and id(b) not in new
        ]
        if reversed_now:
            await self.conn.execute(
                text(
                    "UPDATE referral_bonuses SET reversed_at = :at "
                    "WHERE lot_id = ANY(CAST(:ids AS text[])) AND reversed_at IS NULL"
                ),
                {"at": self.now, "ids": [b.lot_id for b in reversed_now]},
            )
        self._new_referrals.clear()

    async def _write_days(self) -> None:
        pairs = [
            (m.member_id, d, m.earned_by_day[d])
            for m in self.members.values()
            for d in sorted(m.changed_days)
        ]
        if not pairs:
            return
        await self.conn.execute(
            text(
                "INSERT INTO daily_earnings (member_id, local_date, points) "
                "SELECT * FROM unnest(CAST(:m AS text[]), CAST(:d AS date[]), "
                "CAST(:p AS bigint[])) ON CONFLICT (member_id, local_date) "
                "DO UPDATE SET points = EXCLUDED.points"
            ),
            {"m": [p[0] for p in pairs], "d": [p[1] for p in pairs], "p": [p[2] for p in pairs]},
        )
        for member in self.members.values():
            member.changed_days.clear()

    async def _write_orders(self) -> None:
        if not self.orders:
            return
        rows = [_row(o) for o in self.orders.values()]
        for row in rows:
            row["multiplier"] = Decimal(row["multiplier"])
        await self.conn.execute(
            text(
                "INSERT INTO order_points (order_id, member_id, paid_minor, refunded_minor, "
                "points, per_minor, multiplier, awarded, current, lot_id, cancelled, steps) "
                "SELECT * FROM unnest(CAST(:order_id AS text[]), CAST(:member_id AS text[]), "
                "CAST(:paid AS bigint[]), CAST(:refunded AS bigint[]), CAST(:points AS int[]), "
                "CAST(:per AS int[]), CAST(:mult AS numeric[]), CAST(:awarded AS bigint[]), "
                "CAST(:current AS bigint[]), CAST(:lot AS text[]), CAST(:cancelled AS bool[]), "
                "CAST(:steps AS jsonb[])) ON CONFLICT (order_id) DO UPDATE SET "
                "refunded_minor = EXCLUDED.refunded_minor, current = EXCLUDED.current, "
                "cancelled = EXCLUDED.cancelled"
            ),
            {
                "order_id": [r["order_id"] for r in rows],
                "member_id": [r["member_id"] for r in rows],
                "paid": [r["paid_minor"] for r in rows],
                "refunded": [r["refunded_minor"] for r in rows],
                "points": [r["points"] for r in rows],
                "per": [r["per_minor"] for r in rows],
                "mult": [r["multiplier"] for r in rows],
                "awarded": [r["awarded"] for r in rows],
                "current": [r["current"] for r in rows],
                "lot": [r["lot_id"] for r in rows],
                "cancelled": [r["cancelled"] for r in rows],
                "steps": [orjson.dumps(r["steps"]).decode() for r in rows],
            },
        )


def _cards_json(member: Member) -> str:
    return orjson.dumps(
        {
            no: {
                "multiplier": c.multiplier,
                "valid_from": c.valid_from.isoformat() if c.valid_from else None,
                "expires_at": c.expires_at.isoformat() if c.expires_at else None,
            }
            for no, c in member.cards.items()
        }
    ).decode()


async def read_account(
    conn: AsyncConnection, member_id: str, now: datetime, ledger: LedgerTables = POINTS_LEDGER
) -> dict[str, Any] | None:
    """The account as it stands at `now`: `available` leaves out what remains of lots past
    their expiry, whether or not the `expire` job has run yet (contract §5)."""
    table, lots = ledger.accounts, ledger.lots
    due = (
        select(func.coalesce(func.sum(lots.c.remaining), 0))
        .where(
            lots.c.member_id == member_id,
            lots.c.state == "available",
            lots.c.remaining > 0,
            lots.c.expires_at <= now,
        )
        .scalar_subquery()
    )
    query = select(table, due.label("expired_unbooked")).where(table.c.member_id == member_id)
    row = (await conn.execute(query)).first()
    if row is None:
        return None
    account = dict(row._mapping)
    account["available"] -= int(account.pop("expired_unbooked"))
    return account


async def read_expiring(
    conn: AsyncConnection, member_id: str, now: datetime
) -> list[dict[str, Any]]:
    """What expires when, by the member's local date."""
    rows = await conn.execute(
        text(
            "SELECT (l.expires_at AT TIME ZONE a.timezone)::date AS on, sum(l.remaining) AS points "
            "FROM points_lots l JOIN accounts a USING (member_id) "
            "WHERE l.member_id = :m AND l.remaining > 0 AND l.state = 'available' "
            "AND l.expires_at > :now GROUP BY 1 ORDER BY 1"
        ),
        {"m": member_id, "now": now},
    )
    return [{"on": r.on, "points": int(r.points)} for r in rows]


async def erased_at(conn: AsyncConnection, member_id: str) -> datetime | None:
    """When the member was erased (member.erased), if they were."""
    return await conn.scalar(select(accounts.c.erased_at).where(accounts.c.member_id == member_id))


async def read_ledger(
    conn: AsyncConnection,
    member_id: str,
    limit: int,
    after: str | None,
    ledger: LedgerTables = POINTS_LEDGER,
) -> list[dict[str, Any]]:
    entries = ledger.entries
    query = select(entries).where(entries.c.member_id == member_id)
    if after:
        query = query.where(entries.c.entry_id < after)
    query = query.order_by(entries.c.entry_id.desc()).limit(limit)
    return [dict(r._mapping) for r in await conn.execute(query)]
