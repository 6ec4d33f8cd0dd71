"""Dead letters that can be fed back (contract §2).

Every message a consumer dead-letters is also kept in the `dead_letters` table, one row per
message and consumer group (the message is known by its event id, or by
`<topic>/<partition>/<offset>` when it could not be parsed). The row is what
- keeps a message delivered again (after a restart, a rebalance or a redrive) from going to the
  dead-letter topic twice: the consumer produces to `<topic>.dlq.<group>` only when its insert
  of the row happened;
- `GET /v1/admin/dead-letters` counts: the rows still waiting, per original topic and group;
- `POST /v1/admin/dead-letters:redrive` applies again, each through `apply_events` (the
  consumer's own idempotent path) in a transaction of its own: one that succeeds (or that the
  inbox already held) is marked redriven in the same transaction as its effect; one that
  fails again stays waiting, its `redrives` counted and its error updated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog
from aiokafka import ConsumerRecord
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ..api_types import AwareDatetime, RequestModel
from ..auth import Scope
from ..errors import database_unavailable
from ..events import EventDecodeError
from ..events.envelope import event_from_json, parse_value
from .consumer import OUTAGE_FIRST_PAUSE, OUTAGE_LONGEST_PAUSE, apply_events

if TYPE_CHECKING:
    from ..service import Runtime

log = structlog.get_logger(__name__)

UNPARSED = "unparsed"  # the event type of a dead letter that did not parse
MAX_ERROR_CHARS = 2000  # as much of an error as the DLQ headers carry
_MAX_MESSAGE_ID = 300  # the width of dead_letters.message_id

_INSERT = text(
    """
    INSERT INTO dead_letters (consumer_group, message_id, topic, "partition", "offset",
                              event_type, reason, error, "key", "value")
    VALUES (:group, :message_id, :topic, :partition, :offset,
            :event_type, :reason, :error, :key, :value)
    ON CONFLICT DO NOTHING
    RETURNING 1
    """
)


def message_id(record: ConsumerRecord[bytes, bytes], event_type: str) -> str:
    """The id a dead letter is known by: the event id of a message that parsed into an event
    (however often it is delivered, at whatever offset), `<topic>/<partition>/<offset>` for one
    that did not (or whose id would not fit the column)."""
    if event_type != UNPARSED:
        try:
            raw = parse_value(record.value)
        except EventDecodeError:
            raw = None
        event_id = raw.get("id") if isinstance(raw, dict) else None
        if isinstance(event_id, str) and 0 < len(event_id) <= _MAX_MESSAGE_ID:
            return event_id
    return f"{record.topic}/{record.partition}/{record.offset}"


async def dead_letter_once(
    engine: AsyncEngine,
    group: str,
    record: ConsumerRecord[bytes, bytes],
    *,
    reason: str,
    error: str,
    event_type: str,
    send: Callable[[], Awaitable[Any]],
) -> bool:
    """Record a dead letter of `group` and, only if this message was not dead-lettered for the
    group before, `send` it to the dead-letter topic. Answers whether it was new.

    Crash safety: the row is inserted in a transaction that commits only after `send` has
    returned (the broker has the DLQ record). A crash (or a failed send) before the commit rolls
    the row back; the offset was not committed either, so the message is delivered again and
    dead-lettered again: at worst a duplicate on the DLQ topic, never a dead letter lost. Once
    the row has committed, the DLQ topic holds the message, and every later delivery finds the
    row and sends nothing. (Inserting and committing first would lose the DLQ record to a crash
    before the send; sending first and inserting after needs a separate look-up first.) Two
    consumers of the group dead-lettering one message at once (a rebalance) serialise on the
    row's key: the second's insert waits for the first's commit and then does nothing.

    While the database is unavailable this waits and tries again, without limit, like the
    consumer's own transactions (contract §2): the message is neither skipped nor lost.
    """
    row = {
        "group": group,
        "message_id": message_id(record, event_type),
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "event_type": event_type[:100],
        "reason": reason[:100],
        "error": error[:MAX_ERROR_CHARS],
        "key": record.key,
        "value": record.value if record.value is not None else b"",
    }
    pause = OUTAGE_FIRST_PAUSE
    while True:
        try:
            async with engine.begin() as conn:
                if await conn.scalar(_INSERT, row) is None:
                    return False
                await send()
            return True
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            log.warning(
                "database_unavailable",
                group=group,
                dead_letter=row["message_id"],
                error=type(exc).__name__,
                retry_in=pause,
            )
            await asyncio.sleep(pause)
            pause = min(pause * 2, OUTAGE_LONGEST_PAUSE)


# ---------------------------------------------------------------------------------------------
# Listing and redriving
# ---------------------------------------------------------------------------------------------


class DeadLetterGroup(BaseModel):
    topic: str  # the original topic
    group: str  # the consumer group that dead-lettered them
    count: int  # how many are waiting for a redrive
    oldest_at: datetime  # when the oldest of them was dead-lettered
    newest_at: datetime


class DeadLetterList(BaseModel):
    items: list[DeadLetterGroup]


class RedriveRequest(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"topic": "loyalty.orders", "since": "2026-11-24T00:00:00Z"}]
        }
    )

    topic: str | None = None  # only the dead letters of this original topic
    since: AwareDatetime | None = None  # only those dead-lettered at or after this time


class RedriveResult(BaseModel):
    redriven: int  # dead letters tried
    applied: int  # of which applied (or already held by the inbox): done
    failed_again: int  # of which failed again: still waiting


async def waiting(runtime: Runtime) -> list[DeadLetterGroup]:
    """The dead letters still waiting, per original topic and consumer group."""
    async with runtime.reading() as conn:
        rows = await conn.execute(
            text(
                "SELECT topic, consumer_group, count(*) AS n, "
                "min(dead_lettered_at) AS oldest_at, max(dead_lettered_at) AS newest_at "
                "FROM dead_letters WHERE redriven_at IS NULL "
                "GROUP BY topic, consumer_group ORDER BY topic, consumer_group"
            )
        )
        return [
            DeadLetterGroup(
                topic=row.topic,
                group=row.consumer_group,
                count=row.n,
                oldest_at=row.oldest_at,
                newest_at=row.newest_at,
            )
            for row in rows
        ]


_TO_REDRIVE = text(
    """
    SELECT message_id FROM dead_letters
    WHERE consumer_group = :group AND redriven_at IS NULL
      AND (CAST(:topic AS text) IS NULL OR topic = :topic)
      AND (CAST(:since AS timestamptz) IS NULL OR dead_lettered_at >= :since)
    ORDER BY dead_lettered_at, topic, "partition", "offset"
    """
)
# The row, locked for the redrive's transaction; skipped when another redrive holds it.
_TAKE = text(
    """
    SELECT "value" FROM dead_letters
    WHERE consumer_group = :group AND message_id = :message_id AND redriven_at IS NULL
    FOR UPDATE SKIP LOCKED
    """
)
_DONE = text(
    "UPDATE dead_letters SET redriven_at = now(), redrives = redrives + 1 "
    "WHERE consumer_group = :group AND message_id = :message_id"
)
_FAILED_AGAIN = text(
    "UPDATE dead_letters SET redrives = redrives + 1, reason = :reason, error = :error "
    "WHERE consumer_group = :group AND message_id = :message_id AND redriven_at IS NULL"
)


async def redrive(
    runtime: Runtime, *, topic: str | None = None, since: datetime | None = None
) -> RedriveResult:
    """Apply the waiting dead letters of the service's consumer group again (of `topic`,
    dead-lettered at or after `since`, when given), oldest first, each in a transaction of its
    own through the consumer's idempotent path. An unavailable database is nobody's fault: it
    propagates (the HTTP layer answers 503) and the dead letters stay as they were."""
    consumer = runtime.consumer
    result = RedriveResult(redriven=0, applied=0, failed_again=0)
    if consumer is None:
        return result  # the service consumes nothing: it has no dead letters of its own
    params = {"group": consumer.group}
    async with runtime.engine.connect() as conn:
        ids = list(await conn.scalars(_TO_REDRIVE, {**params, "topic": topic, "since": since}))
    for mid in ids:
        key = {**params, "message_id": mid}
        failure: tuple[str, str] | None = None
        fresh: list[Any] = []
        try:
            # Its own transaction, committed at once (whatever the request's Idempotency-Key):
            # the effect, its inbox row and the mark that it was redriven, together.
            async with runtime.engine.begin() as conn:
                value = await conn.scalar(_TAKE, key)
                if value is None:
                    continue  # redriven meanwhile, or another redrive has it now
                try:
                    event = event_from_json(parse_value(value))
                except EventDecodeError as exc:
                    failure = (exc.reason, str(exc))
                else:
                    fresh = await apply_events(conn, consumer.group, consumer.handlers, [event])
                    await conn.execute(_DONE, key)
        except Exception as exc:
            if database_unavailable(exc):
                raise
            failure = ("handler_error", repr(exc))  # the effect was rolled back
        result.redriven += 1
        if failure is None:
            result.applied += 1
            if fresh and consumer.after_commit is not None:
                consumer.after_commit()  # as the consumer does: the relay publishes its events
            continue
        result.failed_again += 1
        async with runtime.engine.begin() as conn:
            await conn.execute(
                _FAILED_AGAIN,
                {**key, "reason": failure[0][:100], "error": failure[1][:MAX_ERROR_CHARS]},
            )
    if result.redriven:
        log.info(
            "dead_letters_redriven",
            service=runtime.name,
            group=consumer.group,
            topic=topic,
            **result.model_dump(),
        )
    return result


async def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Scope("admin")])


@router.get("/dead-letters", summary="Dead letters waiting for a redrive, per topic and group")
async def list_dead_letters(request: Request) -> DeadLetterList:
    runtime = await _runtime(request)
    return DeadLetterList(items=await waiting(runtime))


@router.post(
    "/dead-letters:redrive",
    summary="Apply the waiting dead letters again, through the consumer's idempotent path",
)
async def redrive_dead_letters(
    request: Request, body: RedriveRequest | None = None
) -> RedriveResult:
    runtime = await _runtime(request)
    body = body or RedriveRequest()
    return await redrive(runtime, topic=body.topic, since=body.since)
