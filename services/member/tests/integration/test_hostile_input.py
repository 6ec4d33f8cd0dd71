"""Hostile input on the member service: text is stored and returned verbatim whatever its script
or how much it looks like SQL; values the database or the calendar cannot hold are a 422 that
changes nothing, never a 500 (issue "Reliability and security", tests/chaos/test_schemathesis.py).
"""

from __future__ import annotations

import itertools

import loyalty_member.bootstrap
import pytest
import pytest_asyncio
from loyalty_shared.testing import DatabaseFactory, RunningService, start_service
from sqlalchemy import text

_phones = itertools.count(13700000001)

TEXTS = [
    "'; DROP TABLE members; --",
    "Robert'); DELETE FROM complaints WHERE '1'='1",
    "🎉🧧 会员 李小龙",
    "שלום עליכם مرحبا",  # right to left
    'Zoë \\ " ` $1 %s {0} <b>',
]


@pytest_asyncio.fixture(scope="module")
async def member(databases: DatabaseFactory):
    service = await start_service(
        loyalty_member.bootstrap.definition(),
        database_url=await databases.fresh("hostile_member"),
        bootstrap="127.0.0.1:9",  # background=False: the broker is never contacted
        background=False,
    )
    yield service
    await service.stop()


async def count(member: RunningService, table: str) -> int:
    async with member.runtime.engine.connect() as conn:
        return int(await conn.scalar(text(f"SELECT count(*) FROM {table}")))


def problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code, response.text
    return dict(response.json())


@pytest.mark.parametrize("value", TEXTS)
async def test_member_names_are_stored_verbatim(member, value):
    created = await member.client.post(
        "/v1/members", json={"phone": str(next(_phones)), "name": value}
    )
    assert created.status_code == 201, created.text
    assert created.json()["name"] == value
    url = f"/v1/members/{created.json()['member_id']}"
    assert (await member.client.get(url)).json()["name"] == value
    changed = await member.client.patch(url, json={"name": value[::-1]})
    assert changed.status_code == 200 and changed.json()["name"] == value[::-1]
    assert (await member.client.get(url)).json()["name"] == value[::-1]


@pytest.mark.parametrize("value", TEXTS)
async def test_complaint_texts_are_stored_verbatim(member, value):
    member_id = (
        await member.client.post("/v1/members", json={"phone": str(next(_phones))})
    ).json()["member_id"]
    opened = await member.client.post(
        "/v1/complaints",
        json={"member_id": member_id, "subject": value, "description": value * 3},
    )
    assert opened.status_code == 201, opened.text
    ticket = (await member.client.get(f"/v1/complaints/{opened.json()['ticket_id']}")).json()
    assert ticket["subject"] == value and ticket["description"] == value * 3


async def test_a_nul_character_is_a_422_that_stores_nothing(member):
    before = await count(member, "members")
    response = await member.client.post(
        "/v1/members", json={"phone": str(next(_phones)), "name": "Mei\u0000Lin"}
    )
    problem(response, 422, "validation_error")
    assert await count(member, "members") == before


async def test_a_body_that_is_not_utf8_is_a_422(member):
    """Found by schemathesis: the JSON parser answered a bare 400."""
    response = await member.client.post(
        "/v1/members",
        content=b'{"phone": "\xff\xfe13700000000"}',
        headers={"Content-Type": "application/json"},
    )
    body = problem(response, 422, "validation_error")
    assert body["errors"][0]["loc"] == ["body"]


@pytest.mark.parametrize(
    "occurred_at",
    ["0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59-14:00"],
)
async def test_times_at_the_ends_of_the_calendar_are_a_422(member, occurred_at):
    member_id = (
        await member.client.post("/v1/members", json={"phone": str(next(_phones))})
    ).json()["member_id"]
    response = await member.client.post(
        f"/v1/members/{member_id}/check-ins", json={"occurred_at": occurred_at}
    )
    problem(response, 422, "validation_error")
    assert await count(member, "checkins") == 0
    order = await member.client.post(
        "/v1/orders",
        json={
            "channel": "pos",
            "external_id": f"edge-{occurred_at}",
            "member_id": member_id,
            "occurred_at": occurred_at,
            "status": "paid",
            "currency": "CNY",
            "total_minor": 100,
            "paid_minor": 100,
            "lines": [],
        },
    )
    problem(order, 422, "validation_error")
