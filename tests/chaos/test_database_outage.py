"""A database outage under load: the service says it is not ready, writes answer 503 (never
500), its consumer pauses, and when the database is back everything resumes without loss."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import loyalty_member.bootstrap
import loyalty_points.bootstrap
import pytest
from loyalty_shared.db import EmbeddedCluster, ensure_database
from loyalty_shared.testing import DatabaseFactory, RunningService, start_service, until

pytestmark = pytest.mark.slow


async def balances(points: RunningService, member_ids: list[str]) -> list[int]:
    out = []
    for member_id in member_ids:
        response = await points.client.get(f"/v1/accounts/{member_id}")
        out.append(response.json()["available"] if response.status_code == 200 else -1)
    return out


async def test_points_database_outage_loses_nothing(
    databases: DatabaseFactory, kafka_bootstrap: str
):
    pgdata = Path(tempfile.mkdtemp(prefix="loyalty-outage-")) / "pg"
    cluster = EmbeddedCluster(pgdata)
    points_url = cluster.url("outage_points")
    await ensure_database(points_url, "outage_points")
    member = await start_service(
        loyalty_member.bootstrap.definition(),
        database_url=await databases.fresh("outage_member"),
        bootstrap=kafka_bootstrap,
    )
    points = await start_service(
        loyalty_points.bootstrap.definition(), database_url=points_url, bootstrap=kafka_bootstrap
    )
    member_ids: list[str] = []
    try:

        async def sign_up(phone: str) -> None:
            response = await member.client.post("/v1/members", json={"phone": phone})
            assert response.status_code == 201, response.text
            member_ids.append(response.json()["member_id"])

        await sign_up("13300000001")

        async def first_credited() -> bool:
            return await balances(points, member_ids) == [100]

        await until(first_credited, "the first signup bonus", 90.0)

        cluster.stop()  # the points database goes away
        ready = await points.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"].startswith("unavailable")
        write = await points.client.post(
            "/v1/redemptions",
            json={"member_id": member_ids[0], "points": 10, "reason": "during the outage"},
        )
        assert write.status_code == 503, write.text
        assert write.json()["code"] == "service_unavailable"
        read = await points.client.get(f"/v1/accounts/{member_ids[0]}")
        assert read.status_code == 503

        # Sign-ups go on meanwhile: their events wait on the broker for the points consumer.
        for phone in ("13300000002", "13300000003", "13300000004"):
            await sign_up(phone)
        await asyncio.sleep(3)

        cluster = EmbeddedCluster(pgdata)  # the database comes back

        async def all_credited() -> bool:
            return await balances(points, member_ids) == [100] * len(member_ids)

        await until(all_credited, "every signup bonus after the outage", 90.0)
        assert (await points.client.get("/readyz")).status_code == 200
        for member_id in member_ids:
            ledger = (await points.client.get(f"/v1/accounts/{member_id}/ledger")).json()
            assert len(ledger["items"]) == 1  # exactly once
    finally:
        await points.stop()
        await member.stop()
        cluster.stop()
