"""Gauges of what a service's database holds, refreshed every few seconds by every replica:
dead letters waiting for a redrive (`loyalty_dead_letters_waiting`), whether each job's last run
failed (`loyalty_job_last_run_failed`) and the outbox backlog (`loyalty_outbox_backlog_events`;
the relay sets it too as it publishes, but a relay that cannot reach the broker publishes
nothing, and that is when the backlog grows). Each is one cheap query on a small table or a
partial index. Replicas report the same values: alert on their max."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from .observability import DEAD_LETTERS_WAITING, JOB_LAST_RUN_FAILED, OUTBOX_BACKLOG

if TYPE_CHECKING:
    from .service import Runtime

log = structlog.get_logger(__name__)

STATE_METRICS_INTERVAL = 15.0

_WAITING = text(
    "SELECT topic, consumer_group, count(*) AS n FROM dead_letters WHERE redriven_at IS NULL "
    "GROUP BY topic, consumer_group"
)
_LAST_RUNS = text("SELECT job, status FROM job_runs")
_BACKLOG = text("SELECT count(*) FROM outbox WHERE sent_at IS NULL")

# (service, topic, group) that had dead letters once: shown as 0 once redriven, not dropped
_seen: set[tuple[str, str, str]] = set()


async def refresh_state_metrics(
    engine: AsyncEngine,
    service: str,
    *,
    dead_letter_sources: Iterable[tuple[str, str]] = (),
    jobs: Iterable[str] = (),
) -> None:
    """Read the three and set the gauges. `dead_letter_sources` are the (topic, group) pairs the
    service consumes, shown (as 0) before any dead letter; `jobs` the service's jobs."""
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        waiting = {
            (row.topic, row.consumer_group): int(row.n) for row in await conn.execute(_WAITING)
        }
        last_runs = {row.job: row.status for row in await conn.execute(_LAST_RUNS)}
        backlog = int(await conn.scalar(_BACKLOG) or 0)
    shown = {(service, topic, group) for topic, group in dead_letter_sources}
    shown |= {(service, topic, group) for topic, group in waiting}
    shown |= {key for key in _seen if key[0] == service}
    _seen.update(shown)
    for key in shown:
        DEAD_LETTERS_WAITING.labels(*key).set(waiting.get((key[1], key[2]), 0))
    for job in {*jobs, *last_runs}:
        JOB_LAST_RUN_FAILED.labels(service, job).set(1 if last_runs.get(job) == "error" else 0)
    OUTBOX_BACKLOG.labels(service).set(backlog)


async def watch_state_metrics(runtime: Runtime, interval: float = STATE_METRICS_INTERVAL) -> None:
    """Refresh the gauges every `interval` seconds for as long as the service runs; while the
    database is away the last values stand."""
    consumes = runtime.definition.consumes if runtime.definition.handlers is not None else []
    sources = [(topic, runtime.consumer_group) for topic in consumes]
    while True:
        try:
            await refresh_state_metrics(
                runtime.engine,
                runtime.name,
                dead_letter_sources=sources,
                jobs=[job.name for job in runtime.jobs],
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("state_metrics_unknown", service=runtime.name, error=type(exc).__name__)
        await asyncio.sleep(interval)
