"""Readiness: `/readyz` needs the database and the broker (contract §3); `/readyz?require=database`
needs the database alone, and is what a cluster's readiness probe asks, so that a broker outage
(the outbox holds the writes) does not take every pod out of its Service. Both show each check."""

from __future__ import annotations

import loyalty_points.bootstrap
from loyalty_shared.testing import DatabaseFactory, start_service


async def test_a_broker_outage_leaves_the_pod_ready_for_traffic(databases: DatabaseFactory):
    service = await start_service(
        loyalty_points.bootstrap.definition(),
        database_url=await databases.fresh("readiness"),
        bootstrap="127.0.0.1:9",  # nothing listens there: the broker is out
        background=False,
    )
    try:
        everything = await service.client.get("/readyz")
        assert everything.status_code == 503
        assert everything.json()["checks"]["database"] == "ok"
        assert everything.json()["checks"]["broker"] != "ok"
        traffic = await service.client.get("/readyz?require=database")
        assert traffic.status_code == 200, traffic.text
        assert traffic.json()["checks"]["broker"] != "ok"  # still shown
    finally:
        await service.stop()
