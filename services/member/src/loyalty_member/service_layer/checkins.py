"""Check-ins: at most one per member and local day, each with its streak; emits member.checked_in.

Streaks. A check-in's `streak_days` is itself plus the unbroken run of check-in days ending the
day before, counted from the rows as they stand when it is recorded; a missed day resets it to
1. A backdated check-in (an offline import) that fills a gap gets its own streak that way, but
later check-ins keep the streak they were recorded (and announced) with: events already sent
are facts, and points already earned for them stay. The next live check-in counts the filled
run in full, and `GET .../check-ins` reports the current streak from the days themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from loyalty_shared.errors import Conflict, NotFound, Unprocessable
from loyalty_shared.events.members import MemberCheckedIn
from loyalty_shared.paging import encode_cursor
from loyalty_shared.service import Runtime
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from ..adapters.tables import checkins, members
from ..domain.checkins import (
    BusinessTimeOutOfRange,
    business_time,
    current_streak,
    local_day,
    streak_for,
)
from .events import emit


@dataclass(frozen=True)
class CheckIn:
    member_id: str
    occurred_at: datetime | None = None


def invalid(location: list[str], message: str) -> Unprocessable:
    """A 422 `validation_error` for a value only the service can judge (e.g. against the clock)."""
    return Unprocessable(
        "validation_error",
        f"{'.'.join(location)}: {message}",
        errors=[{"loc": location, "msg": message, "type": "value_error"}],
    )


def occurred_at_or_now(occurred_at: datetime | None, now: datetime) -> datetime:
    try:
        return business_time(occurred_at, now)
    except BusinessTimeOutOfRange as exc:
        raise invalid(["body", "occurred_at"], str(exc)) from exc


async def live_member(
    conn: AsyncConnection, member_id: str, *, lock: bool = False, erased_ok: bool = False
) -> dict[str, Any]:
    """The member's row; 404 `not_found` when unknown (or erased, unless `erased_ok`).
    `lock` serialises writers of one member (FOR NO KEY UPDATE: other tables' foreign keys
    to the member are not blocked)."""
    query = select(members.c.member_id, members.c.timezone, members.c.erased_at).where(
        members.c.member_id == member_id
    )
    if lock:
        query = query.with_for_update(key_share=True)
    row = (await conn.execute(query)).first()
    if row is None or (row.erased_at is not None and not erased_ok):
        raise NotFound(f"no member '{member_id}'")
    return dict(row._mapping)


_RUN_ENDING = text(
    """
    WITH RECURSIVE run(local_date) AS (
        SELECT local_date FROM checkins WHERE member_id = :member_id AND local_date = :last_day
        UNION ALL
        SELECT c.local_date FROM checkins c JOIN run ON c.local_date = run.local_date - 1
        WHERE c.member_id = :member_id
    )
    SELECT local_date FROM run
    """
)


async def run_ending(conn: AsyncConnection, member_id: str, last_day: date) -> set[date]:
    """The days of the unbroken run of check-ins that ends on `last_day` (empty if none);
    stops at the first gap, so it reads one row per day of the run."""
    rows = await conn.scalars(_RUN_ENDING, {"member_id": member_id, "last_day": last_day})
    return set(rows)


async def check_in(runtime: Runtime, cmd: CheckIn) -> dict[str, Any]:
    """Record a check-in; 409 `already_checked_in` when the member's local day has one,
    404 for an unknown or erased member, 422 for an `occurred_at` too far in the future."""
    now = runtime.clock.now()
    occurred_at = occurred_at_or_now(cmd.occurred_at, now)
    async with runtime.transaction() as conn:
        member = await live_member(conn, cmd.member_id, lock=True)
        timezone = member["timezone"]
        day = local_day(occurred_at, timezone)
        earlier = await run_ending(conn, cmd.member_id, day - timedelta(days=1))
        row = {
            "member_id": cmd.member_id,
            "local_date": day,
            "streak_days": streak_for(day, earlier),
            "timezone": timezone,
            "occurred_at": occurred_at,
            "created_at": now,
        }
        # The member lock already queues check-ins of one member; the primary key
        # (member_id, local_date) is what guarantees one per day whatever the locking.
        inserted = await conn.scalar(
            pg_insert(checkins)
            .values(**row)
            .on_conflict_do_nothing()
            .returning(checkins.c.streak_days)
        )
        if inserted is None:
            raise Conflict(
                "already_checked_in",
                f"the member checked in on {day.isoformat()} ({timezone}) already",
                date=day.isoformat(),
            )
        await emit(
            conn,
            "member.checked_in",
            MemberCheckedIn(
                member_id=cmd.member_id,
                date=day,
                streak_days=row["streak_days"],
                timezone=timezone,
                occurred_at=occurred_at,
            ),
            subject=cmd.member_id,
            time=occurred_at,
        )
        return row


async def list_checkins(
    runtime: Runtime, member_id: str, *, limit: int, before: date | None
) -> dict[str, Any]:
    """A page of a member's check-ins, newest day first, and the streak as it stands today
    (erased members keep their history: check-ins are not personal data)."""
    now = runtime.clock.now()
    async with runtime.engine.connect() as conn:
        member = await live_member(conn, member_id, erased_ok=True)
        query = select(checkins).where(checkins.c.member_id == member_id)
        if before is not None:
            query = query.where(checkins.c.local_date < before)
        query = query.order_by(checkins.c.local_date.desc()).limit(limit + 1)
        rows = [dict(r._mapping) for r in await conn.execute(query)]
        today = local_day(now, member["timezone"])
        run = await run_ending(conn, member_id, today)
        if not run:
            run = await run_ending(conn, member_id, today - timedelta(days=1))
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": rows,
        "next_cursor": encode_cursor(rows[-1]["local_date"].isoformat()) if more and rows else None,
        "streak_days": current_streak(today, run),
        "today": today,
        "checked_in_today": today in run,
    }


__all__ = ["CheckIn", "check_in", "invalid", "list_checkins", "live_member", "run_ending"]
