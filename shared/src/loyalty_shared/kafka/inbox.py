"""The inbox forgets (contract §2): the platform job that deletes old `processed_events` rows.

A consumer must remember an event id at least as long as a producer may publish the event
again: its outbox keeps published rows for replay for `LOYALTY_OUTBOX_RETENTION_DAYS`, so an
id processed before that window can no longer come back from a replay, and is forgotten.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from ..jobs import Job

if TYPE_CHECKING:
    from ..service import Runtime

# Rows deleted per statement (each its own transaction), so no run holds locks for long or
# writes one huge transaction, however far behind the purge is.
PURGE_CHUNK = 10_000

_PURGE = text(
    """
    DELETE FROM processed_events
    WHERE (consumer_group, event_id) IN (
        SELECT consumer_group, event_id FROM processed_events
        WHERE processed_at < :cutoff
        LIMIT :chunk
    )
    """
)


async def purge_processed_events(runtime: Runtime, as_of: datetime) -> dict[str, Any]:
    """Forget processed event ids older than the outbox retention, relative to `as_of`, one
    chunk at a time (the range is read over `processed_events_processed_at`)."""
    cutoff = as_of - timedelta(days=runtime.settings.outbox_retention_days)
    chunk = PURGE_CHUNK
    forgotten = 0
    while True:
        async with runtime.engine.begin() as conn:
            result = await conn.execute(_PURGE, {"cutoff": cutoff, "chunk": chunk})
        deleted = int(getattr(result, "rowcount", 0) or 0)
        forgotten += deleted
        if deleted < chunk:
            break
    return {"events_forgotten": forgotten, "cutoff": cutoff.isoformat()}


PURGE_PROCESSED_EVENTS = Job(
    "purge-processed-events",
    purge_processed_events,
    every=timedelta(hours=1),
    description="forget processed event ids (the consumer's inbox) older than the outbox retention",
)
