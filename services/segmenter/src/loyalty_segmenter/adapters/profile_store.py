"""Loads the profiles and order facts a unit of work touches (row-locked, in key order) and
writes back what changed with one statement per table, however large the batch."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import orjson
from loyalty_shared.db import insert_many
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from ..domain.churn import RECENT_DAYS, YEAR_DAYS
from ..domain.lifecycle import DAY
from ..domain.profile import OrderFact, Profile, WindowFigures
from .tables import points_movements, profile_orders, profiles

_PROFILE_FIELDS = [c.name for c in profiles.columns if c.name not in ("created_at", "updated_at")]
_JSON_FIELDS = {"category_spend", "preference_tags", "churn_reasons", "churn_inputs"}


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def profile_from_row(row: Any) -> Profile:
    return Profile(**{name: getattr(row, name) for name in _PROFILE_FIELDS})


def _order_from_row(row: Any) -> OrderFact:
    return OrderFact(
        order_id=row.order_id,
        member_id=row.member_id,
        occurred_at=row.occurred_at,
        paid_minor=row.paid_minor,
        refunded_minor=row.refunded_minor,
        cancelled=row.cancelled,
        channel=row.channel,
        store_id=row.store_id,
        currency=row.currency,
        categories=dict(row.categories or {}),
        coupon_codes=list(row.coupon_codes or []),
    )


_RESCAN = text(
    """
    SELECT member_id, count(*) AS orders_count, coalesce(sum(net_minor), 0) AS spend_minor,
           min(occurred_at) AS first_order_at, max(occurred_at) AS last_order_at,
           count(*) FILTER (WHERE occurred_at > :year_start) AS orders_365d,
           coalesce(sum(net_minor) FILTER (WHERE occurred_at > :year_start), 0) AS spend_365d,
           coalesce(sum(net_minor) FILTER (WHERE occurred_at > :recent_start), 0) AS recent,
           coalesce(sum(net_minor) FILTER (WHERE occurred_at > :year_start
                                           AND occurred_at <= :recent_start), 0) AS earlier,
           min(occurred_at) FILTER (WHERE occurred_at > :recent_start) AS oldest_recent,
           min(occurred_at) FILTER (WHERE occurred_at > :year_start
                                    AND occurred_at <= :recent_start) AS oldest_earlier
    FROM profile_orders
    WHERE member_id = ANY(CAST(:members AS text[])) AND counted
    GROUP BY member_id
    """
)


async def rescan_figures(
    conn: AsyncConnection, member_ids: Iterable[str], as_of: datetime
) -> dict[str, WindowFigures]:
    """Counters and windows of some members recomputed from their order facts (the SQL twin of
    domain.profile.window_figures); members without a counted order get zeros."""
    wanted = sorted(set(member_ids))
    figures = {m: WindowFigures(0, 0, None, None, 0, 0, 0, 0, None) for m in wanted}
    if not wanted:
        return figures
    rows = await conn.execute(
        _RESCAN,
        {
            "members": wanted,
            "year_start": as_of - YEAR_DAYS * DAY,
            "recent_start": as_of - RECENT_DAYS * DAY,
        },
    )
    for row in rows:
        due = [
            row.oldest_recent + RECENT_DAYS * DAY if row.oldest_recent else None,
            row.oldest_earlier + YEAR_DAYS * DAY if row.oldest_earlier else None,
        ]
        figures[row.member_id] = WindowFigures(
            orders_count=row.orders_count,
            spend_minor=int(row.spend_minor),
            first_order_at=row.first_order_at,
            last_order_at=row.last_order_at,
            orders_365d=row.orders_365d,
            spend_365d_minor=int(row.spend_365d),
            recent_spend_minor=int(row.recent),
            earlier_spend_minor=int(row.earlier),
            window_due_at=min((d for d in due if d is not None), default=None),
        )
    return figures


class ProfileBatch:
    """One unit of work over some members' profiles and some orders' facts."""

    def __init__(self, conn: AsyncConnection, now: datetime) -> None:
        self.conn = conn
        self.now = now
        self.profiles: dict[str, Profile] = {}
        self.orders: dict[str, OrderFact] = {}
        self._changed_orders: set[str] = set()
        self._points: dict[str, dict[str, Any]] = {}  # movements by event id

    # --- loading ------------------------------------------------------------------------

    async def load(self, member_ids: Iterable[str]) -> None:
        wanted = sorted(set(member_ids) - set(self.profiles))
        if not wanted:
            return
        # Create missing profiles, then lock all in member order: concurrent batches and the
        # job queue on the same members instead of deadlocking.
        await self.conn.execute(
            text(
                "INSERT INTO profiles (member_id, created_at, updated_at) "
                "SELECT m, :now, :now FROM unnest(CAST(:members AS text[])) AS m ORDER BY m "
                "ON CONFLICT DO NOTHING"
            ),
            {"members": wanted, "now": self.now},
        )
        rows = await self.conn.execute(
            select(profiles)
            .where(profiles.c.member_id.in_(wanted))
            .order_by(profiles.c.member_id)
            .with_for_update()
        )
        for row in rows:
            self.profiles[row.member_id] = profile_from_row(row)

    async def load_orders(self, order_ids: Iterable[str]) -> None:
        wanted = sorted(set(order_ids) - set(self.orders))
        if not wanted:
            return
        rows = await self.conn.execute(
            select(profile_orders)
            .where(profile_orders.c.order_id.in_(wanted))
            .order_by(profile_orders.c.order_id)
            .with_for_update()
        )
        for row in rows:
            self.orders[row.order_id] = _order_from_row(row)

    # --- recording ----------------------------------------------------------------------

    def order_changed(self, fact: OrderFact) -> None:
        self.orders[fact.order_id] = fact
        self._changed_orders.add(fact.order_id)

    def points_moved(self, event_id: str, occurred_at: datetime, kind: str, points: int) -> None:
        """One points event's movement, at the event's own instant."""
        self._points.setdefault(
            event_id,
            {"event_id": event_id, "occurred_at": occurred_at, "kind": kind, "points": points},
        )

    async def rescan(self, as_of: datetime) -> int:
        """Recompute from facts the profiles whose counters cannot be updated in place."""
        stale = [
            p.member_id
            for p in self.profiles.values()
            if p.needs_rescan or (p.window_due_at is not None and p.window_due_at <= as_of)
        ]
        if not stale:
            return 0
        await self.flush_orders()  # the facts are the truth: write them first
        for member_id, figures in (await rescan_figures(self.conn, stale, as_of)).items():
            self.profiles[member_id].apply_figures(figures)
        return len(stale)

    # --- writing ------------------------------------------------------------------------

    async def flush_orders(self) -> None:
        changed = [self.orders[i] for i in sorted(self._changed_orders)]
        self._changed_orders.clear()
        if not changed:
            return
        await insert_many(
            self.conn,
            profile_orders,
            [
                {
                    "order_id": f.order_id,
                    "member_id": f.member_id,
                    "channel": f.channel,
                    "store_id": f.store_id,
                    "currency": f.currency,
                    "occurred_at": f.occurred_at,
                    "paid_minor": f.paid_minor,
                    "refunded_minor": f.refunded_minor,
                    "cancelled": f.cancelled,
                    "counted": f.counted,
                    "net_minor": f.net_minor,
                    "categories": _json(f.categories),
                    "coupon_codes": _json(f.coupon_codes),
                    "updated_at": self.now,
                }
                for f in changed
            ],
            on_conflict=(
                "ON CONFLICT (order_id) DO UPDATE SET refunded_minor = EXCLUDED.refunded_minor, "
                "cancelled = EXCLUDED.cancelled, counted = EXCLUDED.counted, "
                "net_minor = EXCLUDED.net_minor, updated_at = EXCLUDED.updated_at"
            ),
        )

    async def flush(self) -> None:
        await self.flush_orders()
        await save_profiles(self.conn, list(self.profiles.values()), self.now)
        if self._points:
            await insert_many(
                self.conn,
                points_movements,
                [self._points[event_id] for event_id in sorted(self._points)],
                on_conflict="ON CONFLICT (event_id) DO NOTHING",
            )
            self._points.clear()


async def save_profiles(conn: AsyncConnection, batch: list[Profile], now: datetime) -> None:
    """Write whole profiles back, one statement for the lot."""
    if not batch:
        return
    rows = []
    for profile in sorted(batch, key=lambda p: p.member_id):
        row = {name: getattr(profile, name) for name in _PROFILE_FIELDS}
        for name in _JSON_FIELDS:
            row[name] = _json(row[name])
        row["created_at"] = now
        row["updated_at"] = now
        rows.append(row)
    assignments = ", ".join(
        f"{name} = EXCLUDED.{name}"
        for name in [*_PROFILE_FIELDS, "updated_at"]
        if name != "member_id"
    )
    await insert_many(
        conn, profiles, rows, on_conflict=f"ON CONFLICT (member_id) DO UPDATE SET {assignments}"
    )
