"""Integration tests of the transactional outbox and its relay, on real PostgreSQL and the real
embedded broker."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from loyalty_shared.events import Event, decode_event, make_event
from loyalty_shared.events.members import MemberCheckedIn, MemberRegistered
from loyalty_shared.kafka import OutboxRelay, add_to_outbox, schedule_replay
from loyalty_shared.kafka.broker import EmbeddedBroker, free_port
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

NOW = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def registered(member_id: str) -> Event[Any]:
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


def checked_in(member_id: str, streak_days: int) -> Event[Any]:
    return make_event(
        "member.checked_in",
        MemberCheckedIn(
            member_id=member_id, date=NOW.date(), streak_days=streak_days, occurred_at=NOW
        ),
        subject=member_id,
        source="test",
        time=NOW,
    )


async def stage(conn: AsyncConnection, events: list[Event[Any]], topic: str) -> None:
    """`add_to_outbox`, then route the rows to this test's own topic: the registry sends member
    events to `loyalty.members`, which every test of the session shares."""
    await add_to_outbox(conn, events)
    await conn.execute(
        text("UPDATE outbox SET topic = :topic WHERE event_id = ANY(CAST(:ids AS text[]))"),
        {"topic": topic, "ids": [e.id for e in events]},
    )


async def pending_ids(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT event_id FROM outbox WHERE sent_at IS NULL ORDER BY seq")
        )
        return [row[0] for row in rows]


async def sent_ids(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT event_id FROM outbox WHERE sent_at IS NOT NULL ORDER BY seq")
        )
        return [row[0] for row in rows]


async def drain_outbox(relay: OutboxRelay, most_passes: int = 50) -> list[int]:
    """Run relay passes until one sends nothing; answer what each pass sent."""
    sent: list[int] = []
    for _ in range(most_passes):
        count = await relay.publish_pending()
        sent.append(count)
        if count == 0:
            return sent
    raise AssertionError(f"the relay kept sending after {most_passes} passes: {sent}")


def ids_by_key(records: list[ConsumerRecord[bytes, bytes]]) -> dict[str, list[str]]:
    """Event ids per message key, in the order the broker holds them."""
    by_key: dict[str, list[str]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        assert record.key is not None
        by_key[record.key.decode()].append(decode_event(record.value).id)
    return dict(by_key)


async def test_state_change_and_its_event_commit_together_or_not_at_all(
    engine: AsyncEngine,
) -> None:
    add_member = text("INSERT INTO members (member_id, card_no) VALUES (:member_id, :card_no)")
    lost = registered("m-lost")
    with pytest.raises(RuntimeError, match="after both writes"):
        async with engine.begin() as conn:
            await conn.execute(add_member, {"member_id": "m-lost", "card_no": lost.data.card_no})
            await add_to_outbox(conn, [lost])
            # Both writes happened inside the transaction before it failed.
            assert await conn.scalar(text("SELECT count(*) FROM members")) == 1
            assert await conn.scalar(text("SELECT count(*) FROM outbox")) == 1
            raise RuntimeError("the unit of work failed after both writes")

    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM members")) == 0
        assert await conn.scalar(text("SELECT count(*) FROM outbox")) == 0

    kept = registered("m-kept")
    async with engine.begin() as conn:
        await conn.execute(add_member, {"member_id": "m-kept", "card_no": kept.data.card_no})
        await add_to_outbox(conn, [kept])

    async with engine.connect() as conn:
        members = (await conn.execute(text("SELECT member_id FROM members"))).all()
        outbox = (
            await conn.execute(
                text("SELECT event_id, topic, key, type, value, sent_at FROM outbox")
            )
        ).all()
    assert [tuple(row) for row in members] == [("m-kept",)]
    assert len(outbox) == 1
    row = outbox[0]
    assert (row.event_id, row.topic, row.key, row.type, row.sent_at) == (
        kept.id,
        "loyalty.members",
        "m-kept",
        "member.registered",
        None,
    )
    assert decode_event(row.value).data == kept.data


async def test_relay_publishes_pending_rows_in_order_keyed_by_member_then_nothing_more(
    engine: AsyncEngine,
    kafka_bootstrap: str,
    new_topic: Callable[..., Awaitable[str]],
    topic_reader: Callable[..., Awaitable[list[ConsumerRecord[bytes, bytes]]]],
) -> None:
    topic = await new_topic("outbox-order", partitions=3)
    members = [f"m-{i}" for i in range(6)]
    written: dict[str, list[str]] = defaultdict(list)
    # Five units of work, each touching every member, so members interleave in `seq` order.
    for day in range(5):
        events = [registered(m) if day == 0 else checked_in(m, day) for m in members]
        async with engine.begin() as conn:
            await stage(conn, events, topic)
        for event in events:
            written[event.key].append(event.id)
    total = sum(len(ids) for ids in written.values())

    # A batch smaller than the backlog, so order must hold across several passes.
    relay = OutboxRelay(engine, kafka_bootstrap, service=unique("order"), batch_size=7)
    await relay._start_producer()
    try:
        passes = await drain_outbox(relay)
        assert sum(passes) == total
        assert len(passes) > 2
        assert await pending_ids(engine) == []
        assert len(await sent_ids(engine)) == total

        records = await topic_reader(topic, at_least=total)
        assert len(records) == total
        for record in records:
            assert record.key is not None
            assert record.key.decode() == decode_event(record.value).subject
        assert ids_by_key(records) == written
        partitions_of = defaultdict(set)
        for record in records:
            partitions_of[record.key].add(record.partition)
        assert all(len(p) == 1 for p in partitions_of.values())

        # A second pass finds nothing to send and the topic gains nothing.
        assert await relay.publish_pending() == 0
        assert len(await topic_reader(topic, at_least=total)) == total
    finally:
        await relay.stop()


async def test_relay_publishes_once_the_broker_comes_back(
    engine: AsyncEngine,
    topic_reader: Callable[..., Awaitable[list[ConsumerRecord[bytes, bytes]]]],
) -> None:
    port = free_port()  # nothing listens here yet
    broker = EmbeddedBroker(port)
    topic = unique("test.outbox-outage")
    relay = OutboxRelay(engine, broker.bootstrap, service=unique("outage"), topics=[topic])
    task = asyncio.create_task(relay.run())
    try:
        events = [registered(f"m-{i}") for i in range(20)]
        async with engine.begin() as conn:
            await stage(conn, events, topic)
        relay.wake()

        # A second of retries against a dead port: every row stays pending, none is lost.
        await asyncio.sleep(1.0)
        assert not task.done()
        assert not relay.connected
        assert await pending_ids(engine) == [e.id for e in events]

        await asyncio.to_thread(broker.start)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while await pending_ids(engine):
            if task.done():
                raise AssertionError(f"the relay stopped: {task!r}")
            if loop.time() > deadline:
                raise AssertionError(f"{len(await pending_ids(engine))} rows still pending")
            await asyncio.sleep(0.1)
        assert relay.connected
        assert await sent_ids(engine) == [e.id for e in events]

        records = await topic_reader(topic, at_least=len(events), bootstrap=broker.bootstrap)
        assert sorted(decode_event(r.value).id for r in records) == sorted(e.id for e in events)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await relay.stop()
        await asyncio.to_thread(broker.stop)


async def test_schedule_replay_republishes_the_rows_written_since_a_time(
    engine: AsyncEngine,
    kafka_bootstrap: str,
    new_topic: Callable[..., Awaitable[str]],
    topic_reader: Callable[..., Awaitable[list[ConsumerRecord[bytes, bytes]]]],
) -> None:
    topic = await new_topic("outbox-replay", partitions=2)
    earlier = [registered(f"m-{i}") for i in range(4)]
    async with engine.begin() as conn:
        await stage(conn, earlier, topic)
    async with engine.connect() as conn:
        since = await conn.scalar(text("SELECT clock_timestamp()"))
    later = [checked_in(f"m-{i}", 1) for i in range(4)] + [registered("m-9")]
    async with engine.begin() as conn:
        await stage(conn, later, topic)

    relay = OutboxRelay(engine, kafka_bootstrap, service=unique("replay"))
    await relay._start_producer()
    try:
        assert sum(await drain_outbox(relay)) == len(earlier) + len(later)
        assert await pending_ids(engine) == []

        async with engine.begin() as conn:
            assert await schedule_replay(conn, since) == len(later)
        assert await pending_ids(engine) == [e.id for e in later]

        assert sum(await drain_outbox(relay)) == len(later)
        assert await pending_ids(engine) == []
    finally:
        await relay.stop()

    records = await topic_reader(topic, at_least=len(earlier) + 2 * len(later))
    copies = Counter(decode_event(r.value).id for r in records)
    assert copies == {**{e.id: 1 for e in earlier}, **{e.id: 2 for e in later}}
    # Per member, the replayed copies follow the originals in the order they were written.
    expected: dict[str, list[str]] = defaultdict(list)
    for event in [*earlier, *later, *later]:
        expected[event.key].append(event.id)
    assert ids_by_key(records) == expected
