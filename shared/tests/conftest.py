"""Fixtures for the Kafka runtime's integration tests: a fresh database per test, unique topics,
and a reader that takes everything a topic holds, all on the real broker and real PostgreSQL."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from loyalty_shared.db import create_engine, create_platform_tables
from loyalty_shared.kafka import dlq_topic, ensure_topics
from loyalty_shared.testing import DatabaseFactory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

# A state table for the outbox tests and the effect table of the consumer tests' handler.
_TEST_TABLES = (
    "CREATE TABLE members (member_id text PRIMARY KEY, card_no text NOT NULL)",
    "CREATE TABLE tallies (member_id text PRIMARY KEY, total bigint NOT NULL)",
)

TopicReader = Callable[..., Awaitable[list[ConsumerRecord[bytes, bytes]]]]


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


@pytest_asyncio.fixture
async def engine(databases: DatabaseFactory) -> AsyncIterator[AsyncEngine]:
    """A real engine on a fresh database holding the platform tables and the test tables."""
    engine = create_engine(await databases.fresh("kafka_runtime"), pool_size=5, max_overflow=5)
    async with engine.begin() as conn:
        await conn.run_sync(create_platform_tables)
        for ddl in _TEST_TABLES:
            await conn.execute(text(ddl))
    yield engine
    await engine.dispose()


@pytest.fixture
def new_topic(kafka_bootstrap: str) -> Callable[..., Awaitable[str]]:
    """Create a topic of this test's own on the session broker and answer its name."""

    async def create(prefix: str, partitions: int = 3, *, dlq_groups: tuple[str, ...] = ()) -> str:
        topic = unique(f"test.{prefix}")
        dlqs = [dlq_topic(topic, group) for group in dlq_groups]
        await ensure_topics(kafka_bootstrap, [topic, *dlqs], partitions, attempts=5)
        return topic

    return create


async def read_topic(
    bootstrap: str, topic: str, *, at_least: int, timeout: float = 20.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Everything the topic holds once it holds at least `at_least` messages, read without a
    group (so without a join). Reading goes on until a poll finds nothing more, so a message
    too many shows up as an extra record. (The embedded broker's end offsets count record
    batches, not records, so they cannot say how many messages a topic holds.)"""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        partitions: list[TopicPartition] = []
        records: list[ConsumerRecord[bytes, bytes]] = []
        while True:
            if loop.time() > deadline:
                raise AssertionError(f"{topic} gave {len(records)} messages, expected {at_least}")
            if not partitions:
                await consumer.topics()  # refreshes the metadata
                ids = consumer.partitions_for_topic(topic) or set()
                partitions = [TopicPartition(topic, p) for p in sorted(ids)]
                if not partitions:
                    await asyncio.sleep(0.1)
                    continue
                consumer.assign(partitions)
                await consumer.seek_to_beginning(*partitions)
            batches = await consumer.getmany(timeout_ms=300)
            for batch in batches.values():
                records.extend(batch)
            if len(records) >= at_least and not batches:
                return records
    finally:
        await consumer.stop()


@pytest.fixture
def topic_reader(kafka_bootstrap: str) -> TopicReader:
    async def read(
        topic: str, *, at_least: int, bootstrap: str | None = None, timeout: float = 20.0
    ) -> list[ConsumerRecord[bytes, bytes]]:
        return await read_topic(
            bootstrap or kafka_bootstrap, topic, at_least=at_least, timeout=timeout
        )

    return read
