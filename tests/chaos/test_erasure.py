"""Erasure leaves no personal data behind, in the member database or the notifier's.

The member and notifier services run in-process on a real broker and real databases; the
notifier reads contact data from the member service itself. A member signs up with a
distinctive phone, email and name (with an Idempotency-Key, as clients send one), changes
the email, adds a WeChat identity, writes a complaint quoting their phone and email and
buys at the till by phone; the notifier takes the member events in and sends the welcome
message. Then the member is erased, the notifier takes `member.erased` in, and every column
of every table of both databases (outbox, processed events and idempotency records
included; bytea as UTF-8 bytes, everything else as text) is searched for each value.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import loyalty_member.bootstrap
import pytest_asyncio
from loyalty_notifier.bootstrap import build
from loyalty_notifier.testing import T0, notifier_settings, scripted_providers
from loyalty_shared.clock import FixedClock
from loyalty_shared.testing import TEST_KEY, DatabaseFactory, RunningService, start_service, until
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

PHONE = "13957246810"  # stored as +8613957246810: the search finds both
EMAIL = "zelda.erasure.7731@example.org"
NEW_EMAIL = "zelda.changed.7731@example.org"
NAME = "Zelda Quillfeather"
OPENID = "o-erasure-openid-7731"
PERSONAL = [PHONE, EMAIL, NEW_EMAIL, NAME, OPENID]


@pytest_asyncio.fixture(scope="module")
async def services(
    databases: DatabaseFactory, kafka_bootstrap: str
) -> AsyncIterator[tuple[RunningService, RunningService]]:
    clock = FixedClock(T0)  # noon in Shanghai: no quiet hours hold the welcome message back
    member = await start_service(
        loyalty_member.bootstrap.definition(),
        database_url=await databases.fresh("erasure_member"),
        bootstrap=kafka_bootstrap,
        clock=clock,
    )
    definition, _ = build(
        notifier_settings(member_url="http://member.test", member_api_key=TEST_KEY),
        providers=scripted_providers(),
        member_transport=httpx.ASGITransport(app=member.app),
    )
    notifier = await start_service(
        definition,
        database_url=await databases.fresh("erasure_notifier"),
        bootstrap=kafka_bootstrap,
        clock=clock,
    )
    yield member, notifier
    await notifier.stop()
    await member.stop()


async def where_found(engine: AsyncEngine, needle: str) -> list[str]:
    """Every `table.column` (any schema but the catalogs) whose value holds `needle`."""
    async with engine.connect() as conn:
        columns = (
            await conn.execute(
                text(
                    "SELECT table_schema, table_name, column_name, udt_name "
                    "FROM information_schema.columns JOIN information_schema.tables "
                    "USING (table_schema, table_name) WHERE table_type = 'BASE TABLE' "
                    "AND table_schema NOT IN ('pg_catalog', 'information_schema') "
                    "ORDER BY table_schema, table_name, ordinal_position"
                )
            )
        ).all()
        found = []
        for schema, table, column, udt in columns:
            ident = f'"{schema}"."{table}"'
            value = f'"{column}"'
            if udt == "bytea":
                condition = f"position(convert_to(:needle, 'UTF8') in {value}) > 0"
            else:
                condition = f"position(:needle in CAST({value} AS text)) > 0"
            hits = await conn.scalar(
                text(f"SELECT count(*) FROM {ident} WHERE {condition}"),
                {"needle": needle},
            )
            if hits:
                found.append(f"{table}.{column} ({hits} rows)")
        return found


async def personal_data_in(engine: AsyncEngine) -> dict[str, list[str]]:
    return {needle: places for needle in PERSONAL if (places := await where_found(engine, needle))}


async def test_erasure_removes_personal_data_from_member_and_notifier(services):
    member, notifier = services

    sign_up = {
        "phone": PHONE,
        "email": EMAIL,
        "name": NAME,
        "locale": "en",
        "consents": {"email": True, "sms": True},
    }
    signed_up = await member.client.post(
        "/v1/members", json=sign_up, headers={"Idempotency-Key": "erasure-signup-1"}
    )
    assert signed_up.status_code == 201, signed_up.text
    member_id = signed_up.json()["member_id"]
    changes: list[tuple[str, str, dict[str, Any]]] = [
        ("PATCH", f"/v1/members/{member_id}", {"email": NEW_EMAIL}),
        (
            "POST",
            f"/v1/members/{member_id}/identities",
            {"kind": "wechat_openid", "value": OPENID},
        ),
        (
            "POST",
            "/v1/complaints",
            {
                "member_id": member_id,
                "subject": f"{NAME} wants a call back",
                "description": f"Call {PHONE} or write to {EMAIL}.",
            },
        ),
        (
            "POST",
            "/v1/orders",
            {
                "channel": "pos",
                "external_id": "TILL-ERASE-1",
                "phone": PHONE,
                "status": "paid",
                "currency": "CNY",
                "total_minor": 5900,
                "paid_minor": 5900,
                "lines": [
                    {"sku": "TEA-01", "category": "tea", "quantity": 1, "unit_price_minor": 5900}
                ],
            },
        ),
    ]
    for number, (method, path, body) in enumerate(changes):
        response = await member.client.request(
            method, path, json=body, headers={"Idempotency-Key": f"erasure-{number}"}
        )
        assert response.status_code < 300, (path, response.text)

    # The notifier takes the sign-up in and sends the welcome message with the contact data
    # it asked the member service for.
    async def welcomed() -> list[dict[str, Any]]:
        deliveries = await notifier.client.get("/v1/deliveries", params={"member_id": member_id})
        return [d for d in deliveries.json()["items"] if d["event_type"] == "member.registered"]

    await until(welcomed, "the notifier's deliveries of the welcome message", 60.0)
    dispatched = await notifier.client.post(
        "/v1/admin/jobs/dispatch/run", json={"as_of": T0.isoformat()}
    )
    assert dispatched.status_code == 200, dispatched.text
    inbox = (await notifier.client.get(f"/v1/members/{member_id}/inbox")).json()["items"]
    assert inbox, "the welcome message is in the inbox"
    before = await personal_data_in(member.runtime.engine)
    assert set(before) == set(PERSONAL), before  # the search finds what is there

    erased = await member.client.delete(f"/v1/members/{member_id}")
    assert erased.status_code == 204, erased.text

    async def notifier_forgot() -> bool:
        preferences = await notifier.client.get(f"/v1/members/{member_id}/preferences")
        return bool(preferences.json().get("erased"))

    await until(notifier_forgot, "the notifier to take member.erased in", 60.0)

    left = {
        "member": await personal_data_in(member.runtime.engine),
        "notifier": await personal_data_in(notifier.runtime.engine),
    }
    assert left == {"member": {}, "notifier": {}}, f"personal data left after erasure: {left}"
    # The member is still there, under its id, with nothing personal.
    body = (await member.client.get(f"/v1/members/{member_id}")).json()
    assert body["erased_at"] is not None and body["phone"] is None
    # A retry of the sign-up's Idempotency-Key no longer replays the erased member: it is a
    # new request, and the phone is free again.
    retried = await member.client.post(
        "/v1/members", json=sign_up, headers={"Idempotency-Key": "erasure-signup-1"}
    )
    assert "idempotent-replayed" not in retried.headers
    assert retried.status_code == 201 and retried.json()["member_id"] != member_id
