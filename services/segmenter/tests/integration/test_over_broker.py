"""Over the real broker: a member's profile follows orders and refunds published to Kafka, and
the lifecycle change goes out on loyalty.segments (the only test here that joins a group)."""

from __future__ import annotations

import asyncio

import loyalty_segmenter.bootstrap
import pytest_asyncio
from loyalty_shared.clock import FixedClock
from loyalty_shared.kafka import make_producer
from loyalty_shared.testing import DatabaseFactory, outbox_events, start_service

from .events import T0, next_id, paid, refunded, registered


@pytest_asyncio.fixture(scope="module")
async def live_segmenter(databases: DatabaseFactory, kafka_bootstrap: str):
    service = await start_service(
        loyalty_segmenter.bootstrap.definition(),
        database_url=await databases.fresh("segmenter_live"),
        bootstrap=kafka_bootstrap,
        clock=FixedClock(T0),
    )
    yield service
    await service.stop()


async def publish(bootstrap: str, *events) -> None:
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        for event in events:
            await producer.send_and_wait(event.topic, event.encode(), key=event.key.encode())
    finally:
        await producer.stop()


async def wait_for(service, member_id: str, check, timeout: float = 30.0) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    body: dict = {}
    while loop.time() < deadline:
        response = await service.client.get(f"/v1/profiles/{member_id}")
        if response.status_code == 200:
            body = response.json()
            if check(body):
                return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"the profile stayed {body}")


async def test_profile_follows_orders_and_refunds_over_the_broker(live_segmenter, kafka_bootstrap):
    member, order = next_id("live"), next_id("o")
    await publish(
        kafka_bootstrap,
        registered(member),
        paid(member, order, 50000, lines={"tea": 50000}),
        refunded(member, order, 20000, 20000, 50000),
    )
    body = await wait_for(live_segmenter, member, lambda b: b["spend_minor"] == 30000)
    assert body["orders_count"] == 1
    assert body["lifecycle_stage"] == "new"
    assert body["preference_tags"] == ["tea"]
    changes = await outbox_events(
        live_segmenter.runtime, key=member, event_type="member.lifecycle_changed"
    )
    # members and orders are separate topics: either may be applied first, but each change
    # is announced once and the announced stages chain up to the profile's
    stages = [(c["data"].get("old_stage"), c["data"]["new_stage"]) for c in changes]
    assert stages in ([(None, "new")], [(None, "prospect"), ("prospect", "new")])
