"""Scheduled jobs: run periodically by one replica (advisory lock), or on demand with `as_of`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import text

from .errors import conflict, database_unavailable
from .observability import JOB_RUNS

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


class JobBusy(Exception):
    pass


@contextlib.asynccontextmanager
async def job_lock(runtime: Runtime, job: Job) -> AsyncIterator[None]:
    key = f"loyalty_job:{runtime.name}:{job.name}"
    async with runtime.engine.connect() as conn:
        got = await conn.scalar(text("SELECT pg_try_advisory_lock(hashtext(:k))"), {"k": key})
        await conn.commit()
        if not got:
            raise JobBusy(job.name)
        try:
            yield
        finally:
            await conn.execute(text("SELECT pg_advisory_unlock(hashtext(:k))"), {"k": key})
            await conn.commit()


ATTEMPTS = 3
OUTAGE_RETRY_SECONDS = 5.0  # a scheduled run that met an unavailable database runs again then


async def run_job(runtime: Runtime, job: Job, as_of: datetime) -> dict[str, Any]:
    async with job_lock(runtime, job):
        for attempt in range(ATTEMPTS):
            try:
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
                raise
    JOB_RUNS.labels(runtime.name, job.name, "ok").inc()
    # A run that touched nothing is routine (frequent jobs find nothing due most of the time).
    busy = any(isinstance(v, int | float) and v for v in counts.values())
    (log.info if busy else log.debug)(
        "job_ran", service=runtime.name, job=job.name, as_of=as_of.isoformat(), **counts
    )
    return counts


async def scheduler(runtime: Runtime) -> None:
    """Runs each job every `job.every`; a replica that finds the lock taken skips that turn."""
    loop = asyncio.get_running_loop()
    next_run = {job.name: loop.time() + job.every.total_seconds() for job in runtime.jobs}
    while True:
        now = loop.time()
        for job in runtime.jobs:
            if now >= next_run[job.name]:
                next_run[job.name] = now + job.every.total_seconds()
                try:
                    await run_job(runtime, job, runtime.clock.now())
                except JobBusy:
                    pass
                except Exception as exc:
                    if database_unavailable(exc):
                        # nobody's fault: run it again soon rather than a whole period later
                        next_run[job.name] = now + OUTAGE_RETRY_SECONDS
                        log.warning(
                            "job_postponed",
                            service=runtime.name,
                            job=job.name,
                            error=type(exc).__name__,
                            retry_in=OUTAGE_RETRY_SECONDS,
                        )
                        continue
                    log.error("job_failed", service=runtime.name, job=job.name, error=repr(exc))
        await asyncio.sleep(min(max(min(next_run.values(), default=now + 60) - now, 0.5), 60))
