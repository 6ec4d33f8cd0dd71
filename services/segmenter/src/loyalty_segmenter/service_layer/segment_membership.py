"""Segment membership: evaluated for the members an event batch or the job touched (in Python,
on the profiles in hand), or for a whole segment at once (in SQL). Either way the membership
table is the memory of who is in, so `segment.entered` / `segment.exited` go out once per change.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from loyalty_shared.db import insert_many
from loyalty_shared.events import Event, make_event
from loyalty_shared.events.segments import SegmentEntered, SegmentExited
from loyalty_shared.kafka import add_to_outbox
from sqlalchemy import DateTime, String, delete, exists, literal, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from ..adapters.rule_sql import eligible
from ..adapters.tables import profiles, segment_members, segments
from ..domain.profile import Profile
from ..domain.rules import Rule, evaluate, parse_rule

SOURCE = "loyalty/segmenter"


@dataclass(frozen=True)
class Segment:
    code: str
    rule: Rule
    time_relative: bool
    uses_rfm: bool


async def load_segments(conn: AsyncConnection, *, lock: bool = True) -> list[Segment]:
    """Every segment; `lock` holds them against a concurrent full re-evaluation (FOR SHARE)."""
    query = select(segments).order_by(segments.c.code)
    if lock:
        query = query.with_for_update(read=True)
    return [
        Segment(row.code, parse_rule(row.rule), row.time_relative, row.uses_rfm)
        for row in await conn.execute(query)
    ]


def membership_event(
    entered: bool, code: str, member_id: str, as_of: datetime, trigger: str | None
) -> Event[Any]:
    data = (SegmentEntered if entered else SegmentExited)(
        segment_code=code, member_id=member_id, as_of=as_of, trigger_event_id=trigger
    )
    return make_event(
        "segment.entered" if entered else "segment.exited",
        data,
        subject=member_id,
        source=SOURCE,
        time=as_of,
    )


async def evaluate_members(
    conn: AsyncConnection,
    members: list[Profile],
    as_of: datetime,
    triggers: dict[str, str] | None = None,
) -> dict[str, int]:
    """Evaluate every segment for these (locked) profiles; write and announce the changes."""
    if not members:
        return {"entered": 0, "exited": 0}
    all_segments = await load_segments(conn)
    ids = sorted(p.member_id for p in members)
    current: set[tuple[str, str]] = {
        (row.segment_code, row.member_id)
        for row in await conn.execute(
            text(
                "SELECT segment_code, member_id FROM segment_members "
                "WHERE member_id = ANY(CAST(:ids AS text[]))"
            ),
            {"ids": ids},
        )
    }
    entered: list[tuple[str, str]] = []
    exited: list[tuple[str, str]] = []
    for profile in sorted(members, key=lambda p: p.member_id):
        values = profile.rule_values(as_of)
        for segment in all_segments:
            key = (segment.code, profile.member_id)
            match = profile.erased_at is None and evaluate(segment.rule, values)
            if match and key not in current:
                entered.append(key)
            elif not match and key in current:
                exited.append(key)
    if entered:
        await insert_many(
            conn,
            segment_members,
            [{"segment_code": c, "member_id": m, "entered_at": as_of} for c, m in entered],
            on_conflict="ON CONFLICT DO NOTHING",
        )
    if exited:
        await conn.execute(
            text(
                "DELETE FROM segment_members s USING unnest(CAST(:codes AS text[]), "
                "CAST(:members AS text[])) AS x(code, member_id) "
                "WHERE s.segment_code = x.code AND s.member_id = x.member_id"
            ),
            {"codes": [c for c, _ in exited], "members": [m for _, m in exited]},
        )
    triggers = triggers or {}
    await add_to_outbox(
        conn,
        [membership_event(True, c, m, as_of, triggers.get(m)) for c, m in entered]
        + [membership_event(False, c, m, as_of, triggers.get(m)) for c, m in exited],
    )
    return {"entered": len(entered), "exited": len(exited)}


async def refresh_segment(
    conn: AsyncConnection, code: str, rule: Rule, as_of: datetime
) -> dict[str, int]:
    """Re-evaluate one whole segment in SQL (two statements) and announce the changes.

    The segment row is locked first, so batches that evaluate members against it wait, and
    no change is announced twice."""
    await conn.execute(select(segments.c.code).where(segments.c.code == code).with_for_update())
    matches = select(profiles.c.member_id).where(eligible(rule, as_of))
    inserted = await conn.execute(
        insert(segment_members)
        .from_select(
            ["segment_code", "member_id", "entered_at"],
            select(
                literal(code, String),
                profiles.c.member_id,
                literal(as_of, DateTime(timezone=True)),
            ).where(eligible(rule, as_of)),
        )
        .on_conflict_do_nothing()
        .returning(segment_members.c.member_id)
    )
    entered = sorted(r[0] for r in inserted)
    removed = await conn.execute(
        delete(segment_members)
        .where(
            segment_members.c.segment_code == code,
            ~exists(matches.where(profiles.c.member_id == segment_members.c.member_id)),
        )
        .returning(segment_members.c.member_id)
    )
    exited = sorted(r[0] for r in removed)
    await add_to_outbox(
        conn,
        [membership_event(True, code, m, as_of, None) for m in entered]
        + [membership_event(False, code, m, as_of, None) for m in exited],
    )
    return {"entered": len(entered), "exited": len(exited)}
