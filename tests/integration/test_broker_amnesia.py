"""The embedded broker keeps nothing: events published but not consumed when it restarts empty
come back through the outbox replay, and every effect is there exactly once."""

from __future__ import annotations

import loyalty_member.bootstrap
import loyalty_points.bootstrap
from loyalty_shared.kafka.broker import EmbeddedBroker, free_port
from loyalty_shared.testing import DatabaseFactory, RunningService, start_service, until
from prometheus_client import REGISTRY
from sqlalchemy import text

PHONES = ["13700000001", "13700000002", "13700000003"]


async def pending_outbox(service: RunningService) -> int:
    async with service.runtime.engine.connect() as conn:
        return int(await conn.scalar(text("SELECT count(*) FROM outbox WHERE sent_at IS NULL")))


def duplicates_seen() -> float:
    value = REGISTRY.get_sample_value(
        "loyalty_events_duplicate_total", {"service": "points", "type": "member.registered"}
    )
    return value or 0.0


async def test_events_survive_a_broker_that_restarts_empty(databases: DatabaseFactory):
    port = free_port()
    member_db = await databases.fresh("amnesia_member")
    points_db = await databases.fresh("amnesia_points")
    member_def = loyalty_member.bootstrap.definition()

    broker = EmbeddedBroker(port).start()
    member = await start_service(member_def, database_url=member_db, bootstrap=broker.bootstrap)
    member_ids = []
    for phone in PHONES:
        response = await member.client.post("/v1/members", json={"phone": phone})
        assert response.status_code == 201, response.text
        member_ids.append(response.json()["member_id"])

    async def all_published() -> bool:
        return await pending_outbox(member) == 0

    await until(all_published, "the relay to publish the sign-ups", 45.0)
    await member.stop()

    # The broker restarts empty before anyone consumed the events.
    broker.stop()
    broker = EmbeddedBroker(port).start()
    try:
        member = await start_service(member_def, database_url=member_db, bootstrap=broker.bootstrap)
        points = await start_service(
            loyalty_points.bootstrap.definition(),
            database_url=points_db,
            bootstrap=broker.bootstrap,
        )
        try:

            async def balances() -> list[int] | None:
                got = [
                    (await points.client.get(f"/v1/accounts/{m}")).json()["available"]
                    for m in member_ids
                ]
                return got if got == [100, 100, 100] else None

            await until(balances, "the replayed sign-ups to be credited", 45.0)

            # The operator's replay sends everything again; consumers skip what they hold.
            before = duplicates_seen()
            response = await member.client.post(
                "/v1/admin/outbox:replay", json={"since": "2020-01-01T00:00:00Z"}
            )
            assert response.status_code == 200
            assert response.json()["scheduled"] == len(PHONES)

            async def duplicates_skipped() -> bool:
                return duplicates_seen() - before >= len(PHONES)

            await until(duplicates_skipped, "the replayed duplicates to be skipped", 45.0)
            for member_id in member_ids:
                account = (await points.client.get(f"/v1/accounts/{member_id}")).json()
                assert account["available"] == 100
                ledger = (await points.client.get(f"/v1/accounts/{member_id}/ledger")).json()
                assert len(ledger["items"]) == 1
        finally:
            await points.stop()
            await member.stop()
    finally:
        broker.stop()
