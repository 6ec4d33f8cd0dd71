"""The spine's vertical slice: sign-up on the member service → `member.registered` over the real
broker → the points service credits the 100-point signup bonus."""

from __future__ import annotations

import asyncio

import loyalty_member.bootstrap
import loyalty_points.bootstrap
import orjson
import pytest_asyncio
from loyalty_shared.testing import DatabaseFactory, RunningService, start_service
from sqlalchemy import text


@pytest_asyncio.fixture(scope="module")
async def slice_services(databases: DatabaseFactory, kafka_bootstrap: str):
    member = await start_service(
        loyalty_member.bootstrap.definition(),
        database_url=await databases.fresh("slice_member"),
        bootstrap=kafka_bootstrap,
    )
    points = await start_service(
        loyalty_points.bootstrap.definition(),
        database_url=await databases.fresh("slice_points"),
        bootstrap=kafka_bootstrap,
    )
    yield member, points
    await points.stop()
    await member.stop()


async def wait_for_balance(
    points: RunningService, member_id: str, available: int, timeout: float = 30.0
) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        body = (await points.client.get(f"/v1/accounts/{member_id}")).json()
        if body["available"] == available:
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"balance stayed {body} instead of {available}")
        await asyncio.sleep(0.1)


async def test_signup_credits_the_signup_bonus(slice_services):
    member, points = slice_services
    response = await member.client.post("/v1/members", json={"phone": "13800138000"})
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["phone"] == "+8613800138000"
    member_id = created["member_id"]

    account = await wait_for_balance(points, member_id, 100)
    assert account["lifetime_earned"] == 100
    assert account["pending"] == 0

    ledger = (await points.client.get(f"/v1/accounts/{member_id}/ledger")).json()
    assert [(e["kind"], e["points"], e["rule"]) for e in ledger["items"]] == [
        ("earn", 100, "signup")
    ]
    assert ledger["items"][0]["source"]["type"] == "member.registered"


async def test_unknown_member_has_an_empty_account(slice_services):
    _, points = slice_services
    body = (await points.client.get("/v1/accounts/nobody")).json()
    assert body == {
        "member_id": "nobody",
        "available": 0,
        "pending": 0,
        "lifetime_earned": 0,
        "lifetime_redeemed": 0,
        "expiring": [],
        "tier": None,
    }


async def test_the_request_trace_travels_in_the_event(slice_services):
    member, _ = slice_services
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    response = await member.client.post(
        "/v1/members",
        json={"phone": "13800138111"},
        headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
    )
    assert response.status_code == 201
    async with member.runtime.engine.connect() as conn:
        value = await conn.scalar(
            text("SELECT value FROM outbox WHERE key = :m"), {"m": response.json()["member_id"]}
        )
    event = orjson.loads(value)
    assert event["traceparent"].split("-")[1] == trace_id
    assert event["subject"] == response.json()["member_id"]
    assert "phone" not in event["data"] and "+8613800138111" not in value.decode()


async def test_a_paid_order_at_the_till_earns_pending_points(slice_services):
    member, points = slice_services
    created = (await member.client.post("/v1/members", json={"phone": "13800138222"})).json()
    member_id = created["member_id"]
    await wait_for_balance(points, member_id, 100)
    order = await member.client.post(
        "/v1/orders",
        json={
            "channel": "pos",
            "external_id": "TILL-9-0001",
            "phone": "138 0013 8222",
            "status": "paid",
            "currency": "CNY",
            "total_minor": 25900,
            "paid_minor": 25900,
            "lines": [
                {"sku": "TEA-01", "category": "tea", "quantity": 1, "unit_price_minor": 25900}
            ],
        },
    )
    assert order.status_code == 202, order.text
    assert order.json()["member_id"] == member_id

    deadline = asyncio.get_running_loop().time() + 30
    while True:
        account = (await points.client.get(f"/v1/accounts/{member_id}")).json()
        if account["pending"] == 259 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.1)
    assert (account["available"], account["pending"]) == (100, 259)
    ledger = (await points.client.get(f"/v1/accounts/{member_id}/ledger")).json()["items"]
    assert ledger[0]["source"]["order_id"] == order.json()["order_id"]
    assert ledger[0]["source"]["type"] == "order.paid"
