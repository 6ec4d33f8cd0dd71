"""The `birthday` job: birthday campaigns issued on the day, by the bulk-issue machinery.

Birthdays are personal data: the member service keeps them and they never travel in events, so
this service asks it, day by day, whose birthday is today (`GET /v1/members:birthdays`: member
ids only). For every running campaign of trigger type `birthday` the job records one bulk job
per campaign and day (source `birthdays`, its id derived from both, so running the job again
that day finds the same job) and runs it: pages of the day's members are issued chunk by chunk
with their progress, resumable like any bulk issue. The grant key `birthday:<year>` (the year of
the day) gives a member a campaign's birthday coupons at most once a year, whether by this job,
on another day after a change of birthday, or by a bulk issue by hand.

"The day" is the date of `as_of` in Asia/Shanghai, the platform's default zone: members in other
zones get their coupons on the Shanghai date of their birthday. 29 February birthdays come on 28
February in other years (the member service lists them there).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import date, datetime
from typing import Any

from loyalty_shared.service import Runtime
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from ..adapters.store import load_campaigns
from ..adapters.tables import bulk_jobs
from .bulk import PLATFORM_ZONE, new_job, run_bulk_job

SOURCE = "birthdays"
_TOTALS = {
    "members_processed": bulk_jobs.c.processed,
    "members_issued": bulk_jobs.c.issued,
    "coupons_issued": bulk_jobs.c.coupons_issued,
    "holdout": bulk_jobs.c.holdout,
    "not_issued": bulk_jobs.c.not_issued,
    "duplicates": bulk_jobs.c.duplicates,
}


def birthday_day(as_of: datetime) -> date:
    return as_of.astimezone(PLATFORM_ZONE).date()


def birthday_job_id(campaign_code: str, day: date) -> str:
    """The one bulk job of a campaign's birthdays on a day (26 characters, like a ULID)."""
    digest = hashlib.sha256(f"birthday\x00{campaign_code}\x00{day.isoformat()}".encode())
    return "bd" + digest.hexdigest()[:24]


async def _totals(runtime: Runtime, job_ids: list[str]) -> dict[str, int]:
    if not job_ids:
        return dict.fromkeys(_TOTALS, 0)
    async with runtime.engine.connect() as conn:
        row = (
            await conn.execute(
                select(
                    *(func.coalesce(func.sum(col), 0).label(name) for name, col in _TOTALS.items())
                ).where(bulk_jobs.c.job_id.in_(job_ids))
            )
        ).one()
    return {name: int(row._mapping[name]) for name in _TOTALS}


async def issue_birthdays(runtime: Runtime, as_of: datetime) -> dict[str, Any]:
    """Start (or carry on) today's bulk job of every running birthday campaign and run them;
    answers what this run did. A day's job that gave up (the member service down for too long,
    or refusing) is taken up again where it stopped."""
    day = birthday_day(as_of)
    now = runtime.clock.now()
    async with runtime.transaction() as conn:
        found = await load_campaigns(conn, trigger_types=["birthday"])  # active ones
        running = [code for code, c in found.items() if c.running_at(as_of)]
        job_ids = [birthday_job_id(code, day) for code in running]
        started = reopened = 0
        if running:
            created = await conn.scalars(
                pg_insert(bulk_jobs)
                .values(
                    [
                        new_job(job_id, code, SOURCE, now, segment_code=day.isoformat())
                        for code, job_id in zip(running, job_ids, strict=True)
                    ]
                )
                .on_conflict_do_nothing(index_elements=["job_id"])
                .returning(bulk_jobs.c.job_id)
            )
            started = len(created.all())
            again = await conn.execute(
                update(bulk_jobs)
                .where(bulk_jobs.c.job_id.in_(job_ids), bulk_jobs.c.status == "failed")
                .values(status="running", attempts=0, finished_at=None, updated_at=now)
            )
            reopened = again.rowcount
    before = await _totals(runtime, job_ids)
    outcomes = Counter([await run_bulk_job(runtime, job_id) for job_id in job_ids])
    after = await _totals(runtime, job_ids)
    return {
        "day": day.isoformat(),
        "campaigns": len(running),
        "jobs_started": started,
        "jobs_reopened": reopened,
        **{f"jobs_{outcome}": n for outcome, n in sorted(outcomes.items())},
        **{name: after[name] - before[name] for name in _TOTALS},
    }
