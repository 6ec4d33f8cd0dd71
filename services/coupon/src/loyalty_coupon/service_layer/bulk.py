"""Bulk issue: a campaign's coupons to a list of members, a segment, or the members whose
birthday is on a day (the `birthday` job), as a background job that records its progress with
every chunk it issues, so it resumes where it stopped after a restart, and never issues twice to
one member for one job (the grant key `job:<job_id>`; `birthday:<year>` for birthday campaigns)."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from loyalty_shared.errors import NotFound, Unprocessable
from loyalty_shared.ids import monotonic_ulid
from loyalty_shared.service import Runtime
from sqlalchemy import select, text, update

from ..adapters.neighbours import NeighbourRefused, NeighbourUnavailable, neighbours_of
from ..adapters.store import load_campaigns
from ..adapters.tables import bulk_jobs
from ..domain.campaigns import Campaign, Grant, GrantRequest
from .issuing import grant_campaigns

log = structlog.get_logger(__name__)

MAX_ATTEMPTS = 20  # failures of the segmenter (member service) before a job gives up
PLATFORM_ZONE = ZoneInfo("Asia/Shanghai")  # the platform's default zone: whose day and year
_JOB_LOCK_CLASS = 7302
_running: set[asyncio.Task[Any]] = set()  # strong references to the jobs running here


def grant_key(campaign: Campaign, job_id: str, now: datetime, on: date | None = None) -> str:
    """A birthday campaign gives once per member per year, however often a marketer runs it:
    the year of the day a `birthdays` job issues for (`on`), else of `now` in the platform's
    zone; any other bulk issue once per member per job."""
    if campaign.trigger_type == "birthday":
        year = on.year if on is not None else now.astimezone(PLATFORM_ZONE).year
        return f"birthday:{year}"
    return f"job:{job_id}"


def birthdays_day(job: Any) -> date | None:
    """The day a `birthdays` job issues for; its `segment_code` column holds it (YYYY-MM-DD)."""
    return date.fromisoformat(job.segment_code) if job.source == "birthdays" else None


def new_job(
    job_id: str,
    campaign_code: str,
    source: str,
    now: datetime,
    *,
    segment_code: str | None = None,
    member_ids: list[str] | None = None,
) -> dict[str, Any]:
    """The `bulk_jobs` row of a job not started yet."""
    return {
        "job_id": job_id,
        "campaign_code": campaign_code,
        "source": source,
        "segment_code": segment_code,
        "member_ids": member_ids,
        "status": "queued",
        "position": 0,
        "pages_done": 0,
        "total": len(member_ids) if member_ids is not None else None,
        "processed": 0,
        "issued": 0,
        "coupons_issued": 0,
        "holdout": 0,
        "not_issued": 0,
        "duplicates": 0,
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
    }


async def start_bulk_issue(
    runtime: Runtime, campaign_code: str, member_ids: list[str] | None, segment_code: str | None
) -> dict[str, Any]:
    now = runtime.clock.now()
    job_id = monotonic_ulid()
    async with runtime.transaction() as conn:
        campaign = (await load_campaigns(conn, codes=[campaign_code])).get(campaign_code)
        if campaign is None:
            raise NotFound(f"no campaign '{campaign_code}'")
        if not campaign.running_at(now):
            raise Unprocessable(
                "campaign_not_running",
                f"the campaign '{campaign_code}' is {campaign.status} and runs "
                f"{campaign.starts_at or '-'} to {campaign.ends_at or '-'}",
            )
        ids = list(dict.fromkeys(member_ids)) if member_ids is not None else None
        source = "member_ids" if ids is not None else "segment"
        await conn.execute(
            bulk_jobs.insert().values(
                new_job(
                    job_id, campaign_code, source, now, segment_code=segment_code, member_ids=ids
                )
            )
        )
    spawn(runtime, job_id)
    return {"job_id": job_id, "status": "queued"}


def spawn(runtime: Runtime, job_id: str) -> None:
    task = asyncio.create_task(run_bulk_job(runtime, job_id), name=f"coupon-bulk-{job_id}")
    _running.add(task)
    task.add_done_callback(_running.discard)


def job_view(row: Any) -> dict[str, Any]:
    return {
        "job_id": row.job_id,
        "kind": "bulk_issue",
        "campaign_code": row.campaign_code,
        "source": row.source,
        "segment_code": row.segment_code if row.source == "segment" else None,
        "birthdays_on": birthdays_day(row),
        "status": row.status,
        "total": row.total,
        "processed": row.processed,
        "members_issued": row.issued,
        "coupons_issued": row.coupons_issued,
        "holdout": row.holdout,
        "not_issued": row.not_issued,
        "duplicates": row.duplicates,
        "pages_done": row.pages_done,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "finished_at": row.finished_at,
    }


async def get_job(runtime: Runtime, job_id: str) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
        row = (await conn.execute(select(bulk_jobs).where(bulk_jobs.c.job_id == job_id))).first()
    if row is None:
        raise NotFound(f"no job '{job_id}'")
    return job_view(row)


async def run_bulk_job(runtime: Runtime, job_id: str) -> str:
    """Run a job to its end (or until its source fails); answers its status. One runner per
    job at a time, on any replica (a session advisory lock)."""
    async with runtime.engine.connect() as lock_conn:
        got = await lock_conn.scalar(
            text("SELECT pg_try_advisory_lock(:cls, hashtext(:j))"),
            {"cls": _JOB_LOCK_CLASS, "j": job_id},
        )
        await lock_conn.commit()
        if not got:
            return "busy"
        try:
            return await _run_locked(runtime, job_id)
        except Exception as exc:
            log.exception("bulk_issue_failed", job_id=job_id)
            await _note_error(runtime, job_id, repr(exc), give_up=False)
            return "error"
        finally:
            await lock_conn.execute(
                text("SELECT pg_advisory_unlock(:cls, hashtext(:j))"),
                {"cls": _JOB_LOCK_CLASS, "j": job_id},
            )
            await lock_conn.commit()


async def _run_locked(runtime: Runtime, job_id: str) -> str:
    settings = neighbours_of(runtime).settings
    chunk = max(1, settings.bulk_chunk_size)
    while True:
        async with runtime.engine.connect() as conn:
            job = (await conn.execute(select(bulk_jobs).where(bulk_jobs.c.job_id == job_id))).one()
        if job.status in ("completed", "failed"):
            return str(job.status)
        if job.source == "member_ids":
            members = list(job.member_ids[job.position : job.position + chunk])
            if not members:
                return await _finish(runtime, job_id, "completed")
            await _issue_chunk(runtime, job, members, position=job.position + len(members))
            continue
        source = "member service" if job.source == "birthdays" else "segmenter"
        try:
            members, next_cursor = await _page(runtime, job, chunk)
        except NeighbourUnavailable as exc:
            give_up = job.attempts + 1 >= MAX_ATTEMPTS
            await _note_error(runtime, job_id, f"{source} unavailable: {exc}", give_up=give_up)
            return "failed" if give_up else "waiting"
        except NeighbourRefused as exc:
            await _note_error(runtime, job_id, f"{source} refused: {exc}", give_up=True)
            return "failed"
        await _issue_chunk(
            runtime, job, members, cursor=next_cursor, done=next_cursor is None or not members
        )


async def _page(runtime: Runtime, job: Any, limit: int) -> tuple[list[str], str | None]:
    """The next page of a paged job: a segment's members, or the day's birthday members."""
    day = birthdays_day(job)
    if day is not None:
        async with neighbours_of(runtime).member(runtime) as member:
            return await member.birthdays_page(day, cursor=job.cursor, limit=limit)
    async with neighbours_of(runtime).segmenter(runtime) as segmenter:
        return await segmenter.members_page(job.segment_code, cursor=job.cursor, limit=limit)


async def _issue_chunk(
    runtime: Runtime,
    job: Any,
    members: list[str],
    *,
    position: int | None = None,
    cursor: str | None = None,
    done: bool = False,
) -> None:
    """Issue to one chunk and move the job past it in the same transaction: a crash before
    the commit redoes the chunk, after it never sees the chunk again."""
    now = runtime.clock.now()
    async with runtime.transaction() as conn:
        campaign = (await load_campaigns(conn, codes=[job.campaign_code]))[job.campaign_code]
        key = grant_key(campaign, job.job_id, now, on=birthdays_day(job))
        members = list(dict.fromkeys(members))
        requests = [
            GrantRequest(campaign.code, m, key, "bulk_issue", job_id=job.job_id) for m in members
        ]
        grants = await grant_campaigns(conn, requests, now)
        counts = _count(grants)
        values: dict[str, Any] = {
            "status": "completed" if done else "running",
            "processed": bulk_jobs.c.processed + len(members),
            "issued": bulk_jobs.c.issued + counts["issued"],
            "coupons_issued": bulk_jobs.c.coupons_issued + sum(len(g.coupons) for g in grants),
            "holdout": bulk_jobs.c.holdout + counts["holdout"],
            "not_issued": bulk_jobs.c.not_issued + counts["not_issued"],
            "duplicates": bulk_jobs.c.duplicates + counts["duplicate"],
            "attempts": 0,
            "last_error": None,
            "updated_at": now,
        }
        if position is not None:
            values["position"] = position
        else:
            values["cursor"] = cursor
            values["pages_done"] = bulk_jobs.c.pages_done + 1
        if done:
            values["finished_at"] = now
        await conn.execute(
            update(bulk_jobs).where(bulk_jobs.c.job_id == job.job_id).values(**values)
        )


def _count(grants: list[Grant]) -> Counter[str]:
    return Counter(g.outcome for g in grants)


async def _finish(runtime: Runtime, job_id: str, status: str) -> str:
    now = runtime.clock.now()
    async with runtime.transaction() as conn:
        await conn.execute(
            update(bulk_jobs)
            .where(bulk_jobs.c.job_id == job_id)
            .values(status=status, updated_at=now, finished_at=now)
        )
    return status


async def _note_error(runtime: Runtime, job_id: str, error: str, *, give_up: bool) -> None:
    now = runtime.clock.now()
    values: dict[str, Any] = {
        "attempts": bulk_jobs.c.attempts + 1,
        "last_error": error[:2000],
        "updated_at": now,
    }
    if give_up:
        values.update(status="failed", finished_at=now)
    async with runtime.transaction() as conn:
        await conn.execute(update(bulk_jobs).where(bulk_jobs.c.job_id == job_id).values(**values))


async def resume_bulk_jobs(runtime: Runtime, as_of: datetime) -> dict[str, Any]:
    """The scheduled `bulk-issue` job: carry on every unfinished bulk issue (after a restart,
    or after its segmenter or the member service came back)."""
    async with runtime.engine.connect() as conn:
        ids = (
            await conn.scalars(
                select(bulk_jobs.c.job_id)
                .where(bulk_jobs.c.status.in_(("queued", "running")))
                .order_by(bulk_jobs.c.created_at)
            )
        ).all()
    outcomes = Counter([await run_bulk_job(runtime, job_id) for job_id in ids])
    return {"jobs": len(ids), **{f"jobs_{k}": v for k, v in outcomes.items()}}
