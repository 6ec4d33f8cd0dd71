"""Every service starts on a fresh database (migrations included), joins the broker and says so
on /readyz; the operational endpoints need no key and the admin ones need the admin scope."""

from __future__ import annotations

import importlib

import pytest
from loyalty_shared.testing import READ_ONLY_AUTH, DatabaseFactory, start_service
from sqlalchemy import text

SERVICES = ["member", "points", "coupon", "notifier", "segmenter"]


@pytest.mark.parametrize("name", SERVICES)
async def test_service_boots_migrated_and_ready(
    name: str, databases: DatabaseFactory, kafka_bootstrap: str
):
    definition = importlib.import_module(f"loyalty_{name}.bootstrap").definition()
    service = await start_service(
        definition,
        database_url=await databases.fresh(f"boot_{name}"),
        bootstrap=kafka_bootstrap,
        background=False,
    )
    try:
        anonymous = {"Authorization": ""}
        assert (await service.client.get("/healthz", headers=anonymous)).status_code == 200
        ready = await service.client.get("/readyz", headers=anonymous)
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}
        metrics = await service.client.get("/metrics", headers=anonymous)
        assert (
            metrics.status_code == 200 and "loyalty_http_request_duration_seconds" in metrics.text
        )

        forbidden = await service.client.get("/v1/admin/jobs", headers=READ_ONLY_AUTH)
        assert forbidden.status_code == 403 and forbidden.json()["code"] == "forbidden"
        assert (await service.client.get("/v1/admin/jobs")).status_code == 200

        async with service.runtime.engine.connect() as conn:
            tables = set(
                await conn.scalars(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                )
            )
        platform = {"outbox", "processed_events", "idempotency_keys", "dead_letters", "job_runs"}
        assert platform | {"alembic_version"} <= tables
    finally:
        await service.stop()


async def test_readyz_says_unavailable_when_the_broker_is_gone(databases: DatabaseFactory):
    from loyalty_shared.kafka.broker import free_port

    definition = importlib.import_module("loyalty_coupon.bootstrap").definition()
    service = await start_service(
        definition,
        database_url=await databases.fresh("boot_nobroker"),
        bootstrap=f"127.0.0.1:{free_port()}",
        background=False,
    )
    try:
        ready = await service.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["broker"] == "unavailable"
    finally:
        await service.stop()
