"""Integration tests of the idempotent batch consumer, on real PostgreSQL and the real embedded
broker: duplicates, a crash between the two commits, dead letters, and large batches."""

from __future__ import annotations

import asyncio
import functools
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import loyalty_shared.kafka.consumer as kafka_consumer
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from loyalty_shared.events import Event, make_event
from loyalty_shared.events.members import MemberCheckedIn, MemberUpdated
from loyalty_shared.kafka import Handlers, IdempotentConsumer, apply_events, dlq_topic
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

NOW = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)

TopicFactory = Callable[..., Awaitable[str]]
TopicReader = Callable[..., Awaitable[list[ConsumerRecord[bytes, bytes]]]]


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def checked_in(member_id: str, streak_days: int) -> Event[Any]:
    """The event these tests apply: the tally handler adds `streak_days` to the member's total."""
    return make_event(
        "member.checked_in",
        MemberCheckedIn(
            member_id=member_id, date=NOW.date(), streak_days=streak_days, occurred_at=NOW
        ),
        subject=member_id,
        source="test",
        time=NOW,
    )


def updated(member_id: str) -> Event[Any]:
    """An event whose handler always fails."""
    return make_event(
        "member.updated",
        MemberUpdated(member_id=member_id, changed=["timezone"], occurred_at=NOW),
        subject=member_id,
        source="test",
        time=NOW,
    )


def tally_handlers(batch_sizes: list[int] | None = None) -> Handlers:
    handlers = Handlers()

    @handlers.on("member.checked_in")
    async def add_to_tallies(conn: AsyncConnection, events: list[Event[Any]]) -> None:
        if batch_sizes is not None:
            batch_sizes.append(len(events))
        await conn.execute(
            text(
                """
                INSERT INTO tallies (member_id, total)
                SELECT member_id, sum(amount)
                FROM unnest(CAST(:members AS text[]), CAST(:amounts AS bigint[]))
                    AS t(member_id, amount)
                GROUP BY member_id
                ON CONFLICT (member_id) DO UPDATE SET total = tallies.total + excluded.total
                """
            ),
            {
                "members": [e.data.member_id for e in events],
                "amounts": [e.data.streak_days for e in events],
            },
        )

    @handlers.on("member.updated")
    async def always_fails(conn: AsyncConnection, events: list[Event[Any]]) -> None:
        raise RuntimeError("the tally cannot apply member.updated")

    return handlers


class RecordingConsumer(IdempotentConsumer):
    """The real consumer; it also notes which events each applied batch carried."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[list[bytes | None]] = []

    async def _apply(self, events: list[Event[Any]]) -> None:
        self.batches.append([e.encode() for e in events])
        await super()._apply(events)


class CrashesBeforeOffsetCommit(IdempotentConsumer):
    """A consumer whose process dies after each database commit, before the offset commit."""

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        return None


async def produce(bootstrap: str, topic: str, values: list[tuple[bytes | None, bytes]]) -> None:
    """Send (key, value) pairs and wait until the broker has them all."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in values]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def keyed(events: list[Event[Any]]) -> list[tuple[bytes | None, bytes]]:
    return [(e.key.encode(), e.encode()) for e in events]


async def drain(consumer: IdempotentConsumer, records: int, timeout: float = 30.0) -> None:
    """Poll until the consumer has processed `records` messages (the first polls also wait for
    the group join); fail on a deadline, or if it took more than that."""
    await consumer._start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen = 0
    while seen < records:
        if loop.time() > deadline:
            raise AssertionError(f"{consumer.group} processed {seen} of {records} messages")
        seen += await consumer.poll_once(timeout_ms=200)
    assert seen == records


async def tallies(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT member_id, total FROM tallies"))
        return {row.member_id: row.total for row in rows}


async def processed(engine: AsyncEngine, group: str) -> Counter[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT event_id FROM processed_events WHERE consumer_group = :g"), {"g": group}
        )
        return Counter(row[0] for row in rows)


def consumer_for(
    cls: type[IdempotentConsumer],
    engine: AsyncEngine,
    bootstrap: str,
    topic: str,
    group: str,
    handlers: Handlers | None = None,
    **options: Any,
) -> Any:
    return cls(
        engine,
        bootstrap,
        service="test",
        group=group,
        topics=[topic],
        handlers=handlers or tally_handlers(),
        **options,
    )


async def test_an_event_delivered_twice_has_one_effect(
    engine: AsyncEngine, kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = await new_topic("consumer-dup", partitions=2)
    group = unique("dup")
    in_one_batch = checked_in("m-a", 3)
    in_two_batches = checked_in("m-b", 5)
    await produce(kafka_bootstrap, topic, keyed([in_one_batch, in_one_batch]))

    consumer = consumer_for(RecordingConsumer, engine, kafka_bootstrap, topic, group)
    try:
        await drain(consumer, 2)
        # Both copies came in one partition batch, and counted once.
        assert consumer.batches == [[in_one_batch.encode()] * 2]
        assert await tallies(engine) == {"m-a": 3}

        # The same event again, each copy in a batch of its own.
        await produce(kafka_bootstrap, topic, keyed([in_two_batches]))
        await drain(consumer, 1)
        await produce(kafka_bootstrap, topic, keyed([in_two_batches]))
        await drain(consumer, 1)
        assert consumer.batches[1:] == [[in_two_batches.encode()]] * 2
    finally:
        await consumer.stop()

    assert await tallies(engine) == {"m-a": 3, "m-b": 5}
    assert await processed(engine, group) == {in_one_batch.id: 1, in_two_batches.id: 1}


async def test_a_crash_between_database_and_offset_commit_does_not_double_apply(
    engine: AsyncEngine,
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The broker lets the restarted member in only once the crashed one's session has expired
    # (as after a real crash, which sends no LeaveGroup): a short session keeps that to seconds.
    monkeypatch.setattr(
        kafka_consumer,
        "AIOKafkaConsumer",
        functools.partial(AIOKafkaConsumer, session_timeout_ms=3000, heartbeat_interval_ms=500),
    )
    topic = await new_topic("consumer-crash", partitions=3)
    group = unique("crash")
    events = [checked_in(f"m-{i % 5}", i + 1) for i in range(30)]
    expected: Counter[str] = Counter()
    for event in events:
        expected[event.data.member_id] += event.data.streak_days
    await produce(kafka_bootstrap, topic, keyed(events))

    crashing = consumer_for(CrashesBeforeOffsetCommit, engine, kafka_bootstrap, topic, group)
    try:
        await drain(crashing, len(events))
    finally:
        await crashing.stop()
    assert await tallies(engine) == expected

    # The restarted consumer of the same group gets every message again (no offset was
    # committed) and skips them all.
    restarted = consumer_for(RecordingConsumer, engine, kafka_bootstrap, topic, group)
    try:
        await drain(restarted, len(events))
        assert sorted(v for batch in restarted.batches for v in batch) == sorted(
            e.encode() for e in events
        )
    finally:
        await restarted.stop()

    assert await tallies(engine) == expected
    assert await processed(engine, group) == {e.id: 1 for e in events}


async def test_poison_messages_go_to_the_dead_letter_topic_and_the_next_one_is_applied(
    engine: AsyncEngine,
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    topic_reader: TopicReader,
) -> None:
    group = unique("poison")
    topic = await new_topic("consumer-poison", partitions=1, dlq_groups=(group,))
    good_before = checked_in("m-good", 2)
    not_json = b"\x00\xffthis is not JSON"
    future_schema = checked_in("m-future", 4).to_cloudevent()
    future_schema["dataschema"] = "urn:loyalty:schema:member.checked_in:99"
    future_schema_bytes = orjson.dumps(future_schema)
    handler_fails = updated("m-broken")
    good_after = checked_in("m-good", 7)
    # Types this consumer does not handle are someone else's business: skipped, not poison,
    # even a type newer than this consumer's registry.
    not_mine = orjson.dumps(
        {
            **checked_in("m-other", 1).to_cloudevent(),
            "type": "member.erased",
            "data": {"member_id": "m-other"},
        }
    )
    from_the_future = orjson.dumps(
        {**checked_in("m-other", 1).to_cloudevent(), "type": "member.teleported", "data": {}}
    )
    # One partition, in this order: each poison message sits before a good one.
    await produce(
        kafka_bootstrap,
        topic,
        [
            *keyed([good_before]),
            (b"m-x", not_json),
            (b"m-future", future_schema_bytes),
            (b"m-other", not_mine),
            (b"m-other", from_the_future),
            *keyed([handler_fails, good_after]),
        ],
    )

    consumer = consumer_for(
        IdempotentConsumer,
        engine,
        kafka_bootstrap,
        topic,
        group,
        max_retries=2,
        retry_delay=0.01,
    )
    try:
        await drain(consumer, 7)
    finally:
        await consumer.stop()

    assert await tallies(engine) == {"m-good": 9}
    assert await processed(engine, group) == {good_before.id: 1, good_after.id: 1}

    dead = await topic_reader(dlq_topic(topic, group), at_least=3)
    assert len(dead) == 3
    by_value = {r.value: dict(r.headers) for r in dead}
    assert set(by_value) == {not_json, future_schema_bytes, handler_fails.encode()}
    for headers in by_value.values():
        assert headers["error"]
        assert headers["original_topic"] == topic.encode()
        assert headers["consumer_group"] == group.encode()
    assert by_value[not_json]["error_reason"] == b"malformed"
    assert by_value[future_schema_bytes]["error_reason"] == b"unknown_schema_version"
    assert by_value[handler_fails.encode()]["error_reason"] == b"handler_error"
    assert b"the tally cannot apply member.updated" in by_value[handler_fails.encode()]["error"]


async def test_a_large_batch_is_applied_with_the_right_totals(
    engine: AsyncEngine, kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = await new_topic("consumer-batch", partitions=3)
    group = unique("batch")
    events = [checked_in(f"m-{i % 50:02d}", i % 7 + 1) for i in range(2000)]
    expected: Counter[str] = Counter()
    for event in events:
        expected[event.data.member_id] += event.data.streak_days
    await produce(kafka_bootstrap, topic, keyed(events))

    handler_batches: list[int] = []
    consumer = consumer_for(
        IdempotentConsumer,
        engine,
        kafka_bootstrap,
        topic,
        group,
        handlers=tally_handlers(handler_batches),
    )
    try:
        await drain(consumer, len(events), timeout=60)
    finally:
        await consumer.stop()

    assert await tallies(engine) == expected
    assert len(await processed(engine, group)) == len(events)
    # The handler was given whole batches, not one event at a time.
    assert sum(handler_batches) == len(events)
    assert max(handler_batches) > 1
    assert len(handler_batches) < len(events) // 10


async def test_apply_events_twice_in_separate_transactions_applies_once(
    engine: AsyncEngine,
) -> None:
    handlers = tally_handlers()
    events = [checked_in("m-x", 2), checked_in("m-y", 4), checked_in("m-x", 1)]

    async with engine.begin() as conn:
        fresh = await apply_events(conn, "apply-group", handlers, events)
    assert [e.id for e in fresh] == [e.id for e in events]

    async with engine.begin() as conn:
        assert await apply_events(conn, "apply-group", handlers, events) == []

    assert await tallies(engine) == {"m-x": 3, "m-y": 4}
    assert await processed(engine, "apply-group") == {e.id: 1 for e in events}


async def test_one_handler_for_several_types_gets_the_run_whole(engine: AsyncEngine) -> None:
    calls: list[list[str]] = []

    async def engine_handler(conn: Any, events: list[Event[Any]]) -> None:
        calls.append([e.type for e in events])

    together = Handlers()
    together.on_each(["member.checked_in", "member.updated"], engine_handler)
    mixed = [checked_in("m-a", 1), updated("m-a"), checked_in("m-a", 2)]
    async with engine.begin() as conn:
        await apply_events(conn, "together-group", together, mixed)
    assert calls == [["member.checked_in", "member.updated", "member.checked_in"]]

    calls.clear()
    apart = Handlers()
    apart.by_type["member.checked_in"] = engine_handler
    apart.by_type["member.updated"] = lambda conn, events: engine_handler(conn, events)
    mixed = [checked_in("m-b", 1), updated("m-b"), checked_in("m-b", 2)]
    async with engine.begin() as conn:
        await apply_events(conn, "apart-group", apart, mixed)
    assert calls == [["member.checked_in"], ["member.updated"], ["member.checked_in"]]


async def test_a_database_refusing_connections_pauses_the_consumer_and_dead_letters_nothing(
    engine: AsyncEngine,
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    topic_reader: TopicReader,
) -> None:
    """Contract §2: while the database refuses connections (SQLSTATE 55000) and every open one is
    cut, for longer than the whole retry ladder, the consumer waits and applies the same events
    once the database is back; nothing goes to the dead-letter topic."""
    group = unique("outage")
    topic = await new_topic("consumer-outage", partitions=1, dlq_groups=(group,))
    events = [checked_in(f"m-{i % 3}", i + 1) for i in range(6)]
    database = engine.url.database
    from loyalty_shared.db import create_engine

    server_url = engine.url.set(database="postgres").render_as_string(hide_password=False)
    server = create_engine(server_url, pool_size=1, max_overflow=0)

    async def allow(flag: bool) -> None:
        async with server.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {flag}'))
            if not flag:
                await conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :d AND pid <> pg_backend_pid()"
                    ),
                    {"d": database},
                )

    consumer = consumer_for(
        IdempotentConsumer, engine, kafka_bootstrap, topic, group, max_retries=2, retry_delay=0.01
    )
    try:
        await consumer._start()
        await allow(False)
        await produce(kafka_bootstrap, topic, keyed(events))
        # 3 s of refusals: the retry ladder (2 tries, 10 ms apart) is over many times
        loop = asyncio.get_running_loop()
        reopen = loop.call_later(3.0, lambda: asyncio.ensure_future(allow(True)))
        try:
            await drain(consumer, len(events), timeout=40)
        finally:
            reopen.cancel()
            await allow(True)
    finally:
        await consumer.stop()
        await server.dispose()
    expected: Counter[str] = Counter()
    for e in events:
        expected[e.data.member_id] += e.data.streak_days
    assert await tallies(engine) == dict(expected)
    assert await processed(engine, group) == {e.id: 1 for e in events}
    assert await topic_reader(dlq_topic(topic, group), at_least=0) == []
