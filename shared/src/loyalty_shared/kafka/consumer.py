"""The idempotent, batch-first consumer that every service uses to apply events.

For a `getmany` batch (all its partitions), in one database transaction:
  1. record every event id in `processed_events` (set-based); the ids already there are
     duplicates and are dropped;
  2. hand the remaining events to the handlers, consecutive events of one type together, in
     offset order, so each handler writes its part of the batch with set-based statements;
  3. commit; only then commit the Kafka offset.
A crash between the two commits redelivers events the inbox already holds: they are skipped.
A batch whose handler fails is retried, then split to single events; an event that still fails,
or that cannot be parsed, goes to `<topic>.dlq.<group>` with the error in its headers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Container, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..errors import database_unavailable, sqlstate
from ..events import Event, EventDecodeError
from ..events.envelope import event_from_json, parse_value
from ..observability import (
    CONSUMER_LAG,
    CONSUMER_PAUSES,
    EVENTS_DUPLICATE,
    EVENTS_FAILED,
    EVENTS_PROCESSED,
    consuming,
    handling,
)
from ..settings import PlatformSettings
from .connection import CONTENT_TYPE, connection_kwargs, log_broker_failure
from .outbox import make_producer
from .topics import dlq_topic

log = structlog.get_logger(__name__)

BatchHandler = Callable[[AsyncConnection, list[Event[Any]]], Awaitable[None]]
AfterCommit = Callable[[], None]

# While the database is unavailable the consumer applies the same events again after a pause
# that doubles from the first to the longest, without limit.
OUTAGE_FIRST_PAUSE = 0.2
OUTAGE_LONGEST_PAUSE = 5.0
# How often the consumer's lag is recomputed from the broker, whether the consumer moves or not.
LAG_INTERVAL = 5.0

_RECORD = text(
    """
    INSERT INTO processed_events (consumer_group, event_id, type)
    SELECT :group, * FROM unnest(CAST(:ids AS text[]), CAST(:types AS text[]))
    ON CONFLICT DO NOTHING
    RETURNING event_id
    """
)


@dataclass
class Handlers:
    """Which handler applies which event type; events of other types are skipped."""

    by_type: dict[str, BatchHandler] = field(default_factory=dict)
    run_of: dict[str, str] = field(default_factory=dict)  # type → the run it joins (on_each)

    def on(self, event_type: str) -> Callable[[BatchHandler], BatchHandler]:
        def register(fn: BatchHandler) -> BatchHandler:
            self.by_type[event_type] = fn
            return fn

        return register

    def on_each(self, event_types: Iterable[str], fn: BatchHandler) -> BatchHandler:
        """One handler for several types: consecutive events of any of them reach it together,
        in order (a batch engine that loads once and writes once per batch)."""
        types = list(event_types)
        for event_type in types:
            self.by_type[event_type] = fn
            self.run_of[event_type] = "+".join(types)
        return fn

    def run_key(self, event_type: str) -> str:
        """Consecutive events with one run key reach their handler in one call."""
        return self.run_of.get(event_type, event_type)


class PoisonMessage(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class _Item:
    record: ConsumerRecord[bytes, bytes]
    event: Event[Any] | None = None
    poison: PoisonMessage | None = None


async def apply_events(
    conn: AsyncConnection, group: str, handlers: Handlers, events: list[Event[Any]]
) -> list[Event[Any]]:
    """Record and apply events in the caller's transaction; answer those that were new.

    This is the whole idempotent-consumer rule, separate from Kafka so handlers can be tested
    (and replayed) without a broker.
    """
    wanted: dict[str, Event[Any]] = {}
    for event in events:
        if event.type in handlers.by_type and event.id not in wanted:
            wanted[event.id] = event
    if not wanted:
        return []
    rows = await conn.execute(
        _RECORD,
        {"group": group, "ids": list(wanted), "types": [e.type for e in wanted.values()]},
    )
    fresh_ids = {row[0] for row in rows}
    fresh = [e for e in wanted.values() if e.id in fresh_ids]
    # Consecutive events of one type go to their handler together; a handler registered with
    # `on_each` for several types receives consecutive events of any of them together.
    # The events a handler makes continue the traces of the events it applies (`handling`).
    run: list[Event[Any]] = []
    for event in fresh:
        if run and handlers.run_key(run[-1].type) != handlers.run_key(event.type):
            with handling(run):
                await handlers.by_type[run[0].type](conn, run)
            run = []
        run.append(event)
    if run:
        with handling(run):
            await handlers.by_type[run[0].type](conn, run)
    return fresh


class IdempotentConsumer:
    def __init__(
        self,
        engine: AsyncEngine,
        bootstrap: str,
        *,
        service: str,
        group: str,
        topics: Iterable[str],
        handlers: Handlers,
        batch_size: int = 1000,
        max_retries: int = 3,
        after_commit: AfterCommit | None = None,
        retry_delay: float = 0.2,
        fetch_max_wait_ms: int | None = None,
        settings: PlatformSettings | None = None,
        lag_interval: float = LAG_INTERVAL,
    ) -> None:
        self.engine = engine
        self.bootstrap = bootstrap
        self.service = service
        self.group = group
        self.topics = list(topics)
        self.handlers = handlers
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.after_commit = after_commit
        self.retry_delay = retry_delay
        # How to connect (TLS, SASL), and the producer's idempotence: `connection.py`.
        self.settings = settings or PlatformSettings()
        # How long a fetch may wait on the broker for records. Kafka answers a parked fetch as
        # soon as records arrive; a broker that does not (the embedded one) answers after the
        # full wait, which then lies on every event's path: its stack keeps it short.
        self.fetch_max_wait_ms = (
            fetch_max_wait_ms
            if fetch_max_wait_ms is not None
            else self.settings.kafka_fetch_max_wait_ms
        )
        self.lag_interval = lag_interval
        self._consumer: AIOKafkaConsumer | None = None
        self._dlq_producer: Any = None
        self._lag_watch: asyncio.Task[None] | None = None
        self.connected = False
        self.assigned = asyncio.Event()

    def dlq_topics(self) -> list[str]:
        return [dlq_topic(t, self.group) for t in self.topics]

    async def run(self) -> None:
        backoff = 0.5
        while True:
            try:
                await self._start()
                backoff = 0.5
                while True:
                    await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.connected = False
                await log_broker_failure(
                    log,
                    "consumer_error",
                    exc,
                    self.bootstrap,
                    self.settings,
                    service=self.service,
                    group=self.group,
                    retry_in=backoff,
                )
                await self._close()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _start(self) -> None:
        if self._consumer is not None:
            return
        listener = _AssignmentListener(self)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.batch_size,
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            fetch_max_bytes=16 * 1024 * 1024,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            **connection_kwargs(self.settings),
        )
        try:
            consumer.subscribe(self.topics, listener=listener)
            await consumer.start()
        except BaseException:
            await consumer.stop()
            raise
        producer = make_producer(self.bootstrap, self.settings)
        try:
            await producer.start()
        except BaseException:
            await consumer.stop()
            await producer.stop()
            raise
        self._consumer = consumer
        self._dlq_producer = producer
        self.connected = True
        self._lag_watch = asyncio.create_task(self._watch_lag(), name=f"{self.group}-lag")

    async def _close(self) -> None:
        if self._lag_watch is not None:
            self._lag_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._lag_watch
            self._lag_watch = None
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            self._consumer = None
        if self._dlq_producer is not None:
            with contextlib.suppress(Exception):
                await self._dlq_producer.stop()
            self._dlq_producer = None

    async def stop(self) -> None:
        await self._close()

    async def poll_once(self, timeout_ms: int = 500) -> int:
        """One `getmany`: every partition's records are applied in one transaction (each
        partition's in offset order, so each member's), then the offsets are committed."""
        assert self._consumer is not None
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=self.batch_size)
        batches = {tp: records for tp, records in batches.items() if records}
        if not batches:
            return 0
        items: list[_Item] = []
        for records in batches.values():
            for record in records:
                item = _decode(record, self.handlers.by_type)
                if item is not None:
                    items.append(item)
        for item in items:
            if item.poison is not None:
                await self._to_dlq(item.record, item.poison)
        good = [item for item in items if item.event is not None]
        if good:
            await self._apply_with_retries(good)
        await self._commit({tp: records[-1].offset + 1 for tp, records in batches.items()})
        for tp, records in batches.items():
            self._record_lag(tp, records[-1].offset)
        return sum(len(records) for records in batches.values())

    def _record_lag(self, tp: TopicPartition, last_offset: int) -> None:
        assert self._consumer is not None
        # revoked while its batch was applied (a rebalance): aiokafka's highwater() asserts
        highwater = self._consumer.highwater(tp) if tp in self._consumer.assignment() else None
        if highwater is not None:
            CONSUMER_LAG.labels(self.service, tp.topic, tp.partition).set(
                max(highwater - last_offset - 1, 0)
            )

    async def _watch_lag(self) -> None:
        """Recomputes the lag every `lag_interval` seconds, whatever the consumer is doing: a
        consumer stuck on a batch (a handler that hangs, a database outage it waits out) polls
        no more, so the lag after each batch (`_record_lag`) would stand still while messages
        pile up."""
        while True:
            try:
                async with asyncio.timeout(max(self.lag_interval, 5.0) * 2):
                    await self.measure_lag()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker is away: the last values stand
                log.debug("consumer_lag_unknown", service=self.service, error=repr(exc))
            await asyncio.sleep(self.lag_interval)

    async def measure_lag(self) -> dict[TopicPartition, int]:
        """Each partition's lag: its end offset minus the group's committed offset, for every
        partition of the topics consumed, whoever in the group holds it (so a partition whose
        holder is stuck, or left the group for polling no more, still shows). Replicas report
        the same values; take the max across them."""
        consumer = self._consumer
        if consumer is None:
            return {}
        partitions = [
            TopicPartition(topic, p)
            for topic in self.topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return {}
        ends = await consumer.end_offsets(partitions)
        committed = {tp: await consumer.committed(tp) for tp in partitions}
        never = [tp for tp, offset in committed.items() if offset is None]
        starts = await consumer.beginning_offsets(never) if never else {}
        assigned = consumer.assignment()
        lags: dict[TopicPartition, int] = {}
        for tp in partitions:
            end = ends.get(tp, 0)
            if tp in assigned:
                # the embedded broker's end offset is its last batch's first offset + 1; a
                # fetch knows better
                end = max(end, consumer.highwater(tp) or 0)
            done = committed[tp]
            lags[tp] = max(end - (done if done is not None else starts.get(tp, 0)), 0)
            CONSUMER_LAG.labels(self.service, tp.topic, tp.partition).set(lags[tp])
        return lags

    async def _apply_with_retries(self, items: list[_Item]) -> None:
        events = [item.event for item in items if item.event is not None]
        error: Exception | None = None
        attempt = 0
        pause = OUTAGE_FIRST_PAUSE
        while attempt < self.max_retries:
            try:
                await self._apply(events)
                return
            except Exception as exc:
                if database_unavailable(exc):
                    # Not the events' fault (contract §2): wait and apply the same events
                    # again, for as long as it takes; no attempt is counted.
                    log.warning(
                        "database_unavailable",
                        service=self.service,
                        group=self.group,
                        size=len(events),
                        error=type(exc).__name__,
                        sqlstate=sqlstate(exc),
                        retry_in=pause,
                    )
                    CONSUMER_PAUSES.labels(self.service).inc()
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, OUTAGE_LONGEST_PAUSE)
                    continue
                error = exc
                attempt += 1
                log.warning(
                    "batch_failed",
                    service=self.service,
                    group=self.group,
                    size=len(events),
                    attempt=attempt,
                    error=repr(exc),
                )
                await asyncio.sleep(self.retry_delay * (2 ** (attempt - 1)))
        if len(items) > 1:
            # Isolate the poison: each event alone, in order, with its own retries.
            for item in items:
                await self._apply_with_retries([item])
            return
        await self._to_dlq(
            items[0].record, PoisonMessage("handler_error", repr(error)), event_type=events[0].type
        )

    async def _apply(self, events: list[Event[Any]]) -> None:
        # with tracing on, a span per event, the child of its traceparent (`observability.py`)
        with consuming(self.service, self.group, events):
            async with self.engine.begin() as conn:
                fresh = await apply_events(conn, self.group, self.handlers, events)
        fresh_ids = {e.id for e in fresh}
        for event in events:
            if event.type not in self.handlers.by_type:
                continue
            if event.id in fresh_ids:
                EVENTS_PROCESSED.labels(self.service, event.type).inc()
            else:
                EVENTS_DUPLICATE.labels(self.service, event.type).inc()
        if fresh and self.after_commit is not None:
            self.after_commit()

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # A partition moved to another member: it will redeliver, and the inbox skips.
            log.warning(
                "offset_commit_failed", service=self.service, group=self.group, error=repr(exc)
            )

    async def _to_dlq(
        self,
        record: ConsumerRecord[bytes, bytes],
        poison: PoisonMessage,
        event_type: str = "unparsed",
    ) -> None:
        from .dead_letters import dead_letter_once  # that module imports this one

        assert self._dlq_producer is not None
        # The DLQ record is the original value: a CloudEvent like any other (contract §2).
        headers = [
            CONTENT_TYPE,
            ("error", poison.detail[:2000].encode()),
            ("error_reason", poison.reason.encode()),
            ("original_topic", record.topic.encode()),
            ("original_partition", str(record.partition).encode()),
            ("original_offset", str(record.offset).encode()),
            ("consumer_group", self.group.encode()),
        ]

        async def send() -> None:
            await self._dlq_producer.send_and_wait(
                dlq_topic(record.topic, self.group), record.value, key=record.key, headers=headers
            )

        # The row first, the DLQ record inside its transaction: see `dead_letter_once` for why
        # a crash anywhere between never loses a dead letter. A message this group dead-lettered
        # before (delivered again) is skipped without a second DLQ record.
        new = await dead_letter_once(
            self.engine,
            self.group,
            record,
            reason=poison.reason,
            error=poison.detail,
            event_type=event_type,
            send=send,
        )
        if not new:
            log.info(
                "dead_letter_delivered_again",
                service=self.service,
                group=self.group,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
            return
        EVENTS_FAILED.labels(self.service, event_type).inc()
        log.error(
            "event_dead_lettered",
            service=self.service,
            group=self.group,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            reason=poison.reason,
            error=poison.detail[:500],
        )


class _AssignmentListener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: IdempotentConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.owner.assigned.set()


def _decode(record: ConsumerRecord[bytes, bytes], wanted: Container[str]) -> _Item | None:
    """A typed event for a handled type; None for a type this consumer does not handle (it
    is someone else's business, even when it is newer than our registry); poison otherwise."""
    try:
        raw = parse_value(record.value)
        if isinstance(raw, dict) and isinstance(raw.get("type"), str) and raw["type"] not in wanted:
            return None
        return _Item(record, event=event_from_json(raw))
    except EventDecodeError as exc:
        return _Item(record, poison=PoisonMessage(exc.reason, str(exc)))
