"""Programme analytics over the facts the segmenter keeps (orders, profiles, points, coupons).

Every answer states its period and the definitions it used. A period is the half-open interval
of instants [start, end) (contract §8): what happened at `start` counts, what happened at `end`
does not, and the last day counts up to `end`, whatever the hour. A "customer" at an instant t
is a member with a counted paid order (not cancelled, not fully refunded) in the `active_days`
before t, [t - active_days, t) (default 360, the edge of `lost`); refunds and cancels count as
of now, not as of t.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from loyalty_shared.service import Runtime
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

CUSTOMER = (
    "a member with a paid order that is not cancelled or fully refunded in the {days} days "
    "before that instant"
)

_BASE = text(
    """
    WITH p AS (
        SELECT CAST(:start AS timestamptz) AS t0, CAST(:end AS timestamptz) AS t1,
               CAST(:window AS interval) AS w
    ), o AS (
        SELECT member_id, occurred_at FROM profile_orders WHERE member_id IS NOT NULL AND counted
    ), s AS (
        SELECT DISTINCT member_id FROM o, p WHERE occurred_at >= t0 - w AND occurred_at < t0
    ), e AS (
        SELECT DISTINCT member_id FROM o, p WHERE occurred_at >= t1 - w AND occurred_at < t1
    ), gained AS (
        SELECT member_id FROM e EXCEPT SELECT member_id FROM s
    ), firsts AS (
        SELECT member_id, min(occurred_at) AS first_at FROM o
        WHERE member_id IN (SELECT member_id FROM gained) GROUP BY member_id
    )
    SELECT (SELECT count(*) FROM s) AS s, (SELECT count(*) FROM e) AS e,
           (SELECT count(*) FROM gained) AS gained,
           (SELECT count(*) FROM firsts, p WHERE first_at >= t0 AND first_at < t1) AS new
    """
)


def _pct(part: int, whole: int) -> float | None:
    return round(part * 100 / whole, 2) if whole else None


def _period(start: datetime, end: datetime) -> dict[str, Any]:
    return {"start": start, "end": end}


async def _bucket(
    conn: AsyncConnection, start: datetime, end: datetime, active_days: int
) -> dict[str, Any]:
    row = (
        await conn.execute(
            _BASE, {"start": start, "end": end, "window": timedelta(days=active_days)}
        )
    ).one()
    s, e, gained, new = int(row.s), int(row.e), int(row.gained), int(row.new)
    retained = e - gained
    lost = s - retained
    return {
        "customers_at_start": s,
        "customers_at_end": e,
        "gained": gained,
        "new": new,
        "reactivated": gained - new,
        "retained": retained,
        "lost": lost,
        "net_change": e - s,
        "retention_rate": _pct(retained, s),
        "churn_rate": _pct(lost, s),
    }


async def retention(
    runtime: Runtime, start: datetime, end: datetime, active_days: int
) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
        figures = await _bucket(conn, start, end, active_days)
    s, e, n = figures["customers_at_start"], figures["customers_at_end"], figures["gained"]
    return {
        "period": _period(start, end),
        "S": s,
        "E": e,
        "N": n,
        "retention_rate": figures["retention_rate"],
        "churn_rate": figures["churn_rate"],
        "figures": figures,
        "definitions": {
            "retention_rate": "(E - N) / S x 100",
            "S": "customers at the start of the period",
            "E": "customers at the end of the period",
            "N": "customers at the end who were not customers at the start: new (first paid "
            "order in the period) plus reactivated (lapsed customers who bought again)",
            "customer": CUSTOMER.format(days=active_days),
            "churn_rate": "lost / S x 100, lost = S - (E - N)",
        },
    }


def _months(first: str, last: str, tz: ZoneInfo) -> list[tuple[str, datetime, datetime]]:
    year, month = (int(p) for p in first.split("-"))
    end_year, end_month = (int(p) for p in last.split("-"))
    months = []
    while (year, month) <= (end_year, end_month):
        nxt = (year + month // 12, month % 12 + 1)
        months.append(
            (
                f"{year:04d}-{month:02d}",
                datetime(year, month, 1, tzinfo=tz),
                datetime(nxt[0], nxt[1], 1, tzinfo=tz),
            )
        )
        year, month = nxt
    return months


async def leaky_bucket(
    runtime: Runtime, first: str, last: str, timezone: str, active_days: int
) -> dict[str, Any]:
    tz = ZoneInfo(timezone)
    months = _months(first, last, tz)
    items = []
    async with runtime.engine.connect() as conn:
        for label, start, end in months:
            items.append({"month": label, **await _bucket(conn, start, end, active_days)})
    return {
        "period": _period(months[0][1], months[-1][2]) if months else None,
        "timezone": timezone,
        "items": items,
        "totals": {
            "gained": sum(i["gained"] for i in items),
            "lost": sum(i["lost"] for i in items),
        },
        "definitions": {
            "customer": CUSTOMER.format(days=active_days),
            "gained": "N: customers at the month's end who were not customers at its start",
            "lost": "S - (E - N): customers at the start who are no longer customers at the end",
            "net_change": "E - S = gained - lost; a flat total can hide a large churn",
        },
    }


async def repeat_purchase(runtime: Runtime, start: datetime, end: datetime) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT count(*) AS buyers, count(*) FILTER (WHERE n >= 2) AS repeaters "
                    "FROM (SELECT member_id, count(*) AS n FROM profile_orders "
                    "WHERE member_id IS NOT NULL AND counted "
                    "AND occurred_at >= CAST(:start AS timestamptz) "
                    "AND occurred_at < CAST(:end AS timestamptz) GROUP BY member_id) AS b"
                ),
                {"start": start, "end": end},
            )
        ).one()
    buyers, repeaters = int(row.buyers), int(row.repeaters)
    return {
        "period": _period(start, end),
        "buyers": buyers,
        "repeat_buyers": repeaters,
        "repeat_purchase_rate": _pct(repeaters, buyers),
        "definitions": {
            "buyers": "members with at least one counted paid order in the period",
            "repeat_buyers": "members with at least two",
            "repeat_purchase_rate": "repeat_buyers / buyers x 100",
            "counted": "paid, not cancelled, not fully refunded (refunds as of now)",
        },
    }


async def members_vs_guests(runtime: Runtime, start: datetime, end: datetime) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT member_id IS NOT NULL AS is_member, count(*) AS orders, "
                    "coalesce(sum(net_minor), 0) AS revenue, count(DISTINCT member_id) AS buyers "
                    "FROM profile_orders WHERE counted "
                    "AND occurred_at >= CAST(:start AS timestamptz) "
                    "AND occurred_at < CAST(:end AS timestamptz) GROUP BY 1"
                ),
                {"start": start, "end": end},
            )
        ).all()
    groups: dict[str, dict[str, Any]] = {}
    for is_member in (True, False):
        row = next((r for r in rows if r.is_member is is_member), None)
        orders = int(row.orders) if row else 0
        revenue = int(row.revenue) if row else 0
        buyers = int(row.buyers) if row and is_member else None
        groups["members" if is_member else "guests"] = {
            "orders": orders,
            "revenue_minor": revenue,
            "spend_per_order_minor": round(revenue / orders, 2) if orders else None,
            "buyers": buyers,
            "orders_per_buyer": round(orders / buyers, 2) if buyers else None,
        }
    m, g = groups["members"], groups["guests"]
    ratio = (
        round(m["spend_per_order_minor"] / g["spend_per_order_minor"], 2)
        if m["spend_per_order_minor"] and g["spend_per_order_minor"]
        else None
    )
    return {
        "period": _period(start, end),
        **groups,
        "spend_per_order_ratio": ratio,
        "definitions": {
            "orders": "counted paid orders placed in the period (guest orders have no member)",
            "revenue_minor": "paid less refunds",
            "spend_per_order_minor": "revenue_minor / orders",
            "orders_per_buyer": "orders / distinct members who ordered",
            "spend_per_order_ratio": "members' spend per order / guests'",
        },
        "limitations": [
            "guest orders carry no customer identity, so guests' buyers and orders per buyer "
            "cannot be known (null)"
        ],
    }


async def points_liability(runtime: Runtime, start: datetime, end: datetime) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
        totals = (
            await conn.execute(
                text(
                    "SELECT coalesce(sum(greatest(points_available, 0)), 0) AS available, "
                    "coalesce(sum(points_pending), 0) AS pending, "
                    "coalesce(sum(least(points_available, 0)), 0) AS negative, "
                    "count(*) FILTER (WHERE points_available > 0 OR points_pending > 0) AS holders "
                    "FROM profiles"
                )
            )
        ).one()
        moves = {
            row.kind: int(row.points)
            for row in await conn.execute(
                text(
                    "SELECT kind, sum(points) AS points FROM points_movements "
                    "WHERE occurred_at >= CAST(:start AS timestamptz) "
                    "AND occurred_at < CAST(:end AS timestamptz) GROUP BY kind"
                ),
                {"start": start, "end": end},
            )
        }
    kinds = (
        "credited",
        "released",
        "debited",
        "reversed_earn",
        "reversed_redeem",
        "expired",
        "adjusted",
    )
    movements = {k: moves.get(k, 0) for k in kinds}
    earned = movements["credited"] - movements["reversed_earn"]
    redeemed = movements["debited"] - movements["reversed_redeem"]
    return {
        "period": _period(start, end),
        "outstanding": {
            "available": int(totals.available),
            "pending": int(totals.pending),
            "total": int(totals.available) + int(totals.pending),
            "negative_balances": int(-totals.negative),
            "members_holding_points": int(totals.holders),
        },
        "movements": movements,
        "redemption_rate": _pct(redeemed, earned),
        "definitions": {
            "outstanding": "now: the sum of members' balances after their last points event "
            "(positive available plus pending); the programme's liability in points",
            "movements": "points per kind of points event whose own time lies in the period "
            "[start, end); adjusted is signed",
            "redemption_rate": "(debited - reversed_redeem) / (credited - reversed_earn) x 100",
        },
        "limitations": [
            "the money value of a point is not in the events; liability is in points",
            "the points service's GET /v1/reports/liability is the ledger's own figure",
        ],
    }


_CAMPAIGN = text(
    """
    SELECT count(*) AS issued, count(DISTINCT member_id) AS receivers,
           count(*) FILTER (WHERE redeemed_at IS NOT NULL AND released_at IS NULL) AS redeemed,
           coalesce(sum(discount_minor) FILTER (WHERE redeemed_at IS NOT NULL
                                                AND released_at IS NULL), 0) AS discount,
           (SELECT count(*) FROM campaign_holdouts WHERE campaign_code = :code) AS holdouts
    FROM coupon_facts WHERE campaign_code = :code
    """
)
# Receivers from their first coupon of the campaign; the holdout from their first holdout
# record (the draw is deterministic and the share fixed, so no member is both; should one ever
# be, they count as a receiver). Each member's counted orders in [since, since + window).
_GROUPS = text(
    """
    WITH r AS (
        SELECT member_id, min(issued_at) AS since FROM coupon_facts
        WHERE campaign_code = :code AND issued_at IS NOT NULL GROUP BY member_id
    ), h AS (
        SELECT member_id, min(assigned_at) AS since FROM campaign_holdouts ho
        WHERE campaign_code = :code AND NOT EXISTS (
            SELECT 1 FROM coupon_facts c WHERE c.campaign_code = :code
              AND c.member_id = ho.member_id)
        GROUP BY member_id
    ), g AS (
        SELECT 'receivers' AS grp, member_id, since FROM r
        UNION ALL SELECT 'holdout', member_id, since FROM h
    )
    SELECT g.grp, count(DISTINCT g.member_id) AS members,
           count(DISTINCT o.member_id) AS buyers, count(o.order_id) AS orders,
           coalesce(sum(o.net_minor), 0) AS revenue,
           min(g.since) AS first_since, max(g.since) AS last_since
    FROM g LEFT JOIN profile_orders o ON o.member_id = g.member_id AND o.counted
         AND o.occurred_at >= g.since AND o.occurred_at < g.since + CAST(:window AS interval)
    GROUP BY g.grp
    """
)
_OTHERS_REVENUE = text(
    """
    WITH others AS (
        SELECT member_id FROM profiles WHERE erased_at IS NULL AND registered_at IS NOT NULL
          AND registered_at < CAST(:since AS timestamptz)
        EXCEPT SELECT member_id FROM coupon_facts WHERE campaign_code = :code
        EXCEPT SELECT member_id FROM campaign_holdouts WHERE campaign_code = :code
    )
    SELECT (SELECT count(*) FROM others) AS members,
           count(DISTINCT o.member_id) AS buyers, count(o.order_id) AS orders,
           coalesce(sum(o.net_minor), 0) AS revenue
    FROM others JOIN profile_orders o ON o.member_id = others.member_id AND o.counted
         AND o.occurred_at >= CAST(:since AS timestamptz)
         AND o.occurred_at < CAST(:since AS timestamptz) + CAST(:window AS interval)
    """
)


def _group(members: int, row: Any) -> dict[str, Any]:
    revenue = int(row.revenue) if row is not None else 0
    buyers = int(row.buyers) if row is not None else 0
    return {
        "members": members,
        "buyers": buyers,
        "orders": int(row.orders) if row is not None else 0,
        "revenue_minor": revenue,
        "revenue_per_member_minor": round(revenue / members, 2) if members else None,
        "response_rate": _pct(buyers, members),
    }


def _per_member(group: dict[str, Any]) -> float | None:
    return group["revenue_minor"] / group["members"] if group["members"] else None


def _lift(treated: dict[str, Any], baseline: dict[str, Any], against: str) -> dict[str, Any]:
    """Receivers against a baseline group, from the unrounded figures."""
    t, b = _per_member(treated), _per_member(baseline)
    diff = t - b if t is not None and b is not None else None
    rt, rb = treated["response_rate"], baseline["response_rate"]
    return {
        "baseline": against,
        "revenue_per_member_minor": round(diff, 2) if diff is not None else None,
        "revenue_per_member_pct": round(diff * 100 / b, 2) if diff is not None and b else None,
        "response_rate_points": round(rt - rb, 2) if rt is not None and rb is not None else None,
        "incremental_revenue_minor": (
            round(diff * treated["members"], 2) if diff is not None else None
        ),
    }


async def campaign_results(runtime: Runtime, code: str, window_days: int) -> dict[str, Any] | None:
    window = timedelta(days=window_days)
    as_of = runtime.clock.now()
    async with runtime.engine.connect() as conn:
        head = (await conn.execute(_CAMPAIGN, {"code": code})).one()
        if not head.issued and not head.holdouts:
            return None
        groups = {
            row.grp: row for row in await conn.execute(_GROUPS, {"code": code, "window": window})
        }
        starts = [g.first_since for g in groups.values() if g.first_since is not None]
        ends = [g.last_since for g in groups.values() if g.last_since is not None]
        first_at = min(starts) if starts else None
        others = (
            await conn.execute(_OTHERS_REVENUE, {"code": code, "window": window, "since": first_at})
        ).one()
    issued, redeemed = int(head.issued), int(head.redeemed)
    r, h = groups.get("receivers"), groups.get("holdout")
    received = _group(int(r.members) if r is not None else 0, r)
    held = _group(int(h.members), h) if h is not None else None
    compared = _group(int(others.members), others)
    lift = _lift(received, held, "holdout") if held else _lift(received, compared, "non_receivers")
    period_end = max(ends) + window if ends else None
    limitations = []
    if held is None:
        limitations.append(
            "no holdout member of this campaign has been seen (holdout_percent 0, or none "
            "drawn yet), so the lift is against non-receivers, who were not chosen at random: "
            "read it as an indication, not as the campaign's causal effect"
        )
    else:
        limitations.append(
            "no significance test is made: with small groups the lift is noisy; compare "
            "it with the groups' sizes"
        )
    if period_end is not None and period_end > as_of:
        limitations.append(
            "some measurement windows are still open at as_of: their members' revenue so "
            "far is counted (the holdout's windows open as the receivers' do, so the lift "
            "stays fair, but the per-member figures will still grow)"
        )
    return {
        "campaign_code": code,
        "period": (
            _period(first_at, period_end)
            if first_at is not None and period_end is not None
            else None
        ),
        "as_of": as_of,
        "window_days": window_days,
        "windows_complete": period_end is None or period_end <= as_of,
        "issued": issued,
        "redeemed": redeemed,
        "redemption_rate": _pct(redeemed, issued),
        "discount_minor": int(head.discount),
        "receivers": received,
        "holdout": held,
        "comparison": {"group": "non_receivers", **compared},
        "lift": lift,
        "revenue_per_member_lift_minor": lift["revenue_per_member_minor"],
        "definitions": {
            "issued": "coupons of the campaign issued (coupon.issued)",
            "redeemed": "of those, redeemed and not released by a cancel or refund",
            "redemption_rate": "redeemed / issued x 100",
            "receivers": "members who got a coupon of the campaign: their counted orders (paid, "
            f"not cancelled, not fully refunded; revenue net of refunds) in the {window_days} "
            "days from their first coupon of the campaign",
            "holdout": "members the campaign held out, its random control group "
            "(coupon.holdout_assigned) who got no coupon of it: their counted orders in the "
            f"{window_days} days from their first holdout assignment; null when none was seen",
            "comparison": "members registered before the campaign's first issue or holdout "
            "who were neither receivers nor held out: their counted orders in the "
            f"{window_days} days from that first instant",
            "period": "from the first member's start to the last member's start + window_days",
            "windows_complete": "every member's window has ended by as_of",
            "response_rate": "members who bought / members x 100",
            "revenue_per_member_minor": "revenue_minor / members",
            "lift": "receivers against the baseline: the holdout when it has members, else "
            "non-receivers (lift.baseline says which)",
            "lift.revenue_per_member_minor": "receivers' revenue per member - baseline's",
            "lift.revenue_per_member_pct": "that difference / baseline's revenue per member x "
            "100 (null when the baseline's is 0)",
            "lift.response_rate_points": "receivers' response rate - baseline's, in points",
            "lift.incremental_revenue_minor": "lift.revenue_per_member_minor x receivers' "
            "members: the revenue the campaign added, before its discounts (discount_minor)",
            "revenue_per_member_lift_minor": "= lift.revenue_per_member_minor",
        },
        "limitations": limitations,
    }


async def lifecycle_mix(runtime: Runtime) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
        stages = {
            row.stage: int(row.n)
            for row in await conn.execute(
                text(
                    "SELECT coalesce(lifecycle_stage, 'unknown') AS stage, count(*) AS n "
                    "FROM profiles WHERE erased_at IS NULL GROUP BY 1"
                )
            )
        }
        weights = {
            row.weight: int(row.n)
            for row in await conn.execute(
                text(
                    "SELECT buyer_weight AS weight, count(*) AS n FROM profiles "
                    "WHERE erased_at IS NULL GROUP BY 1"
                )
            )
        }
    return {
        "as_of": runtime.clock.now(),
        "lifecycle_stages": stages,
        "buyer_weights": weights,
        "definitions": {
            "lifecycle_stages": "members per stage as last evaluated (on events and by the "
            "recompute job)",
            "buyer_weights": "members per buyer weight (paid orders in 365 days)",
        },
    }
