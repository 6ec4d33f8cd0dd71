"""Scheduled jobs: each runs once per period across the replicas of its service, and on demand.

The schedule lives in the service's database, in `job_runs` (one row per job). Periods are
aligned on the UTC epoch (an hourly job's period is a UTC hour, a daily one's a UTC day). A
scheduled run first claims its period in one statement (`claim_period`), which only succeeds
while no run has claimed that period yet: two replicas never run the same period, whatever the
phase or the skew of their clocks, and a period that passed while no replica ran (downtime, a
fresh database) is claimed at the next look, which is at once after a start. One run covers all
the periods missed, since a job works from `as_of`, the clock's time when it runs.

The advisory lock (`job_lock`) keeps two runs of a job from overlapping, on demand or not. It
also says a claimed period that is not done has nobody working on it any more (the replica
died mid-run, or the database failed it): whoever holds the lock claims that period again.

On-demand runs (`POST /v1/admin/jobs/{job}/run`) run whenever asked, as if the clock read
`as_of`, and are recorded as the job's last run, but claim no period: the schedule goes on as
if they had not run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from sqlalchemy import text

from .errors import conflict, database_unavailable, sqlstate
from .observability import JOB_RUNS, traced

if TYPE_CHECKING:
    from .service import Runtime

log = structlog.get_logger(__name__)

JobFunc = Callable[["Runtime", datetime], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Job:
    """A job runs as if the clock read `as_of` and answers its counts (rows touched...)."""

    name: str
    run: JobFunc
    every: timedelta = timedelta(hours=1)
    description: str = ""


ON_DEMAND_WAIT_SECONDS = 30.0


class JobBusy(Exception):
    pass


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def period_of(at: datetime, every: timedelta) -> datetime:
    """The start of the period of `every` that `at` falls in."""
    return EPOCH + (at - EPOCH) // every * every


@contextlib.asynccontextmanager
async def job_lock(runtime: Runtime, job: Job, *, wait: float = 0.0) -> AsyncIterator[None]:
    """Hold the job's lock (one run of a job at a time, across replicas); wait up to `wait`
    seconds for a run in progress to end, then raise JobBusy."""
    key = f"loyalty_job:{runtime.name}:{job.name}"
    async with runtime.engine.connect() as conn:
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            got = await conn.scalar(text("SELECT pg_try_advisory_lock(hashtext(:k))"), {"k": key})
            await conn.commit()
            if got or asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(0.2)
        if not got:
            raise JobBusy(job.name)
        try:
            yield
        finally:
            await conn.execute(text("SELECT pg_advisory_unlock(hashtext(:k))"), {"k": key})
            await conn.commit()


@dataclass(frozen=True)
class Run:
    """One run of a job, as `job_runs` keeps the last one."""

    job: str
    as_of: datetime
    period: datetime | None  # the period a scheduled run claimed; None on demand
    started_at: datetime
    finished_at: datetime | None = None
    status: str = "ok"
    counts: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    done: bool = True  # False: an outage stopped it, so its period is still to run


_CLAIM = text(
    "INSERT INTO job_runs AS r (job, period_start) VALUES (:job, :period) "
    "ON CONFLICT (job) DO UPDATE SET period_start = EXCLUDED.period_start, period_done = false "
    "WHERE r.period_start IS NULL OR r.period_start < EXCLUDED.period_start "
    "OR (r.period_start = EXCLUDED.period_start AND NOT r.period_done) "
    "RETURNING true"
)

_RECORD = text(
    "INSERT INTO job_runs AS r (job, scheduled, as_of, started_at, finished_at, status, counts, "
    "error) VALUES (:job, :scheduled, :as_of, :started_at, :finished_at, :status, "
    "CAST(:counts AS jsonb), :error) "
    "ON CONFLICT (job) DO UPDATE SET scheduled = EXCLUDED.scheduled, as_of = EXCLUDED.as_of, "
    "started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at, "
    "status = EXCLUDED.status, counts = EXCLUDED.counts, error = EXCLUDED.error, "
    "period_done = r.period_done OR COALESCE(r.period_start = CAST(:covers AS timestamptz), false) "
    # a failure written late does not hide a run that came after it
    "WHERE CAST(:latest AS boolean) OR r.started_at IS NULL OR r.started_at <= EXCLUDED.started_at"
)


async def claim_period(runtime: Runtime, job: Job, period: datetime) -> bool:
    """Claim the period starting at `period` for a scheduled run: True when nobody has (or
    when its run did not finish: the caller holds the job's lock, so nobody is on it now)."""
    async with runtime.engine.begin() as conn:
        return bool(await conn.scalar(_CLAIM, {"job": job.name, "period": period}))


async def record_run(runtime: Runtime, run: Run, *, latest: bool = True) -> None:
    params = {
        "job": run.job,
        "scheduled": run.period is not None,
        "as_of": run.as_of,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "status": run.status,
        "counts": orjson.dumps(run.counts, default=str).decode(),
        "error": run.error,
        "covers": run.period if run.done else None,
        "latest": latest,
    }
    async with runtime.engine.begin() as conn:
        await conn.execute(_RECORD, params)


def describe(exc: BaseException) -> str:
    """An error as `job_runs` keeps it: its class and SQLSTATE, none of its values."""
    state = sqlstate(exc)
    return f"{type(exc).__name__} (SQLSTATE {state})" if state else type(exc).__name__


ATTEMPTS = 3
RETRY_SECONDS = 5.0  # a scheduled run that met an outage or the lock taken looks again then


async def _execute(
    runtime: Runtime,
    job: Job,
    as_of: datetime,
    period: datetime | None,
    unrecorded: dict[str, Run] | None = None,
) -> dict[str, Any]:
    """Run the job (again on a conflict), then record the run, failed or not. A failure the
    database could not take goes to `unrecorded`, for the scheduler to write once it is back."""
    run = Run(job.name, as_of, period, started_at=datetime.now(UTC))
    for attempt in range(ATTEMPTS):
        try:
            with traced(runtime.name, f"job {job.name}", **{"loyalty.job": job.name}):
                counts = await job.run(runtime, as_of)
            break
        except Exception as exc:
            if conflict(exc) and attempt < ATTEMPTS - 1:
                log.warning(
                    "job_retried", service=runtime.name, job=job.name, error=type(exc).__name__
                )
                await asyncio.sleep(0.05 * 2**attempt)
                continue
            JOB_RUNS.labels(runtime.name, job.name, "error").inc()
            failed = replace(
                run,
                finished_at=datetime.now(UTC),
                status="error",
                error=describe(exc),
                done=not database_unavailable(exc),
            )
            try:
                await record_run(runtime, failed)
            except Exception as unrecordable:
                log.warning(
                    "job_run_unrecorded",
                    service=runtime.name,
                    job=job.name,
                    error=describe(unrecordable),
                    later=unrecorded is not None,
                )
                if unrecorded is not None:
                    unrecorded[job.name] = failed
            raise
    JOB_RUNS.labels(runtime.name, job.name, "ok").inc()
    # A run that touched nothing is routine (frequent jobs find nothing due most of the time).
    busy = any(isinstance(v, int | float) and v for v in counts.values())
    (log.info if busy else log.debug)(
        "job_ran", service=runtime.name, job=job.name, as_of=as_of.isoformat(), **counts
    )
    await record_run(runtime, replace(run, finished_at=datetime.now(UTC), counts=counts))
    return counts


async def run_job(runtime: Runtime, job: Job, as_of: datetime) -> dict[str, Any]:
    """Run a job now, on demand, as if the clock read `as_of`: recorded, but claims no period.
    A scheduled run in progress is waited for (up to ON_DEMAND_WAIT_SECONDS), not refused."""
    async with job_lock(runtime, job, wait=ON_DEMAND_WAIT_SECONDS):
        return await _execute(runtime, job, as_of, None)


async def run_scheduled(runtime: Runtime, job: Job, unrecorded: dict[str, Run]) -> bool:
    """Run a job for the current period unless a run has claimed it: True when this one ran."""
    async with job_lock(runtime, job):
        if (failed := unrecorded.pop(job.name, None)) is not None:
            await record_run(runtime, failed, latest=False)  # a failure the outage kept out
        as_of = runtime.clock.now()
        period = period_of(as_of, job.every)
        if not await claim_period(runtime, job, period):
            return False
        await _execute(runtime, job, as_of, period, unrecorded)
        return True


async def scheduler(runtime: Runtime) -> None:
    """Looks at every job at start, then at the start of each of its periods (the database says
    whether it is due); a job that met an outage, or the lock taken, is looked at again soon."""
    loop = asyncio.get_running_loop()
    look_at = {job.name: loop.time() for job in runtime.jobs}
    unrecorded: dict[str, Run] = {}
    while True:
        for job in runtime.jobs:
            if loop.time() < look_at[job.name]:
                continue
            now = runtime.clock.now()
            # the next period's start: already past if this run lasts beyond it
            look_at[job.name] = (
                loop.time() + (period_of(now, job.every) + job.every - now).total_seconds()
            )
            try:
                await run_scheduled(runtime, job, unrecorded)
            except JobBusy:
                # another run holds the job (one on demand, say): this period may still be due
                look_at[job.name] = min(look_at[job.name], loop.time() + RETRY_SECONDS)
            except Exception as exc:
                if database_unavailable(exc):
                    # nobody's fault: run it again soon rather than a whole period later
                    look_at[job.name] = loop.time() + RETRY_SECONDS
                    log.warning(
                        "job_postponed",
                        service=runtime.name,
                        job=job.name,
                        error=type(exc).__name__,
                        retry_in=RETRY_SECONDS,
                    )
                    continue
                log.error("job_failed", service=runtime.name, job=job.name, error=repr(exc))
        await asyncio.sleep(min(max(min(look_at.values(), default=0) - loop.time(), 0.05), 60))


async def job_states(runtime: Runtime) -> list[dict[str, Any]]:
    """What `GET /v1/admin/jobs` lists: every job, its last run and when it is due next (a time
    already past: due now, it runs at the scheduler's next look)."""
    async with runtime.reading() as conn:
        rows = {row.job: row for row in await conn.execute(text("SELECT * FROM job_runs"))}
    now = runtime.clock.now()
    states = []
    for job in runtime.jobs:
        row = rows.get(job.name)
        if row is None or row.period_start is None:
            due = period_of(now, job.every)  # never run on schedule: due now
        else:  # a claimed period whose run did not finish is due again
            due = row.period_start + job.every if row.period_done else row.period_start
        last_run = None
        if row is not None and row.finished_at is not None:
            last_run = {
                "as_of": row.as_of,
                "started_at": row.started_at,
                "finished_at": row.finished_at,
                "status": row.status,
                "counts": row.counts,
                "scheduled": row.scheduled,
                "error": row.error,
            }
        states.append(
            {
                "job": job.name,
                "every_seconds": int(job.every.total_seconds()),
                "description": job.description,
                "last_run": last_run,
                "next_due_at": due,
            }
        )
    return states
