"""The whole path over a real broker: events on their topics → the notifier's consumer →
deliveries → the dispatcher → notification.* events published by the outbox relay."""

# ruff: noqa: RUF001  (Chinese text uses full-width punctuation)
from __future__ import annotations

import asyncio

import httpx
from loyalty_notifier.bootstrap import build
from loyalty_notifier.testing import (
    T0,
    FakeMembers,
    ScriptedProvider,
    event,
    new_member,
    notifier_settings,
)
from loyalty_shared.clock import FixedClock
from loyalty_shared.events.members import MemberRegistered
from loyalty_shared.events.orders import OrderShipped
from loyalty_shared.kafka import make_producer
from loyalty_shared.testing import DatabaseFactory, outbox_events, start_service
from sqlalchemy import text


async def _eventually(check, timeout: float = 30.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.2)


async def test_events_from_the_broker_become_sent_messages(
    databases: DatabaseFactory, kafka_bootstrap: str
):
    members = FakeMembers()
    sms = ScriptedProvider("sms-primary")
    definition, _ = build(
        notifier_settings(),
        providers={"sms": [sms]},
        member_transport=httpx.MockTransport(members.handler),
    )
    service = await start_service(
        definition,
        database_url=await databases.fresh("notifier_broker"),
        bootstrap=kafka_bootstrap,
        clock=FixedClock(T0),
    )
    producer = make_producer(kafka_bootstrap)
    try:
        member = members.add(new_member("k"), email=None, wechat=None, push=None)
        signup = event(
            "member.registered",
            MemberRegistered(
                member_id=member,
                card_no="8800000000009",
                referral_code="KAFKA001",
                consents={"sms": True},
                registered_at=T0,
            ),
            member,
        )
        shipped = event(
            "order.shipped",
            OrderShipped(
                order_id="o-kafka",
                channel="online",
                external_id="EXT-K",
                member_id=member,
                occurred_at=T0,
            ),
            member,
        )
        await producer.start()
        for e in (signup, shipped, shipped):  # the second copy is a redelivery
            await producer.send_and_wait(e.topic, e.encode(), key=e.key.encode())

        async def planned():
            async with service.runtime.engine.connect() as conn:
                return (
                    await conn.scalar(
                        text("SELECT count(*) FROM deliveries WHERE member_id = :m"), {"m": member}
                    )
                ) == 10

        await _eventually(planned)
        response = await service.client.post(
            "/v1/admin/jobs/dispatch/run", json={"as_of": T0.isoformat()}
        )
        assert response.status_code == 200, response.text
        bodies = {m.body for m in sms.to(member)}  # sent concurrently: in no given order
        assert len(sms.to(member)) == 2
        assert bodies == {
            "【会员中心】Ada，欢迎加入！您的会员卡号 8800000000009，"
            "邀请好友时请使用推荐码 KAFKA001。",
            "【会员中心】您的订单 EXT-K 已发货。",
        }

        async def published():
            async with service.runtime.engine.connect() as conn:
                pending = await conn.scalar(
                    text("SELECT count(*) FROM outbox WHERE key = :m AND sent_at IS NULL"),
                    {"m": member},
                )
            return pending == 0

        await _eventually(published)
        sent = await outbox_events(service.runtime, key=member, event_type="notification.sent")
        assert sorted((e["data"]["event_type"], e["data"]["channel"]) for e in sent) == [
            ("member.registered", "inbox"),
            ("member.registered", "sms"),
            ("order.shipped", "inbox"),
            ("order.shipped", "sms"),
        ]
    finally:
        await producer.stop()
        await service.stop()
