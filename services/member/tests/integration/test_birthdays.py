"""Whose birthday falls on a day: members signed up through the API, listed by member_id a page
at a time with their time zones only; erased members left out; 29 February birthdays on 28
February in years without one; the month-day index serves the query."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import loyalty_member.bootstrap
import pytest_asyncio
from loyalty_member.adapters.tables import members
from loyalty_member.service_layer.birthdays import (
    BIRTH_DAY,
    BIRTH_MONTH,
    birth_days_listed,
    parse_month_day,
)
from loyalty_shared.clock import FixedClock
from loyalty_shared.paging import decode_cursor
from loyalty_shared.testing import READ_ONLY_AUTH, DatabaseFactory, RunningService, start_service
from sqlalchemy import select, text

_phones = itertools.count(13500000001)
NOW = datetime(2027, 5, 1, 4, 0, tzinfo=UTC)  # 2027 has no 29 February


@pytest_asyncio.fixture(scope="module")
async def member(databases: DatabaseFactory):
    service = await start_service(
        loyalty_member.bootstrap.definition(),
        database_url=await databases.fresh("birthdays_member"),
        bootstrap="127.0.0.1:9",
        background=False,
        clock=FixedClock(NOW),
    )
    yield service
    await service.stop()


async def sign_up(member: RunningService, **fields) -> str:
    body = {"phone": str(next(_phones)), **fields}
    response = await member.client.post("/v1/members", json=body)
    assert response.status_code == 201, response.text
    return response.json()["member_id"]  # type: ignore[no-any-return]


async def listed(member: RunningService, on: str, **params) -> list[dict]:
    """Every page of the day, following next_cursor."""
    items: list[dict] = []
    cursor = None
    while True:
        query = {"on": on, **params, **({"cursor": cursor} if cursor else {})}
        response = await member.client.get("/v1/members:birthdays", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items


async def test_lists_member_ids_and_time_zones_of_the_day_page_by_page(member):
    born = [
        await sign_up(member, birthday="1990-03-14", name="Mei", email=f"m{i}@example.com")
        for i in range(5)
    ]
    other_zone = await sign_up(member, birthday="2001-03-14", timezone="Europe/Paris")
    await sign_up(member, birthday="1990-03-15")  # the next day
    await sign_up(member, birthday="1990-04-14")  # the same day of another month
    await sign_up(member)  # no birthday given

    first = await member.client.get(
        "/v1/members:birthdays", params={"on": "03-14", "limit": 4}, headers=READ_ONLY_AUTH
    )
    assert first.status_code == 200, first.text
    page = first.json()
    assert len(page["items"]) == 4
    assert decode_cursor(page["next_cursor"], 1) == (page["items"][-1]["member_id"],)
    # Nothing personal: ids and zones only, whatever else the member gave.
    assert all(set(item) == {"member_id", "timezone"} for item in page["items"])
    second = (
        await member.client.get(
            "/v1/members:birthdays",
            params={"on": "03-14", "limit": 4, "cursor": page["next_cursor"]},
        )
    ).json()
    assert len(second["items"]) == 2 and second["next_cursor"] is None

    everyone = page["items"] + second["items"]
    assert [i["member_id"] for i in everyone] == sorted([*born, other_zone])
    zones = {i["member_id"]: i["timezone"] for i in everyone}
    assert zones[other_zone] == "Europe/Paris" and zones[born[0]] == "Asia/Shanghai"

    # A page that ends exactly at the last member says so (no empty page after it).
    exact = (
        await member.client.get("/v1/members:birthdays", params={"on": "03-14", "limit": 6})
    ).json()
    assert len(exact["items"]) == 6 and exact["next_cursor"] is None
    assert await listed(member, "12-25") == []


async def test_erased_members_and_changed_birthdays(member):
    kept = await sign_up(member, birthday="1985-06-02")
    erased = await sign_up(member, birthday="1985-06-02")
    moved = await sign_up(member, birthday="1985-06-02")
    assert (await member.client.delete(f"/v1/members/{erased}")).status_code == 204
    patched = await member.client.patch(f"/v1/members/{moved}", json={"birthday": "1985-06-03"})
    assert patched.status_code == 200, patched.text
    assert [i["member_id"] for i in await listed(member, "06-02")] == [kept]
    assert [i["member_id"] for i in await listed(member, "06-03")] == [moved]


async def test_29_february_birthdays_on_28_february_in_other_years(member):
    leap = await sign_up(member, birthday="2000-02-29")
    feb28 = await sign_up(member, birthday="1999-02-28")
    # 2027 (the service's year by default, and given): both on 28 February.
    assert {i["member_id"] for i in await listed(member, "02-28")} == {leap, feb28}
    assert {i["member_id"] for i in await listed(member, "02-28", year=2027)} == {leap, feb28}
    # 2028 has a 29 February: each on their own day, never twice.
    assert [i["member_id"] for i in await listed(member, "02-28", year=2028)] == [feb28]
    assert [i["member_id"] for i in await listed(member, "02-29", year=2028)] == [leap]
    assert [i["member_id"] for i in await listed(member, "03-01", year=2027)] == []
    # There is no 29 February in 2027 to ask about.
    none = await member.client.get("/v1/members:birthdays", params={"on": "02-29"})
    assert none.status_code == 422 and none.json()["code"] == "validation_error"
    assert "02-28" in none.json()["detail"]

    assert birth_days_listed(2, 28, 2100) == [28, 29]  # not a leap year (century)
    assert birth_days_listed(2, 28, 2000) == [28]  # a leap year (400)
    assert birth_days_listed(3, 1, 2027) == [1]


async def test_refuses_days_that_do_not_exist_and_foreign_cursors(member):
    for on in ("13-40", "00-10", "04-31", "02-30", "3-14", "03-1", "0314", "", "ab-cd", "03-14x"):
        response = await member.client.get("/v1/members:birthdays", params={"on": on})
        assert response.status_code == 422, on
        body = response.json()
        assert body["code"] == "validation_error", on
        assert body["errors"][0]["loc"] == ["query", "on"], on
    missing = await member.client.get("/v1/members:birthdays")
    assert missing.status_code == 422 and missing.json()["code"] == "validation_error"
    for params in (
        {"limit": 0},
        {"limit": 501},
        {"year": 0},
        {"cursor": "not/a cursor"},
        {"cursor": "01JF3Z5V3B0000000000000000"},  # a member id, not a cursor handed out
    ):
        response = await member.client.get(
            "/v1/members:birthdays", params={"on": "01-01", **params}
        )
        assert response.status_code == 422, params
        assert response.json()["code"] == "validation_error", params
    anonymous = await member.client.get(
        "/v1/members:birthdays", params={"on": "01-01"}, headers={"Authorization": ""}
    )
    assert anonymous.status_code == 401
    assert parse_month_day("12-31") == (12, 31) and parse_month_day("02-29") == (2, 29)


async def test_the_day_is_read_through_the_month_day_index(member):
    query = (
        select(members.c.member_id, members.c.timezone)
        .where(
            members.c.birthday.is_not(None),
            members.c.erased_at.is_(None),
            BIRTH_MONTH == 3,
            BIRTH_DAY.in_([14]),
        )
        .order_by(members.c.member_id)
        .limit(51)
    )
    compiled = query.compile(
        dialect=member.runtime.engine.dialect, compile_kwargs={"literal_binds": True}
    )
    async with member.runtime.engine.connect() as conn:
        await conn.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join((await conn.scalars(text(f"EXPLAIN {compiled}"))).all())
    assert "members_birthday_month_day" in plan, plan
