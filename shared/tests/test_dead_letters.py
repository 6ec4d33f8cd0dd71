"""Dead letters that can be fed back, and an inbox that forgets (contract §2), on the real
broker and PostgreSQL: a message dead-lettered once however often it is delivered again; the
admin endpoints that list and redrive dead letters on a real service (points); the job that
forgets old processed event ids."""

from __future__ import annotations

import asyncio
import functools
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import loyalty_points.bootstrap
import loyalty_shared.kafka.consumer as kafka_consumer
import loyalty_shared.kafka.inbox as inbox
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from loyalty_shared.events import MEMBERS, Event, make_event
from loyalty_shared.events.members import MemberCheckedIn, MemberRegistered, MemberUpdated
from loyalty_shared.kafka import Handlers, IdempotentConsumer, dlq_topic, make_producer
from loyalty_shared.testing import DatabaseFactory, RunningService, start_service, until
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

NOW = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)

TopicFactory = Callable[..., Awaitable[str]]
TopicReader = Callable[..., Awaitable[list[ConsumerRecord[bytes, bytes]]]]


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


# ---------------------------------------------------------------------------------------------
# The consumer: a dead letter delivered again is not dead-lettered twice
# ---------------------------------------------------------------------------------------------


def checked_in(member_id: str) -> Event[Any]:
    return make_event(
        "member.checked_in",
        MemberCheckedIn(member_id=member_id, date=NOW.date(), streak_days=1, occurred_at=NOW),
        subject=member_id,
        source="test",
        time=NOW,
    )


def updated(member_id: str) -> Event[Any]:
    """An event whose handler (below) always fails."""
    return make_event(
        "member.updated",
        MemberUpdated(member_id=member_id, changed=["timezone"], occurred_at=NOW),
        subject=member_id,
        source="test",
        time=NOW,
    )


def handlers() -> Handlers:
    table = Handlers()

    @table.on("member.checked_in")
    async def note(conn: AsyncConnection, events: list[Event[Any]]) -> None:
        for event in events:
            await conn.execute(
                text(
                    "INSERT INTO tallies (member_id, total) VALUES (:m, 1) "
                    "ON CONFLICT (member_id) DO UPDATE SET total = tallies.total + 1"
                ),
                {"m": event.data.member_id},
            )

    @table.on("member.updated")
    async def always_fails(conn: AsyncConnection, events: list[Event[Any]]) -> None:
        raise RuntimeError("member.updated cannot be applied here")

    return table


class CrashesBeforeOffsetCommit(IdempotentConsumer):
    """A consumer whose process dies after each batch, before its offset commit."""

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        return None


def consumer_of(
    cls: type[IdempotentConsumer], engine: AsyncEngine, bootstrap: str, topic: str, group: str
) -> IdempotentConsumer:
    return cls(
        engine,
        bootstrap,
        service="test",
        group=group,
        topics=[topic],
        handlers=handlers(),
        max_retries=1,
        retry_delay=0.01,
    )


async def produce(bootstrap: str, topic: str, values: list[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in values]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def drain(consumer: IdempotentConsumer, records: int, timeout: float = 30.0) -> None:
    await consumer._start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen = 0
    while seen < records:
        if loop.time() > deadline:
            raise AssertionError(f"{consumer.group} processed {seen} of {records} messages")
        seen += await consumer.poll_once(timeout_ms=200)
    assert seen == records


async def dead_letter_rows(engine: AsyncEngine, group: str) -> dict[str, dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                'SELECT message_id, topic, "partition", "offset", event_type, reason, error, '
                '"key", "value", redriven_at, redrives FROM dead_letters '
                "WHERE consumer_group = :g"
            ),
            {"g": group},
        )
        return {row.message_id: dict(row._mapping) for row in rows}


async def test_a_dead_letter_delivered_again_is_not_dead_lettered_twice(
    engine: AsyncEngine,
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    topic_reader: TopicReader,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The restarted member joins once the crashed one's session has expired: keep it short.
    monkeypatch.setattr(
        kafka_consumer,
        "AIOKafkaConsumer",
        functools.partial(AIOKafkaConsumer, session_timeout_ms=3000, heartbeat_interval_ms=500),
    )
    group = unique("dlq-once")
    topic = await new_topic("dlq-once", partitions=1, dlq_groups=(group,))
    not_json = b"\x00\xffnot JSON at all"
    fails = updated("m-broken")
    good = checked_in("m-good")
    await produce(kafka_bootstrap, topic, [(b"m-x", not_json), (b"m-broken", fails.encode())])

    # Dead-lettered, but the process dies before the offset commit...
    crashing = consumer_of(CrashesBeforeOffsetCommit, engine, kafka_bootstrap, topic, group)
    try:
        await drain(crashing, 2)
    finally:
        await crashing.stop()
    rows = await dead_letter_rows(engine, group)
    assert set(rows) == {f"{topic}/0/0", fails.id}
    assert rows[f"{topic}/0/0"]["event_type"] == "unparsed"
    assert rows[f"{topic}/0/0"]["reason"] == "malformed"
    assert bytes(rows[f"{topic}/0/0"]["value"]) == not_json
    assert rows[fails.id]["event_type"] == "member.updated"
    assert rows[fails.id]["reason"] == "handler_error"
    assert "cannot be applied here" in rows[fails.id]["error"]
    assert (rows[fails.id]["partition"], rows[fails.id]["offset"]) == (0, 1)
    assert bytes(rows[fails.id]["key"]) == b"m-broken"
    assert rows[fails.id]["redriven_at"] is None and rows[fails.id]["redrives"] == 0

    # ...so the restarted consumer of the group gets both again; and the failing event is
    # sent once more (a new offset, the same event id), followed by a good one.
    await produce(
        kafka_bootstrap, topic, [(b"m-broken", fails.encode()), (b"m-good", good.encode())]
    )
    restarted = consumer_of(IdempotentConsumer, engine, kafka_bootstrap, topic, group)
    try:
        await drain(restarted, 4)
    finally:
        await restarted.stop()

    dead = await topic_reader(dlq_topic(topic, group), at_least=2)
    assert sorted(r.value for r in dead) == sorted([not_json, fails.encode()])
    assert await dead_letter_rows(engine, group) == rows
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT total FROM tallies WHERE member_id = 'm-good'")) == 1


# ---------------------------------------------------------------------------------------------
# The admin endpoints on a real service, and the inbox purge job
# ---------------------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module")
async def points(databases: DatabaseFactory, kafka_bootstrap: str):
    service = await start_service(
        loyalty_points.bootstrap.definition(),
        database_url=await databases.fresh("dead_letters_points"),
        bootstrap=kafka_bootstrap,
        consumer_max_retries=1,
    )
    yield service
    await service.stop()


class Breakable:
    """Wraps every handler of a consumer: events about the members in `broken` fail (the
    handler rejects them, every time), or meet a database that refuses connections while
    `outage` is set."""

    def __init__(self, table: Handlers) -> None:
        self.broken: set[str] = set()
        self.outage = False
        table.by_type = {t: self.wrap(fn) for t, fn in table.by_type.items()}

    def wrap(self, fn: Any) -> Any:
        async def handler(conn: AsyncConnection, events: list[Event[Any]]) -> None:
            members = {getattr(e.data, "member_id", None) for e in events}
            if self.outage and members & self.broken:
                raise ConnectionRefusedError("the database refuses connections")
            if members & self.broken:
                raise ValueError("the points service cannot take this member yet")
            await fn(conn, events)

        return handler


def registered(member_id: str) -> Event[Any]:
    at = datetime.now(UTC)
    return make_event(
        "member.registered",
        MemberRegistered(
            member_id=member_id,
            card_no="8000000000000000",
            referral_code="ABCDEFGH",
            registered_at=at,
        ),
        subject=member_id,
        source="test",
        time=at,
    )


async def waiting(points: RunningService) -> list[dict[str, Any]]:
    response = await points.client.get("/v1/admin/dead-letters")
    assert response.status_code == 200, response.text
    return response.json()["items"]  # type: ignore[no-any-return]


async def redrive(points: RunningService, **body: Any) -> dict[str, int]:
    response = await points.client.post("/v1/admin/dead-letters:redrive", json=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_dead_letters_are_listed_and_redriven_through_the_idempotent_path(
    points: RunningService, kafka_bootstrap: str, topic_reader: TopicReader
) -> None:
    consumer = points.runtime.consumer
    assert consumer is not None
    breakable = Breakable(consumer.handlers)
    member = unique("m-dlq")
    breakable.broken.add(member)
    event = registered(member)
    before = datetime.now(UTC) - timedelta(seconds=5)
    producer = make_producer(kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(MEMBERS, event.encode(), key=member.encode())
    finally:
        await producer.stop()

    items = await until(lambda: waiting(points), "the dead letter listed", 60.0)
    assert len(items) == 1
    item = items[0]
    assert (item["topic"], item["group"], item["count"]) == (MEMBERS, "loyalty-points", 1)
    assert item["oldest_at"] == item["newest_at"]
    assert datetime.fromisoformat(item["oldest_at"]) >= before
    dead = await topic_reader(dlq_topic(MEMBERS, "loyalty-points"), at_least=1)
    assert [r.value for r in dead].count(event.encode()) == 1
    account = await points.client.get(f"/v1/accounts/{member}")
    assert account.status_code in (200, 404)
    assert account.status_code == 404 or account.json()["available"] == 0

    # Other topics, or only what was dead-lettered later: nothing to redrive.
    assert await redrive(points, topic="loyalty.orders") == {
        "redriven": 0,
        "applied": 0,
        "failed_again": 0,
    }
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert (await redrive(points, since=later))["redriven"] == 0
    # The cause is still there: it fails again and stays waiting, its redrive counted.
    assert await redrive(points, topic=MEMBERS, since=before.isoformat()) == {
        "redriven": 1,
        "applied": 0,
        "failed_again": 1,
    }
    assert [i["count"] for i in await waiting(points)] == [1]
    async with points.runtime.engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT redrives, error, redriven_at FROM dead_letters WHERE message_id = :m"),
                {"m": event.id},
            )
        ).one()
    assert row.redrives == 1 and row.redriven_at is None
    assert "cannot take this member yet" in row.error
    # A database outage while redriving is an outage (503), not a failure of the dead letter.
    breakable.outage = True
    response = await points.client.post("/v1/admin/dead-letters:redrive", json={})
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "service_unavailable"
    breakable.outage = False
    async with points.runtime.engine.connect() as conn:
        assert (
            await conn.scalar(
                text("SELECT redrives FROM dead_letters WHERE message_id = :m"), {"m": event.id}
            )
            == 1
        )

    # The cause fixed, the redrive applies it: the signup bonus is there, nothing is waiting.
    breakable.broken.clear()
    assert await redrive(points) == {"redriven": 1, "applied": 1, "failed_again": 0}
    account = await points.client.get(f"/v1/accounts/{member}")
    assert account.status_code == 200, account.text
    assert account.json()["available"] == 100
    assert await waiting(points) == []
    assert await redrive(points) == {"redriven": 0, "applied": 0, "failed_again": 0}
    async with points.runtime.engine.connect() as conn:
        assert (
            await conn.scalar(
                text("SELECT count(*) FROM processed_events WHERE event_id = :m"), {"m": event.id}
            )
            == 1
        )

    # Delivered again (after the redrive): the inbox holds it; no second bonus, no DLQ record.
    producer = make_producer(kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(MEMBERS, event.encode(), key=member.encode())
        sentinel = registered(unique("m-after"))
        await producer.send_and_wait(MEMBERS, sentinel.encode(), key=sentinel.key.encode())
    finally:
        await producer.stop()

    async def sentinel_credited() -> bool:
        response = await points.client.get(f"/v1/accounts/{sentinel.key}")
        return response.status_code == 200 and response.json()["available"] == 100

    await until(sentinel_credited, "the event after the redriven one", 60.0)
    assert (await points.client.get(f"/v1/accounts/{member}")).json()["available"] == 100
    dead = await topic_reader(dlq_topic(MEMBERS, "loyalty-points"), at_least=1)
    assert [r.value for r in dead].count(event.encode()) == 1
    assert await waiting(points) == []


async def test_a_dead_letter_that_does_not_parse_fails_again(points: RunningService) -> None:
    group = points.runtime.consumer_group
    async with points.runtime.engine.begin() as conn:
        await conn.execute(
            text(
                'INSERT INTO dead_letters (consumer_group, message_id, topic, "partition", '
                '"offset", event_type, reason, error, "value") '
                "VALUES (:g, :m, :t, 0, 7, 'unparsed', 'malformed', 'value is not JSON', :v)"
            ),
            {"g": group, "m": f"{MEMBERS}/0/7", "t": MEMBERS, "v": b"\x00not json"},
        )
    try:
        assert await redrive(points) == {"redriven": 1, "applied": 0, "failed_again": 1}
        assert [(i["topic"], i["count"]) for i in await waiting(points)] == [(MEMBERS, 1)]
    finally:
        async with points.runtime.engine.begin() as conn:
            await conn.execute(
                text("DELETE FROM dead_letters WHERE message_id = :m"), {"m": f"{MEMBERS}/0/7"}
            )


async def test_the_inbox_forgets_what_the_outbox_no_longer_keeps(
    points: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbox, "PURGE_CHUNK", 2)  # several chunks
    as_of = datetime(2020, 3, 1, 12, 0, tzinfo=UTC)
    retention = timedelta(days=points.runtime.settings.outbox_retention_days)
    group = unique("purge")
    old = [as_of - retention - timedelta(hours=h) for h in (1, 2, 30, 200, 1000)]
    kept = [as_of - retention + timedelta(minutes=1), as_of]
    async with points.runtime.engine.begin() as conn:
        for i, at in enumerate(old + kept):
            await conn.execute(
                text(
                    "INSERT INTO processed_events (consumer_group, event_id, type, processed_at) "
                    "VALUES (:g, :e, 'member.registered', :at)"
                ),
                {"g": group, "e": f"e{i}", "at": at},
            )

    jobs = (await points.client.get("/v1/admin/jobs")).json()["items"]
    assert "purge-processed-events" in {j["job"] for j in jobs}
    response = await points.client.post(
        "/v1/admin/jobs/purge-processed-events/run", json={"as_of": as_of.isoformat()}
    )
    assert response.status_code == 200, response.text
    assert response.json()["counts"] == {
        "events_forgotten": len(old),
        "cutoff": (as_of - retention).isoformat(),
    }
    async with points.runtime.engine.connect() as conn:
        left = await conn.scalars(
            text("SELECT event_id FROM processed_events WHERE consumer_group = :g"), {"g": group}
        )
        assert sorted(left) == [f"e{len(old)}", f"e{len(old) + 1}"]
    # Nothing is older any more: a second run forgets nothing.
    response = await points.client.post(
        "/v1/admin/jobs/purge-processed-events/run", json={"as_of": as_of.isoformat()}
    )
    assert response.json()["counts"]["events_forgotten"] == 0
