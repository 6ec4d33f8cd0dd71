"""Reports over the whole ledger: the programme's outstanding liability and its breakage."""

from __future__ import annotations

from typing import Any

from loyalty_shared.service import Runtime
from sqlalchemy import text


async def liability(runtime: Runtime) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
        # what remains of lots past their expiry is no liability, booked by `expire` or not yet
        totals = (
            await conn.execute(
                text(
                    "WITH due AS (SELECT member_id, sum(remaining) AS points FROM points_lots "
                    "WHERE state = 'available' AND remaining > 0 AND expires_at <= :now "
                    "GROUP BY member_id), "
                    "a AS (SELECT accounts.available - coalesce(due.points, 0) AS available, "
                    "accounts.pending FROM accounts LEFT JOIN due USING (member_id)) "
                    "SELECT coalesce(sum(greatest(available, 0)), 0) AS available, "
                    "coalesce(sum(pending), 0) AS pending, "
                    "coalesce(sum(least(available, 0)), 0) AS negative, "
                    "count(*) FILTER (WHERE available < 0) AS members_negative FROM a"
                ),
                {"now": runtime.clock.now()},
            )
        ).one()
        value = await conn.scalar(text("SELECT sum(available) FROM value_accounts"))
        expired = await conn.execute(
            text(
                "SELECT to_char(date_trunc('month', created_at AT TIME ZONE 'UTC'), 'YYYY-MM') "
                "AS month, -sum(points) AS points FROM ledger_entries WHERE kind = 'expire' "
                "GROUP BY 1 ORDER BY 1"
            )
        )
        return {
            "points": {
                "available": int(totals.available),
                "pending": int(totals.pending),
                "negative_balances": int(-totals.negative),
                "members_with_negative_balance": int(totals.members_negative),
                "outstanding": int(totals.available) + int(totals.pending),
            },
            "expired_by_month": [{"month": r.month, "points": int(r.points)} for r in expired],
            "stored_value": {"currency": "CNY", "outstanding_minor": int(value or 0)},
        }
