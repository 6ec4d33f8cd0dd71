"""The recompute job: time moves members between stages, windows roll, scores are re-ranked.

1. Members whose profile can change by `as_of` (stage boundary, churn step, or an order leaving
   a rolling window; `next_transition_at` <= as_of, through its index) are re-derived in chunks
   that lock them, with `member.lifecycle_changed` and segment changes announced once each.
   A nightly run touches what is due, not every member.
2. RFM scores 1-5 are re-ranked over the members with a paid order (one statement).
3. Segments whose rules read RFM scores or day counts (rfm.recency_days) are re-evaluated
   whole, in SQL, one segment per transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from loyalty_shared.jobs import Job
from loyalty_shared.service import Runtime
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ..adapters.profile_store import ProfileBatch
from ..config import profile_rules
from .profiles import settle
from .segment_membership import load_segments, refresh_segment

CHUNK = 1000

_DUE = text(
    "SELECT member_id FROM profiles WHERE next_transition_at <= :as_of "
    "AND (evaluated_at IS NULL OR evaluated_at <= :as_of) "
    "ORDER BY next_transition_at, member_id LIMIT :n FOR UPDATE SKIP LOCKED"
)

# The same quintiles as domain.rfm.quintile_scores: rank() - 1 buyers lie strictly below.
_SCORE_RFM = text(
    """
    WITH ranked AS (
        SELECT member_id, count(*) OVER () AS n,
               rank() OVER (ORDER BY last_order_at) - 1 AS r_below,
               rank() OVER (ORDER BY orders_count) - 1 AS f_below,
               rank() OVER (ORDER BY spend_minor) - 1 AS m_below
        FROM profiles WHERE orders_count > 0
    ), scored AS (
        SELECT member_id,
               CASE WHEN n = 1 THEN 1 ELSE least(5, 1 + 5 * r_below / (n - 1)) END AS r,
               CASE WHEN n = 1 THEN 1 ELSE least(5, 1 + 5 * f_below / (n - 1)) END AS f,
               CASE WHEN n = 1 THEN 1 ELSE least(5, 1 + 5 * m_below / (n - 1)) END AS m
        FROM ranked
    )
    UPDATE profiles p SET rfm_r = s.r, rfm_f = s.f, rfm_m = s.m, rfm_scored_at = :as_of
    FROM scored s
    WHERE p.member_id = s.member_id
      AND (p.rfm_r, p.rfm_f, p.rfm_m) IS DISTINCT FROM (s.r::smallint, s.f::smallint, s.m::smallint)
    """
)
_CLEAR_RFM = text(
    "UPDATE profiles SET rfm_r = NULL, rfm_f = NULL, rfm_m = NULL, rfm_scored_at = :as_of "
    "WHERE orders_count = 0 AND rfm_r IS NOT NULL"
)


async def score_rfm(conn: AsyncConnection, as_of: datetime) -> int:
    changed = await conn.execute(_SCORE_RFM, {"as_of": as_of})
    cleared = await conn.execute(_CLEAR_RFM, {"as_of": as_of})
    return int(changed.rowcount or 0) + int(cleared.rowcount or 0)  # type: ignore[attr-defined]


async def recompute(runtime: Runtime, as_of: datetime) -> dict[str, Any]:
    rules = profile_rules()
    counts = {
        "members_due": 0,
        "stage_changes": 0,
        "segment_entered": 0,
        "segment_exited": 0,
        "rfm_changed": 0,
        "segments_refreshed": 0,
    }
    while True:
        async with runtime.transaction() as conn:
            ids = list(await conn.scalars(_DUE, {"as_of": as_of, "n": CHUNK}))
            if ids:
                batch = ProfileBatch(conn, as_of)
                await batch.load(ids)
                done = await settle(conn, batch, list(batch.profiles.values()), as_of, rules)
                counts["members_due"] += len(ids)
                counts["stage_changes"] += done["stage_changes"]
                counts["segment_entered"] += done["entered"]
                counts["segment_exited"] += done["exited"]
        if len(ids) < CHUNK:
            break
    async with runtime.transaction() as conn:
        counts["rfm_changed"] = await score_rfm(conn, as_of)
        whole = [s for s in await load_segments(conn, lock=False) if s.uses_rfm or s.time_relative]
    for segment in whole:
        async with runtime.transaction() as conn:
            done = await refresh_segment(conn, segment.code, segment.rule, as_of)
        counts["segments_refreshed"] += 1
        counts["segment_entered"] += done["entered"]
        counts["segment_exited"] += done["exited"]
    return counts


JOBS = [
    Job(
        name="recompute",
        run=recompute,
        description="move members between lifecycle stages as days pass, roll the 365-day "
        "windows, re-rank RFM scores, re-evaluate time- and score-based segments",
    )
]
