"""The tier ladder: upgrades as soon as a qualifying order is paid, downgrades in tier-review."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from loyalty_shared.events import Event, make_event
from loyalty_shared.events.members import (
    TIER_LADDER_KEY,
    LadderTier,
    MemberTierChanged,
    MemberTierLadderChanged,
)
from loyalty_shared.events.points import PointsCredited, PointsReversed
from loyalty_shared.kafka import add_to_outbox
from loyalty_shared.service import Runtime
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from ..adapters.tables import card_plans, members, tier_ladder
from ..domain.cards import tier_plan_code
from ..domain.tiers import (
    DEFAULT_LADDER,
    Tier,
    TierLadder,
    TierMetric,
    change_reason,
    downgrade_to,
    ladder_errors,
    upgrade_to,
    window_start,
)
from .cards import card_issued, insert_cards, invalid
from .events import SOURCE, emit

REVIEW_CHUNK = 500  # members locked and moved per transaction by tier-review

# ---------------------------------------------------------------------------------------------
# The ladder
# ---------------------------------------------------------------------------------------------


async def load_ladder(conn: AsyncConnection) -> TierLadder:
    row = (await conn.execute(select(tier_ladder).where(tier_ladder.c.id == 1))).first()
    if row is None:
        return DEFAULT_LADDER
    return TierLadder.build(row.metric, [Tier.from_json(t) for t in row.tiers])


async def signup_tier(conn: AsyncConnection) -> str:
    """The tier a new member starts on: the lowest of the current ladder."""
    return (await load_ladder(conn)).lowest.code


async def ladder_view(runtime: Runtime) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
        row = (await conn.execute(select(tier_ladder).where(tier_ladder.c.id == 1))).first()
        ladder = await load_ladder(conn)
    return {
        "metric": ladder.metric,
        "tiers": ladder.to_json(),
        "updated_at": row.updated_at if row else None,
    }


def _tier_plan(tier: Tier) -> dict[str, Any]:
    """The card plan that mirrors a tier: the tier card carries its benefits."""
    return {
        "code": tier_plan_code(tier.code),
        "name": f"{tier.name} card",
        "kind": "tier",
        "currency": "CNY",
        "benefits": {
            "points_multiplier": tier.points_multiplier,
            "discount_percent": tier.benefits.discount_percent,
            "free_shipping": tier.benefits.free_shipping,
        },
        "tier": tier.code,
    }


def ladder_changed(ladder: TierLadder, *, occurred_at: datetime) -> MemberTierLadderChanged:
    """The ladder as `member.tier_ladder_changed` carries it: codes, names and multipliers in
    ladder order, and the metric (thresholds and benefits stay here and on the tier cards)."""
    return MemberTierLadderChanged(
        tiers=[
            LadderTier(code=t.code, label=t.name, points_multiplier=t.points_multiplier)
            for t in ladder.tiers
        ],
        metric=ladder.metric,
        occurred_at=occurred_at,
    )


async def replace_ladder(runtime: Runtime, metric: str, tiers: Sequence[Tier]) -> dict[str, Any]:
    """Set the ladder (422 `validation_error` if it breaks a rule) and the tier plans that mirror
    it, and announce it: one `member.tier_ladder_changed` (key `tier-ladder`, no subject) with
    the whole ladder, in the same transaction, on every accepted call (an unchanged ladder is
    announced again, which re-syncs a consumer that missed it). Moves nobody: members move on
    their next qualifying event (up) or tier-review (down)."""
    errors = ladder_errors(metric, tiers)
    if errors:
        raise invalid(errors)
    ladder = TierLadder.build(metric, tiers)
    now = runtime.clock.now()
    async with runtime.transaction() as conn:
        await conn.execute(
            pg_insert(tier_ladder)
            .values(id=1, metric=ladder.metric, tiers=ladder.to_json(), updated_at=now)
            .on_conflict_do_update(
                index_elements=["id"],
                set_={"metric": ladder.metric, "tiers": ladder.to_json(), "updated_at": now},
            )
        )
        for tier in ladder.tiers:
            plan = {**_tier_plan(tier), "active": True, "updated_at": now}
            await conn.execute(
                pg_insert(card_plans)
                .values(**plan, created_at=now)
                .on_conflict_do_update(index_elements=["code"], set_=plan)
            )
        # Tier cards of removed tiers keep their plan row (cards refer to it), marked inactive.
        await conn.execute(
            card_plans.update()
            .where(card_plans.c.kind == "tier", card_plans.c.tier.not_in(ladder.codes))
            .values(active=False, updated_at=now)
        )
        await emit(
            conn,
            "member.tier_ladder_changed",
            ladder_changed(ladder, occurred_at=now),
            subject=None,
            key=TIER_LADDER_KEY,
            time=now,
        )
    return {"metric": ladder.metric, "tiers": ladder.to_json(), "updated_at": now}


# ---------------------------------------------------------------------------------------------
# The metric, set-based: `subjects(member_id)` in, `(member_id, value)` out
# ---------------------------------------------------------------------------------------------

_NET_SPEND = (
    "CASE WHEN o.status = 'cancelled' THEN 0 ELSE greatest(o.paid_minor - o.refunded_minor, 0) END"
)
_COUNTS = "o.status <> 'cancelled' AND (o.paid_minor = 0 OR o.refunded_minor < o.paid_minor)"
_IN_WINDOW = "o.member_id = s.member_id AND o.paid_at > :window_start AND o.paid_at <= :as_of"
_METRIC_SQL: dict[str, str] = {
    "spend_365d": f"""
        SELECT s.member_id, CAST(coalesce(sum({_NET_SPEND}), 0) AS bigint) AS value
        FROM subjects s LEFT JOIN orders o ON {_IN_WINDOW}
        GROUP BY s.member_id""",
    "order_count_365d": f"""
        SELECT s.member_id, CAST(count(o.order_id) FILTER (WHERE {_COUNTS}) AS bigint) AS value
        FROM subjects s LEFT JOIN orders o ON {_IN_WINDOW}
        GROUP BY s.member_id""",
    "lifetime_points": """
        SELECT s.member_id, CAST(greatest(coalesce(p.lifetime_earned, 0), 0) AS bigint) AS value
        FROM subjects s LEFT JOIN member_points p ON p.member_id = s.member_id""",
}


def _metric_params(metric: str, as_of: datetime) -> dict[str, Any]:
    if metric == "lifetime_points":
        return {}
    return {"as_of": as_of, "window_start": window_start(as_of)}


async def metric_values(
    conn: AsyncConnection, metric: TierMetric, member_ids: Iterable[str], as_of: datetime
) -> dict[str, int]:
    """Each member's value of the ladder's metric as if the clock read `as_of`."""
    sql = (
        "WITH subjects AS (SELECT DISTINCT unnest(CAST(:ids AS varchar[])) AS member_id) "
        + _METRIC_SQL[metric]
    )
    rows = await conn.execute(text(sql), {"ids": list(member_ids), **_metric_params(metric, as_of)})
    return {r.member_id: int(r.value) for r in rows}


# ---------------------------------------------------------------------------------------------
# Moving members: one place that updates members, tier cards and the outbox
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TierChange:
    member_id: str
    old_tier: str
    new_tier: str
    value: int
    occurred_at: datetime
    order_id: str | None = None


_MOVE_MEMBERS = text(
    """
    UPDATE members SET tier = v.tier, updated_at = :now
    FROM unnest(CAST(:ids AS varchar[]), CAST(:tiers AS varchar[])) AS v(member_id, tier)
    WHERE members.member_id = v.member_id
    """
)
_REPLACE_TIER_CARDS = text(
    """
    UPDATE cards SET plan_code = v.plan_code, valid_from = v.at, issued_at = v.at,
                     updated_at = :now
    FROM unnest(CAST(:ids AS varchar[]), CAST(:plans AS varchar[]), CAST(:ats AS timestamptz[]))
         AS v(member_id, plan_code, at)
    WHERE cards.kind = 'tier' AND cards.member_id = v.member_id
    RETURNING cards.member_id, cards.card_no
    """
)


async def apply_tier_changes(
    conn: AsyncConnection, ladder: TierLadder, changes: Sequence[TierChange], now: datetime
) -> None:
    """Move members (whose rows the caller has locked): set their tier, replace or issue their
    tier card, and write `member.tier_changed` then `member.card_issued` for each."""
    if not changes:
        return
    ids = [c.member_id for c in changes]
    await conn.execute(
        _MOVE_MEMBERS, {"ids": ids, "tiers": [c.new_tier for c in changes], "now": now}
    )
    replaced = {
        r.member_id: r.card_no
        for r in await conn.execute(
            _REPLACE_TIER_CARDS,
            {
                "ids": ids,
                "plans": [tier_plan_code(c.new_tier) for c in changes],
                "ats": [c.occurred_at for c in changes],
                "now": now,
            },
        )
    }
    fresh = await insert_cards(
        conn,
        [
            {
                "member_id": c.member_id,
                "plan_code": tier_plan_code(c.new_tier),
                "kind": "tier",
                "valid_from": c.occurred_at,
                "issued_at": c.occurred_at,
                "created_at": now,
                "updated_at": now,
            }
            for c in changes
            if c.member_id not in replaced
        ],
    )
    issued = {r["member_id"]: r["card_no"] for r in fresh}
    events: list[Event[Any]] = []
    for change in changes:
        tier = ladder.tier(change.new_tier)
        assert tier is not None, "members only move to tiers on the ladder"
        events.append(
            make_event(
                "member.tier_changed",
                MemberTierChanged(
                    member_id=change.member_id,
                    old_tier=change.old_tier,
                    new_tier=change.new_tier,
                    reason=change_reason(ladder, change.old_tier, change.new_tier),
                    points_multiplier=tier.points_multiplier,
                    qualifying_spend_minor=(
                        change.value if ladder.metric == "spend_365d" else None
                    ),
                    metric=ladder.metric,
                    metric_value=change.value,
                    order_id=change.order_id,
                    occurred_at=change.occurred_at,
                ),
                subject=change.member_id,
                source=SOURCE,
                time=change.occurred_at,
            )
        )
        card_no = replaced.get(change.member_id) or issued[change.member_id]
        events.append(
            make_event(
                "member.card_issued",
                card_issued(
                    member_id=change.member_id,
                    card_no=card_no,
                    plan=_tier_plan(tier),
                    action="replaced" if change.member_id in replaced else "issued",
                    occurred_at=change.occurred_at,
                    valid_from=change.occurred_at,
                ),
                subject=change.member_id,
                source=SOURCE,
                time=change.occurred_at,
            )
        )
    await add_to_outbox(conn, events)


# ---------------------------------------------------------------------------------------------
# Upgrades: on the qualifying event
# ---------------------------------------------------------------------------------------------


async def upgrade_after_paid_order(
    conn: AsyncConnection,
    *,
    member_id: str,
    current: str,
    order_id: str,
    occurred_at: datetime,
    now: datetime,
    ladder: TierLadder,
) -> str | None:
    """Re-evaluate a member's tier in the transaction that marked an order paid (the caller
    locked the member row and read its `current` tier, and loaded the ladder); upgrade at
    once (emitting `member.tier_changed`) when the member now qualifies for a higher tier.
    Answers the new tier, or None when it did not change. Never downgrades."""
    # The window as of the payment, and as of now: a backdated order counts with the orders
    # around it, and an order imported late still counts with everything paid since.
    moments = {occurred_at, max(now, occurred_at)}
    if ladder.metric == "lifetime_points":
        moments = {now}  # no window: the total so far
    value = 0
    for as_of in moments:
        values = await metric_values(conn, ladder.metric, [member_id], as_of)
        value = max(value, values.get(member_id, 0))
    target = upgrade_to(ladder, current, value)
    if target is None:
        return None
    await apply_tier_changes(
        conn,
        ladder,
        [TierChange(member_id, current, target.code, value, occurred_at, order_id)],
        now,
    )
    return target.code


_ADD_LIFETIME_POINTS = text(
    """
    INSERT INTO member_points (member_id, lifetime_earned, updated_at)
    SELECT m, d, :now FROM unnest(CAST(:ids AS varchar[]), CAST(:deltas AS bigint[])) AS t(m, d)
    ON CONFLICT (member_id) DO UPDATE SET
        lifetime_earned = member_points.lifetime_earned + EXCLUDED.lifetime_earned,
        updated_at = EXCLUDED.updated_at
    RETURNING member_id, lifetime_earned
    """
)


async def on_points_changed(
    runtime: Runtime, conn: AsyncConnection, events: list[Event[Any]]
) -> None:
    """`points.credited` adds to a member's lifetime points earned, `points.reversed` of an
    earning (a refund) takes them back; one upsert per batch. Under the lifetime_points ladder a
    credit that reaches a higher tier upgrades the member at once."""
    deltas: dict[str, int] = defaultdict(int)
    credited: dict[str, tuple[datetime, str | None]] = {}
    for event in events:
        data = event.data
        if isinstance(data, PointsCredited):
            deltas[data.member_id] += data.points
            credited[data.member_id] = (data.occurred_at, data.order_id)
        elif isinstance(data, PointsReversed) and data.reverses == "earn":
            deltas[data.member_id] -= data.points
    ids = sorted(m for m, d in deltas.items() if d != 0)  # a stable order: no deadlocks
    if not ids:
        return
    now = runtime.clock.now()
    rows = await conn.execute(
        _ADD_LIFETIME_POINTS, {"ids": ids, "deltas": [deltas[m] for m in ids], "now": now}
    )
    totals = {r.member_id: max(int(r.lifetime_earned), 0) for r in rows}
    ladder = await load_ladder(conn)
    if ladder.metric != "lifetime_points":
        return
    # Only members whose total now reaches above their tier are locked and moved.
    lowest_climb = ladder.tiers[1].threshold if len(ladder.tiers) > 1 else None
    climbing = sorted(
        m for m in credited if lowest_climb is not None and totals.get(m, 0) >= lowest_climb
    )
    if not climbing:
        return
    held = await conn.execute(
        select(members.c.member_id, members.c.tier)
        .where(members.c.member_id.in_(climbing))
        .order_by(members.c.member_id)
        .with_for_update()
    )
    changes = []
    for member_id, tier in held:
        target = upgrade_to(ladder, tier, totals[member_id])
        if target is not None:
            at, order_id = credited[member_id]
            changes.append(
                TierChange(member_id, tier, target.code, totals[member_id], at, order_id)
            )
    await apply_tier_changes(conn, ladder, changes, now)


# ---------------------------------------------------------------------------------------------
# Downgrades: the tier-review job
# ---------------------------------------------------------------------------------------------

# The tier codes members hold, read by skipping through the members_tier index (one probe per
# code) instead of reading every member.
_HELD_TIERS = text(
    """
    WITH RECURSIVE held(tier) AS (
        (SELECT tier FROM members ORDER BY tier LIMIT 1)
        UNION ALL
        SELECT (SELECT m.tier FROM members m WHERE m.tier > h.tier ORDER BY m.tier LIMIT 1)
        FROM held h WHERE h.tier IS NOT NULL
    )
    SELECT tier FROM held WHERE tier IS NOT NULL
    """
)


def _candidates_sql(metric: str) -> str:
    return f"""
    WITH ladder AS (
        SELECT * FROM unnest(CAST(:codes AS varchar[]), CAST(:thresholds AS bigint[]))
            AS l(code, threshold)
    ),
    subjects AS (
        SELECT m.member_id, m.tier FROM members m WHERE m.tier = ANY(CAST(:review AS varchar[]))
    ),
    measured AS ({_METRIC_SQL[metric]})
    SELECT (SELECT count(*) FROM subjects) AS reviewed,
           coalesce(array_agg(s.member_id ORDER BY s.member_id)
                    FILTER (WHERE l.code IS NULL OR v.value < l.threshold), '{{}}') AS candidates
    FROM subjects s
    JOIN measured v ON v.member_id = s.member_id
    LEFT JOIN ladder l ON l.code = s.tier
    """


async def review_tiers(runtime: Runtime, as_of: datetime) -> dict[str, int]:
    """The tier-review job: every member above the lowest tier whose metric as of `as_of` no
    longer reaches their tier moves straight down to the tier it still reaches. Members who
    changed tier after `as_of` are left alone (a re-run of a missed night cannot undo today's
    upgrade)."""
    counts = {"members_reviewed": 0, "downgraded": 0, "reassigned": 0}
    async with runtime.engine.connect() as conn:
        ladder = await load_ladder(conn)
        held = [r.tier for r in await conn.execute(_HELD_TIERS)]
        review = [code for code in held if code != ladder.lowest.code]
        if not review:
            return counts
        row = (
            await conn.execute(
                text(_candidates_sql(ladder.metric)),
                {
                    "codes": ladder.codes,
                    "thresholds": [t.threshold for t in ladder.tiers],
                    "review": review,
                    **_metric_params(ladder.metric, as_of),
                },
            )
        ).one()
    counts["members_reviewed"] = int(row.reviewed)
    candidates: list[str] = list(row.candidates)
    now = runtime.clock.now()
    for start in range(0, len(candidates), REVIEW_CHUNK):
        chunk = candidates[start : start + REVIEW_CHUNK]
        async with runtime.transaction() as conn:
            # Lock, then measure again: an order paid meanwhile is counted, not overruled.
            locked = (
                await conn.execute(
                    text(
                        """
                        SELECT m.member_id, m.tier FROM members m
                        WHERE m.member_id = ANY(CAST(:ids AS varchar[]))
                          AND m.tier = ANY(CAST(:review AS varchar[]))
                          AND NOT EXISTS (
                              SELECT 1 FROM cards c
                              WHERE c.member_id = m.member_id AND c.kind = 'tier'
                                AND c.valid_from > :as_of
                          )
                        ORDER BY m.member_id
                        FOR UPDATE
                        """
                    ),
                    {"ids": chunk, "review": review, "as_of": as_of},
                )
            ).all()
            values = await metric_values(conn, ladder.metric, [r.member_id for r in locked], as_of)
            changes = []
            for member_id, tier in locked:
                target = downgrade_to(ladder, tier, values.get(member_id, 0))
                if target is not None:
                    changes.append(
                        TierChange(member_id, tier, target.code, values.get(member_id, 0), as_of)
                    )
            await apply_tier_changes(conn, ladder, changes, now)
        for change in changes:
            if change_reason(ladder, change.old_tier, change.new_tier) == "downgrade":
                counts["downgraded"] += 1
            else:
                counts["reassigned"] += 1
    return counts


# ---------------------------------------------------------------------------------------------
# Reading a member's standing
# ---------------------------------------------------------------------------------------------


async def tier_progress(runtime: Runtime, member_id: str) -> dict[str, Any] | None:
    """A member's tier, their metric now and what the next tier needs (for a till or an app)."""
    now = runtime.clock.now()
    async with runtime.engine.connect() as conn:
        current = await conn.scalar(select(members.c.tier).where(members.c.member_id == member_id))
        if current is None:
            return None
        ladder = await load_ladder(conn)
        value = (await metric_values(conn, ladder.metric, [member_id], now)).get(member_id, 0)
    tier = ladder.tier(current)
    above = ladder.next_above(current) if tier else None
    return {
        "member_id": member_id,
        "tier": current,
        "points_multiplier": tier.points_multiplier if tier else ladder.lowest.points_multiplier,
        "metric": ladder.metric,
        "value": value,
        "as_of": now,
        "qualified_tier": ladder.qualified(value).code,
        "next_tier": (
            {
                "code": above.code,
                "name": above.name,
                "threshold": above.threshold,
                "remaining": max(above.threshold - value, 0),
            }
            if above
            else None
        ),
    }
