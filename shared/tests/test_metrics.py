"""Gauges that must tell the truth when things are stuck: the consumer's lag while its handler
hangs (it polls no more), dead letters waiting and failed job runs (from the database)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from loyalty_shared.events import Event, make_event
from loyalty_shared.events.members import MemberCheckedIn
from loyalty_shared.kafka import Handlers, IdempotentConsumer
from loyalty_shared.state_metrics import refresh_state_metrics
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

NOW = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)


def checked_in(member_id: str) -> Event[Any]:
    return make_event(
        "member.checked_in",
        MemberCheckedIn(member_id=member_id, date=NOW.date(), streak_days=1, occurred_at=NOW),
        subject=member_id,
        source="test",
        time=NOW,
    )


def metric(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def until_value(
    read: Callable[[], float | None], wanted: float, timeout: float = 20.0
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while read() != wanted:
        if loop.time() > deadline:
            raise AssertionError(f"the gauge stayed at {read()} instead of {wanted}")
        await asyncio.sleep(0.05)


async def test_the_lag_grows_while_the_handler_hangs_and_falls_when_it_goes_on(
    engine: AsyncEngine, kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]]
) -> None:
    topic = await new_topic("lag", partitions=1)
    service = f"lag-{secrets.token_hex(3)}"
    release = asyncio.Event()
    applied: list[str] = []
    handlers = Handlers()

    @handlers.on("member.checked_in")
    async def hangs(conn: AsyncConnection, events: list[Event[Any]]) -> None:
        await release.wait()
        applied.extend(e.id for e in events)

    consumer = IdempotentConsumer(
        engine,
        kafka_bootstrap,
        service=service,
        group=f"lag-{secrets.token_hex(4)}",
        topics=[topic],
        handlers=handlers,
        lag_interval=0.1,
    )

    def lag() -> float | None:
        return metric("loyalty_consumer_lag_messages", service=service, topic=topic, partition="0")

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    running = asyncio.create_task(consumer.run())
    try:
        # one message at a time: each its own batch on the broker, so end offsets are exact
        await producer.send_and_wait(topic, checked_in("m-0").encode(), key=b"m-0")
        await until_value(lag, 1)
        await consumer.assigned.wait()
        for i in range(1, 5):
            await producer.send_and_wait(topic, checked_in(f"m-{i}").encode(), key=b"m")
            await until_value(lag, i + 1)  # the consumer hangs on the first: nothing polls
        assert applied == []
        release.set()
        await until_value(lag, 0)
        assert len(applied) == 5
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await consumer.stop()
        await producer.stop()


async def test_dead_letters_waiting_and_failed_jobs_come_from_the_database(
    engine: AsyncEngine,
) -> None:
    service = f"state-{secrets.token_hex(3)}"
    group = f"loyalty-{service}"

    async def refresh() -> None:
        await refresh_state_metrics(
            engine,
            service,
            dead_letter_sources=[("loyalty.members", group), ("loyalty.orders", group)],
            jobs=["expire", "release-pending"],
        )

    await refresh()

    def waiting(topic: str) -> float | None:
        return metric("loyalty_dead_letters_waiting", service=service, topic=topic, group=group)

    def failed(job: str) -> float | None:
        return metric("loyalty_job_last_run_failed", service=service, job=job)

    assert (waiting("loyalty.members"), waiting("loyalty.orders")) == (0, 0)
    assert (failed("expire"), failed("release-pending")) == (0, 0)
    assert metric("loyalty_outbox_backlog_events", service=service) == 0

    async with engine.begin() as conn:
        for i in range(2):
            await conn.execute(
                text(
                    'INSERT INTO dead_letters (consumer_group, message_id, topic, "partition", '
                    '"offset", event_type, reason, error, "value") VALUES (:g, :m, '
                    "'loyalty.members', 0, :o, 'member.registered', 'handler_error', 'x', '')"
                ),
                {"g": group, "m": f"ev-{i}", "o": i},
            )
        await conn.execute(
            text(
                "INSERT INTO job_runs (job, status, finished_at) VALUES ('expire', 'error', now()),"
                " ('release-pending', 'ok', now())"
            )
        )
        await conn.execute(
            text(
                "INSERT INTO outbox (event_id, topic, key, type, value) "
                "VALUES ('e-1', 'loyalty.points', 'm', 'points.credited', '')"
            )
        )
    await refresh()
    assert (waiting("loyalty.members"), waiting("loyalty.orders")) == (2, 0)
    assert (failed("expire"), failed("release-pending")) == (1, 0)
    assert metric("loyalty_outbox_backlog_events", service=service) == 1

    async with engine.begin() as conn:
        await conn.execute(text("UPDATE dead_letters SET redriven_at = now()"))
        await conn.execute(text("UPDATE job_runs SET status = 'ok'"))
    await refresh()
    assert waiting("loyalty.members") == 0
    assert failed("expire") == 0
