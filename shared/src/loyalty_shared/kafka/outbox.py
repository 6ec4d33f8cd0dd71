"""The transactional outbox: events are written with the state change, and a relay publishes them.

The relay reads pending rows in `seq` order, sends a batch without awaiting each message, awaits
the whole batch, then marks it sent in one statement. One relay per service publishes at a time
(a PostgreSQL advisory lock), so rows for a key reach the broker in the order they were written.
Sent rows are kept for the retention window so that a broker that lost its data (the embedded
one keeps nothing) can be given them again: automatically when the relay finds its topics empty,
or on demand through `POST /v1/admin/outbox:replay`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..clock import Clock, SystemClock
from ..events import Event
from ..observability import OUTBOX_BACKLOG, OUTBOX_PUBLISHED, publishing
from ..settings import PlatformSettings
from .connection import CONTENT_TYPE, connection_kwargs, log_broker_failure, producer_kwargs

log = structlog.get_logger(__name__)

_INSERT = text(
    """
    INSERT INTO outbox (event_id, topic, key, type, value)
    SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:topics AS text[]), CAST(:keys AS text[]),
                         CAST(:types AS text[]), CAST(:values AS bytea[]))
    ON CONFLICT (event_id) DO NOTHING
    """
)


async def add_to_outbox(conn: AsyncConnection, events: Iterable[Event[Any]]) -> int:
    """Write events in the caller's transaction: they are published only if it commits."""
    batch = list(events)
    if not batch:
        return 0
    await conn.execute(
        _INSERT,
        {
            "ids": [e.id for e in batch],
            "topics": [e.topic for e in batch],
            "keys": [e.key for e in batch],
            "types": [e.type for e in batch],
            "values": [e.encode() for e in batch],
        },
    )
    return len(batch)


async def schedule_replay(conn: AsyncConnection, since: datetime) -> int:
    """Mark every retained row written since `since` for publishing again, in seq order."""
    result = await conn.execute(
        text("UPDATE outbox SET sent_at = NULL WHERE created_at >= :since AND sent_at IS NOT NULL"),
        {"since": since},
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def make_producer(
    bootstrap: str, settings: PlatformSettings | None = None, **kwargs: Any
) -> AIOKafkaProducer:
    """A producer connected as the settings say (TLS, SASL: `connection.py`), idempotent with
    acks=all unless `LOYALTY_KAFKA_IDEMPOTENT_PRODUCER` is off (the embedded broker lacks
    InitProducerId; duplicates are harmless anyway, since every consumer deduplicates by event
    id). Without settings, those of the environment."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        **producer_kwargs(settings or PlatformSettings()),
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
        "request_timeout_ms": 15000,
    }
    options.update(kwargs)
    return AIOKafkaProducer(**options)


class OutboxRelay:
    """Publishes a service's outbox to Kafka, forever, surviving broker outages."""

    def __init__(
        self,
        engine: AsyncEngine,
        bootstrap: str,
        *,
        service: str,
        topics: Iterable[str] = (),
        batch_size: int = 500,
        retention: timedelta = timedelta(days=7),
        clock: Clock | None = None,
        idle_interval: float = 0.05,
        settings: PlatformSettings | None = None,
    ) -> None:
        self.engine = engine
        self.bootstrap = bootstrap
        self.settings = settings or PlatformSettings()  # how to connect (TLS, SASL, idempotence)
        self.service = service
        self.topics = list(topics)
        self.batch_size = batch_size
        self.retention = retention
        self.clock = clock or SystemClock()
        self.idle_interval = idle_interval
        self._wakeup = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._lock_key = f"loyalty_outbox_relay:{service}"
        self.connected = False
        self._backlog_counted_at = 0.0

    def wake(self) -> None:
        """Called after a commit that wrote outbox rows, so they go out without waiting."""
        self._wakeup.set()

    async def run(self) -> None:
        backoff = 0.2
        while True:
            try:
                await self._run_as_leader()
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker or database down: keep the rows, try again
                self.connected = False
                await log_broker_failure(
                    log,
                    "outbox_relay_error",
                    exc,
                    self.bootstrap,
                    self.settings,
                    service=self.service,
                    retry_in=backoff,
                )
                await self._close_producer()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _run_as_leader(self) -> None:
        async with self.engine.connect() as lock_conn:
            got = await lock_conn.scalar(
                text("SELECT pg_try_advisory_lock(hashtext(:k))"), {"k": self._lock_key}
            )
            await lock_conn.commit()
            if not got:  # another replica relays; check again later
                await asyncio.sleep(2.0)
                return
            try:
                await self._start_producer()
                await self._replay_if_broker_forgot()
                last_purge = 0.0
                loop = asyncio.get_running_loop()
                while True:
                    # cleared before reading: a commit that lands during the batch wakes the
                    # next round at once instead of being missed
                    self._wakeup.clear()
                    sent = await self.publish_pending()
                    if loop.time() - last_purge > 600:
                        await self.purge()
                        last_purge = loop.time()
                    if sent < self.batch_size:  # caught up: wait for the next commit
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._wakeup.wait(), self.idle_interval * 20)
            finally:
                with contextlib.suppress(Exception):
                    await lock_conn.execute(
                        text("SELECT pg_advisory_unlock(hashtext(:k))"), {"k": self._lock_key}
                    )
                    await lock_conn.commit()

    async def _start_producer(self) -> None:
        if self._producer is None:
            producer = make_producer(self.bootstrap, self.settings)
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
        self.connected = True

    async def _close_producer(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
            self._producer = None

    async def stop(self) -> None:
        await self._close_producer()

    async def publish_pending(self) -> int:
        """Publish one batch of pending rows; answer how many were sent."""
        assert self._producer is not None
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT seq, topic, key, value FROM outbox WHERE sent_at IS NULL "
                        "ORDER BY seq LIMIT :n"
                    ),
                    {"n": self.batch_size},
                )
            ).all()
            await conn.commit()
        if not rows:
            OUTBOX_BACKLOG.labels(self.service).set(0)
            return 0
        futures = []
        for row in rows:
            with publishing(row.value):  # tracing on: the send is a span in its event's trace
                futures.append(
                    await self._producer.send(
                        row.topic, row.value, key=row.key.encode(), headers=[CONTENT_TYPE]
                    )
                )
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            # Nothing is marked: the whole batch goes again (consumers deduplicate by id).
            raise KafkaError(
                f"{len(failed)} of {len(rows)} outbox messages not acknowledged: {failed[0]!r}"
            )
        async with self.engine.begin() as conn:
            await conn.execute(
                text("UPDATE outbox SET sent_at = now() WHERE seq = ANY(CAST(:seqs AS bigint[]))"),
                {"seqs": [row.seq for row in rows]},
            )
        OUTBOX_PUBLISHED.labels(self.service).inc(len(rows))
        now = asyncio.get_running_loop().time()
        if len(rows) < self.batch_size:
            OUTBOX_BACKLOG.labels(self.service).set(0)  # we caught up
        elif now - self._backlog_counted_at > 5:  # counting is not free: now and then
            self._backlog_counted_at = now
            OUTBOX_BACKLOG.labels(self.service).set(await self._backlog())
        return len(rows)

    async def _backlog(self) -> int:
        async with self.engine.connect() as conn:
            return int(
                await conn.scalar(text("SELECT count(*) FROM outbox WHERE sent_at IS NULL")) or 0
            )

    async def _replay_if_broker_forgot(self) -> None:
        """A broker whose topics are empty while we hold sent rows has lost its data (the
        embedded broker after a restart, or a real cluster rebuilt after a disaster): publish
        the retained rows again, in order."""
        if not self.topics:
            return
        assert self._producer is not None
        partitions: list[TopicPartition] = []
        for topic in self.topics:
            for p in await self._producer.partitions_for(topic) or set():
                partitions.append(TopicPartition(topic, p))
        if not partitions:
            return
        from aiokafka import AIOKafkaConsumer

        probe = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            **connection_kwargs(self.settings),
        )
        await probe.start()
        try:
            ends = await probe.end_offsets(partitions)
        finally:
            await probe.stop()
        if any(offset > 0 for offset in ends.values()):
            return
        async with self.engine.begin() as conn:
            replayed = await conn.execute(
                text(
                    "UPDATE outbox SET sent_at = NULL WHERE sent_at IS NOT NULL "
                    "AND topic = ANY(CAST(:topics AS text[]))"
                ),
                {"topics": self.topics},
            )
        if replayed.rowcount:  # type: ignore[attr-defined]
            log.warning(
                "outbox_replay_after_broker_loss", service=self.service, rows=replayed.rowcount
            )  # type: ignore[attr-defined]

    async def purge(self) -> int:
        cutoff = self.clock.now() - self.retention
        async with self.engine.begin() as conn:
            result = await conn.execute(
                text("DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < :cutoff"),
                {"cutoff": cutoff},
            )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
