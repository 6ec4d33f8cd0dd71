"""The five services in this process, without a broker: each service's outbox is pumped into
the consumers of its topics through their own handlers (`apply_events`), so events flow as
they would over Kafka, at the moment a test (or the background pump) asks."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import httpx
import loyalty_coupon.bootstrap
import loyalty_member.bootstrap
import loyalty_notifier.bootstrap
import loyalty_points.bootstrap
import loyalty_segmenter.bootstrap
from loyalty_notifier.config import NotifierSettings
from loyalty_shared.events.envelope import decode_event
from loyalty_shared.kafka import apply_events
from loyalty_shared.testing import TEST_KEY, DatabaseFactory, RunningService, start_service
from sqlalchemy import text

SERVICES = ("member", "points", "coupon", "notifier", "segmenter")


@dataclass
class InProcessPlatform:
    services: dict[str, RunningService] = field(default_factory=dict)
    _seen: dict[str, int] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _task: asyncio.Task[None] | None = None

    def transports(self) -> dict[str, httpx.AsyncBaseTransport]:
        return {name: httpx.ASGITransport(app=s.app) for name, s in self.services.items()}

    async def start(self, databases: DatabaseFactory) -> None:
        # The member service first: the notifier and the coupon service call it.
        async def run(definition: Any) -> RunningService:
            return await start_service(
                definition,
                database_url=await databases.fresh(f"console_{definition.name}"),
                bootstrap="127.0.0.1:9",  # no broker: the pump below delivers the events
                background=False,
            )

        self.services["member"] = await run(loyalty_member.bootstrap.definition())
        self.services["points"] = await run(loyalty_points.bootstrap.definition())
        self.services["segmenter"] = await run(loyalty_segmenter.bootstrap.definition())
        member_transport = httpx.ASGITransport(app=self.services["member"].app)
        notifier, _ = loyalty_notifier.bootstrap.build(
            NotifierSettings(member_url="http://member.test", member_api_key=TEST_KEY),
            member_transport=member_transport,
        )
        self.services["notifier"] = await run(notifier)
        self.services["coupon"] = await run(
            loyalty_coupon.bootstrap.definition(
                points_transport=httpx.ASGITransport(app=self.services["points"].app),
                segmenter_transport=httpx.ASGITransport(app=self.services["segmenter"].app),
                member_transport=member_transport,
            )
        )

    async def pump(self) -> int:
        """Deliver every event written so far, until no service writes a new one."""
        delivered = 0
        async with self._lock:
            while True:
                moved = 0
                for name in SERVICES:
                    producer = self.services[name]
                    async with producer.runtime.engine.connect() as conn:
                        rows = (
                            await conn.execute(
                                text(
                                    "SELECT seq, topic, value FROM outbox "
                                    "WHERE seq > :s ORDER BY seq"
                                ),
                                {"s": self._seen.get(name, 0)},
                            )
                        ).all()
                    if not rows:
                        continue
                    self._seen[name] = rows[-1].seq
                    moved += len(rows)
                    for consumer in self.services.values():
                        runtime = consumer.runtime
                        events = [
                            decode_event(r.value)
                            for r in rows
                            if r.topic in runtime.definition.consumes
                        ]
                        if not events or runtime.definition.handlers is None:
                            continue
                        async with runtime.transaction() as conn:
                            await apply_events(
                                conn,
                                runtime.consumer_group,
                                runtime.definition.handlers(runtime),
                                events,
                            )
                if not moved:
                    return delivered
                delivered += moved

    async def dispatch_messages(self) -> None:
        """The notifier's dispatch job, as its scheduler would run it."""
        await self.services["notifier"].client.post("/v1/admin/jobs/dispatch/run", json={})

    def pump_in_background(self, every: float = 0.2) -> None:
        async def loop() -> None:
            while True:
                with contextlib.suppress(Exception):
                    if await self.pump():
                        await self.dispatch_messages()
                        await self.pump()
                await asyncio.sleep(every)

        self._task = asyncio.create_task(loop(), name="console-test-pump")

    async def stop_background(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for service in reversed(list(self.services.values())):
            await service.stop()


async def seed_demo(platform: InProcessPlatform) -> dict[str, Any]:
    """A small shop's worth of data: members bought over the last months, a complaint, coupons,
    a segment and a campaign with a holdout, so every page has something to show."""
    from datetime import UTC, datetime, timedelta

    member = platform.services["member"].client
    coupon = platform.services["coupon"].client
    segmenter = platform.services["segmenter"].client
    now = datetime.now(UTC)
    names = [
        "Wang Xiaomei",
        "Li Lei",
        "Han Meimei",
        "Zhang Wei",
        "Chen Jing",
        "Liu Yang",
        "Zhao Min",
        "Sun Li",
    ]
    members = []
    for i, name in enumerate(names):
        body = {"phone": f"1391234{5600 + i}", "name": name, "email": f"demo{i}@example.com"}
        created = await member.post("/v1/members", json=body)
        if created.status_code == 409:
            found = await member.get("/v1/members", params={"phone": body["phone"]})
            members.append(found.json()["items"][0])
            continue
        members.append(created.json())
    for i, m in enumerate(members):
        for n in range(i % 4 + (1 if i < 6 else 0)):
            days_ago = [5, 40, 100, 200, 300][(i + n) % 5]
            await member.post(
                "/v1/orders",
                json={
                    "channel": "pos" if n % 2 else "online",
                    "external_id": f"DEMO-{i}-{n}",
                    "member_id": m["member_id"],
                    "status": "paid",
                    "currency": "CNY",
                    "total_minor": 8800 + 4100 * ((i * 3 + n) % 7),
                    "paid_minor": 8800 + 4100 * ((i * 3 + n) % 7),
                    "occurred_at": (now - timedelta(days=days_ago)).isoformat(),
                    "lines": [
                        {
                            "sku": f"SKU-{n}",
                            "category": ["tea", "snacks", "beverages"][(i + n) % 3],
                            "quantity": 1,
                            "unit_price_minor": 8800,
                        }
                    ],
                },
            )
    for g in range(3):
        await member.post(
            "/v1/orders",
            json={
                "channel": "pos",
                "external_id": f"DEMO-GUEST-{g}",
                "status": "paid",
                "currency": "CNY",
                "total_minor": 4500,
                "paid_minor": 4500,
                "lines": [],
            },
        )
    first = members[0]["member_id"]
    await member.post(f"/v1/members/{first}/check-ins", json={})
    await member.post(
        "/v1/complaints",
        json={
            "member_id": first,
            "subject": "收到的茶叶包装破损",
            "description": "外包装压坏",
            "channel": "store",
            "category": "delivery",
        },
    )
    await member.post(f"/v1/members/{first}/surveys", json={"score": 4, "recommend": 9})
    await coupon.post(
        "/v1/coupon-templates",
        json={
            "code": "NEW-20OFF",
            "name": "20 off 100",
            "kind": "amount_off",
            "value": 2000,
            "min_spend_minor": 10000,
            "valid_days": 30,
            "per_member_limit": 5,
        },
    )
    await coupon.post(
        "/v1/coupon-templates",
        json={
            "code": "SNACKS-15",
            "name": "15% off snacks",
            "kind": "percent_off",
            "value": 15,
            "max_discount_minor": 3000,
            "categories": ["snacks"],
            "valid_days": 14,
            "per_member_limit": 5,
        },
    )
    await coupon.post(
        "/v1/campaigns",
        json={
            "code": "WINBACK",
            "name": "Win back",
            "template_codes": ["NEW-20OFF"],
            "trigger": {"type": "manual"},
            "holdout_percent": 20,
        },
    )
    await coupon.post(
        "/v1/campaigns",
        json={
            "code": "WELCOME",
            "name": "Welcome pack",
            "template_codes": ["SNACKS-15"],
            "trigger": {"type": "member.registered"},
        },
    )
    await platform.pump()
    await segmenter.post(
        "/v1/segments",
        json={
            "code": "buyers",
            "name": "Members who bought",
            "rule": {"field": "orders_count", "op": "gte", "value": 1},
        },
    )
    job = await coupon.post(
        "/v1/campaigns/WINBACK/issue", json={"member_ids": [m["member_id"] for m in members]}
    )
    for _ in range(100):
        state = (await coupon.get(f"/v1/jobs/{job.json()['job_id']}")).json()
        if state["status"] in ("completed", "failed"):
            break
        await asyncio.sleep(0.05)
    await platform.pump()
    await platform.dispatch_messages()
    await platform.pump()
    return {"members": members}
