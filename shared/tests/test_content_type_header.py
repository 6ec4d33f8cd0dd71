"""Every Kafka message the platform produces carries `content-type: application/cloudevents+json`
(contract §2): the outbox relay's events and the dead letters (the original value, with the error
in its other headers). Read with confluent-kafka (librdkafka), a client independent of ours, on
the real embedded broker."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from loyalty_shared.events import make_event
from loyalty_shared.events.members import MemberRegistered
from loyalty_shared.kafka import (
    Handlers,
    IdempotentConsumer,
    OutboxRelay,
    add_to_outbox,
    dlq_topic,
    make_producer,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

NOW = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
CLOUDEVENTS = ("content-type", b"application/cloudevents+json")


def read_independently(
    bootstrap: str, topic: str, at_least: int, timeout: float = 20.0, **config: Any
) -> list[Any]:
    """Every message of the topic once it holds `at_least`, read by confluent-kafka without a
    group (each partition from its beginning)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"independent-{secrets.token_hex(4)}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            **config,
        }
    )
    try:
        deadline = time.monotonic() + timeout
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        messages: list[Any] = []
        while time.monotonic() < deadline:
            message = consumer.poll(0.3)
            if message is None:
                if len(messages) >= at_least:
                    return messages
                continue
            if message.error() is None:
                messages.append(message)
        raise AssertionError(f"{topic}: {len(messages)} messages, expected {at_least}")
    finally:
        consumer.close()


def registered(member_id: str) -> Any:
    return make_event(
        "member.registered",
        MemberRegistered(
            member_id=member_id,
            card_no=f"88{secrets.randbelow(10**11):011d}",
            referral_code=secrets.token_hex(3).upper(),
            registered_at=NOW,
        ),
        subject=member_id,
        source="test",
        time=NOW,
    )


async def test_the_relays_events_carry_the_cloudevents_content_type(
    engine: AsyncEngine, new_topic: Callable[..., Awaitable[str]], kafka_bootstrap: str
) -> None:
    topic = await new_topic("content-type", partitions=2)
    events = [registered(f"m-{i}") for i in range(5)]
    async with engine.begin() as conn:
        await add_to_outbox(conn, events)
        await conn.execute(text("UPDATE outbox SET topic = :topic"), {"topic": topic})
    relay = OutboxRelay(engine, kafka_bootstrap, service="test", topics=[topic])
    await relay._start_producer()
    try:
        assert await relay.publish_pending() == 5
    finally:
        await relay.stop()

    messages = await asyncio.to_thread(read_independently, kafka_bootstrap, topic, 5)
    assert len(messages) == 5
    for message in messages:
        assert message.headers() == [CLOUDEVENTS]
    assert {m.key().decode() for m in messages} == {e.key for e in events}


async def test_dead_letters_carry_the_content_type_besides_the_error(
    engine: AsyncEngine, new_topic: Callable[..., Awaitable[str]], kafka_bootstrap: str
) -> None:
    group = f"content-type-{secrets.token_hex(3)}"
    topic = await new_topic("content-type-dlq", partitions=1, dlq_groups=(group,))
    table = Handlers()

    @table.on("member.registered")
    async def refuses(conn: AsyncConnection, batch: list[Any]) -> None:
        raise RuntimeError("this handler refuses every event")

    event = registered("m-dead")
    producer = make_producer(kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, event.encode(), key=event.key.encode())
    finally:
        await producer.stop()
    consumer = IdempotentConsumer(
        engine,
        kafka_bootstrap,
        service="test",
        group=group,
        topics=[topic],
        handlers=table,
        max_retries=1,
        retry_delay=0.01,
    )
    await consumer._start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not await consumer.poll_once(timeout_ms=200):
            assert loop.time() < deadline, "the consumer received nothing"
    finally:
        await consumer.stop()

    [dead] = await asyncio.to_thread(
        read_independently, kafka_bootstrap, dlq_topic(topic, group), 1
    )
    assert dead.value() == event.encode()
    headers = dict(dead.headers())
    assert headers["content-type"] == b"application/cloudevents+json"
    assert headers["error_reason"] == b"handler_error"
    assert b"refuses every event" in headers["error"]
    assert headers["original_topic"] == topic.encode()
    assert headers["consumer_group"] == group.encode()
    assert [name for name, _ in dead.headers()].count("content-type") == 1
