"""The coupon service on the real broker: `member.registered` published to `loyalty.members`
(twice) → one welcome coupon, and its `coupon.issued` published to `loyalty.coupons`."""

from __future__ import annotations

import asyncio

import loyalty_coupon.bootstrap
import pytest_asyncio
from loyalty_shared.events import MEMBERS
from loyalty_shared.kafka import make_producer
from loyalty_shared.testing import start_service
from sqlalchemy import text


@pytest_asyncio.fixture(scope="module")
async def coupon(databases, kafka_bootstrap):
    service = await start_service(
        loyalty_coupon.bootstrap.definition(),
        database_url=await databases.fresh("coupon_broker"),
        bootstrap=kafka_bootstrap,
    )
    yield service
    await service.stop()


async def test_welcome_coupon_from_the_broker(coupon, kafka_bootstrap, kit):
    t = await kit.template(coupon)
    await kit.campaign(coupon, [t["code"]], {"type": "member.registered"})
    member = kit.unique("k")
    event = kit.registered(member)
    producer = make_producer(kafka_bootstrap)
    await producer.start()
    try:
        for _ in range(2):  # at-least-once delivery: the same event twice
            await producer.send_and_wait(MEMBERS, event.encode(), key=member.encode())
    finally:
        await producer.stop()

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        async with coupon.runtime.engine.connect() as conn:
            sent = await conn.scalar(
                text(
                    "SELECT count(*) FROM outbox WHERE key = :m AND type = 'coupon.issued' "
                    "AND sent_at IS NOT NULL"
                ),
                {"m": member},
            )
        if sent:
            break
        assert loop.time() < deadline, "no coupon.issued was published"
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # the duplicate has had time to arrive
    assert len(await kit.wallet(coupon, member)) == 1
    assert len(await kit.events_of(coupon, member, "coupon.issued")) == 1
