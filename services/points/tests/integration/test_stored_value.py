"""Stored value on the ledger engine: top-ups with bonus, spends, refunds, never overdrawn."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime

import loyalty_points.bootstrap
import pytest_asyncio
from loyalty_shared.clock import FixedClock
from loyalty_shared.events import make_event
from loyalty_shared.events.members import MemberRegistered
from loyalty_shared.kafka import apply_events
from loyalty_shared.testing import DatabaseFactory, outbox_events, start_service
from sqlalchemy import text

T0 = datetime(2026, 5, 1, 2, 0, tzinfo=UTC)
_ids = itertools.count(1)


@pytest_asyncio.fixture(scope="module")
async def points(databases: DatabaseFactory):
    service = await start_service(
        loyalty_points.bootstrap.definition(),
        database_url=await databases.fresh("value_points"),
        bootstrap="127.0.0.1:9",
        background=False,
        clock=FixedClock(T0),
    )
    yield service
    await service.stop()


async def new_member(points) -> str:
    """A member the points service knows: its member.registered was applied."""
    member_id = f"sv{next(_ids):05d}"
    event = make_event(
        "member.registered",
        MemberRegistered(
            member_id=member_id,
            card_no="8000000000000000",
            referral_code="ABCDEFGH",
            registered_at=T0,
        ),
        subject=member_id,
        source="test",
        time=T0,
    )
    runtime = points.runtime
    async with runtime.transaction() as conn:
        await apply_events(
            conn, runtime.consumer_group, runtime.definition.handlers(runtime), [event]
        )
    return member_id


async def test_top_up_with_bonus_spend_and_refund(points):
    member = await new_member(points)
    response = await points.client.post(
        f"/v1/stored-value/{member}/top-ups",
        json={"external_id": f"pay-{member}", "amount_minor": 10000},
    )
    assert response.status_code == 201, response.text
    assert response.json()["bonus_minor"] == 1000 and response.json()["balance_minor"] == 11000
    # The till retries: the same external_id answers the first top-up and adds nothing.
    again = await points.client.post(
        f"/v1/stored-value/{member}/top-ups",
        json={"external_id": f"pay-{member}", "amount_minor": 10000},
    )
    assert again.status_code == 200 and again.json()["top_up_id"] == response.json()["top_up_id"]
    small = await points.client.post(
        f"/v1/stored-value/{member}/top-ups",
        json={"external_id": f"pay2-{member}", "amount_minor": 5000},
    )
    assert small.json()["bonus_minor"] == 0

    spent = await points.client.post(
        f"/v1/stored-value/{member}/spends",
        json={"amount_minor": 12000, "reason": "order", "order_id": "o"},
    )
    assert spent.status_code == 201 and spent.json()["balance_minor"] == 4000
    too_much = await points.client.post(
        f"/v1/stored-value/{member}/spends", json={"amount_minor": 4001, "reason": "order"}
    )
    assert too_much.status_code == 422 and too_much.json()["code"] == "insufficient_balance"

    refund = await points.client.post(f"/v1/stored-value/spends/{spent.json()['spend_id']}/refund")
    assert refund.status_code == 200 and refund.json()["balance_minor"] == 16000
    twice = await points.client.post(f"/v1/stored-value/spends/{spent.json()['spend_id']}/refund")
    assert twice.status_code == 409 and twice.json()["code"] == "spend_refunded"

    body = (await points.client.get(f"/v1/stored-value/{member}")).json()
    assert body == {
        "member_id": member,
        "currency": "CNY",
        "balance_minor": 16000,
        "lifetime_topped_up_minor": 15000,  # money paid in: 10000 + 5000
        "lifetime_bonus_minor": 1000,  # reported apart (contract §5)
        "lifetime_spent_minor": 0,
    }
    lines = (await points.client.get(f"/v1/stored-value/{member}/statement")).json()["items"]
    assert sorted(line["rule"] for line in lines) == sorted(
        ["top_up", "top_up_bonus", "top_up", "redemption", "redemption"]
    )
    assert sum(line["amount_minor"] for line in lines) == 16000
    types = [
        e["type"]
        for e in await outbox_events(points.runtime, key=member)
        if e["type"].startswith("stored_value.")
    ]
    assert types == [
        "stored_value.topped_up",
        "stored_value.topped_up",
        "stored_value.spent",
        "stored_value.refunded",
    ]
    # Stored value is not points: the account holds just the signup bonus.
    account = (await points.client.get(f"/v1/accounts/{member}")).json()
    assert account["available"] == 100


async def test_lifetime_topped_up_counts_money_paid_in_and_the_bonus_apart(points):
    member = await new_member(points)
    paid, bonus = 0, 0
    for n, amount in enumerate((44999, 30000, 999)):
        response = await points.client.post(
            f"/v1/stored-value/{member}/top-ups",
            json={"external_id": f"life-{member}-{n}", "amount_minor": amount},
        )
        assert response.status_code == 201, response.text
        paid, bonus = paid + amount, bonus + response.json()["bonus_minor"]
    assert paid == 75998 and bonus > 0  # whatever the bonus rule, its money is not paid in
    spent = await points.client.post(
        f"/v1/stored-value/{member}/spends", json={"amount_minor": 5000, "reason": "order"}
    )
    assert spent.status_code == 201, spent.text
    body = (await points.client.get(f"/v1/stored-value/{member}")).json()
    assert body["lifetime_topped_up_minor"] == 75998
    assert body["lifetime_bonus_minor"] == bonus
    assert body["lifetime_spent_minor"] == 5000
    assert body["balance_minor"] == 75998 + bonus - 5000
    nobody = (await points.client.get(f"/v1/stored-value/{await new_member(points)}")).json()
    assert (nobody["lifetime_topped_up_minor"], nobody["lifetime_bonus_minor"]) == (0, 0)
    schema = (await points.client.get("/openapi.json")).json()["components"]["schemas"]
    assert "lifetime_bonus_minor" in schema["BalancePublic"]["required"]


async def test_ledger_and_statement_page_and_refuse_cursors_they_did_not_hand_out(points):
    """Contract §3: a cursor the service did not hand out is a 422, never a first page."""
    member = await new_member(points)
    for n in range(3):
        await points.client.post(
            f"/v1/stored-value/{member}/top-ups",
            json={"external_id": f"page-{member}-{n}", "amount_minor": 100 + n},
        )
        adjusted = await points.client.post(
            f"/v1/accounts/{member}/adjustments", json={"points": 10 + n, "reason": "paging"}
        )
        assert adjusted.status_code in (200, 201), adjusted.text
    for url in (f"/v1/accounts/{member}/ledger", f"/v1/stored-value/{member}/statement"):
        everything = (await points.client.get(url, params={"limit": 500})).json()
        seen, cursor = [], None
        while True:
            page = await points.client.get(
                url, params={"limit": 2, **({"cursor": cursor} if cursor else {})}
            )
            assert page.status_code == 200, page.text
            seen += page.json()["items"]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
        assert seen == everything["items"] and len(seen) >= 3
        first = (await points.client.get(url, params={"limit": 1})).json()
        for foreign in (
            everything["items"][0]["entry_id"],  # an entry id: once read as "after this entry"
            "zzzzzzzzzzzzzzzzzzzzzzzzzz",
            "%%%",
            first["next_cursor"][:-2],
        ):
            response = await points.client.get(url, params={"cursor": foreign})
            assert response.status_code == 422, (url, foreign, response.text)
            body = response.json()
            assert body["code"] == "validation_error"
            assert [e["loc"] for e in body["errors"]] == [["query", "cursor"]]


async def test_concurrent_spends_never_overdraw(points):
    member = await new_member(points)
    await points.client.post(
        f"/v1/stored-value/{member}/top-ups",
        json={"external_id": f"pay-{member}", "amount_minor": 5000},
    )
    responses = await asyncio.gather(
        *[
            points.client.post(
                f"/v1/stored-value/{member}/spends", json={"amount_minor": 1000, "reason": "coffee"}
            )
            for _ in range(20)
        ]
    )
    assert sorted(r.status_code for r in responses).count(201) == 5
    body = (await points.client.get(f"/v1/stored-value/{member}")).json()
    assert body["balance_minor"] == 0


async def test_top_up_bonus_is_a_rule_and_bad_input_is_refused(points):
    member = await new_member(points)
    changed = await points.client.put(
        "/v1/rules/top_up_bonus",
        json={
            "params": {
                "tiers": [
                    {"min_minor": 10000, "bonus_minor": 1000},
                    {"min_minor": 50000, "bonus_minor": 10000},
                ]
            }
        },
    )
    assert changed.status_code == 200, changed.text
    big = await points.client.post(
        f"/v1/stored-value/{member}/top-ups",
        json={"external_id": f"big-{member}", "amount_minor": 50000},
    )
    assert big.json()["bonus_minor"] == 10000
    for bad in (
        {"external_id": "x", "amount_minor": 0},
        {"external_id": "", "amount_minor": 5},
        {"external_id": "x", "amount_minor": 5, "currency": "USD"},
    ):
        response = await points.client.post(f"/v1/stored-value/{member}/top-ups", json=bad)
        assert response.status_code == 422, bad
    other = await points.client.post(
        f"/v1/stored-value/{await new_member(points)}/top-ups",
        json={"external_id": f"big-{member}", "amount_minor": 50000},
    )
    assert other.status_code == 409 and other.json()["code"] == "top_up_exists"
    stranger = await points.client.post(
        "/v1/stored-value/nobody/top-ups", json={"external_id": "s-1", "amount_minor": 100}
    )
    assert stranger.status_code == 404
    unknown = await points.client.post("/v1/stored-value/spends/nope/refund")
    assert unknown.status_code == 404
    liability = (await points.client.get("/v1/reports/liability")).json()
    assert liability["stored_value"]["outstanding_minor"] >= 60000


async def test_bonus_money_is_spent_after_all_paid_money(points):
    """Contract §5: bonus money is spent after paid money, even a later top-up's paid money."""
    member = await new_member(points)
    for external_id, amount in (("TU-A", 10000), ("TU-B", 20000)):  # bonuses 1000 and 1000
        response = await points.client.post(
            f"/v1/stored-value/{member}/top-ups",
            json={"external_id": f"{external_id}-{member}", "amount_minor": amount},
        )
        assert response.status_code == 201, response.text
    spent = await points.client.post(
        f"/v1/stored-value/{member}/spends", json={"amount_minor": 12000, "reason": "dinner"}
    )
    assert spent.status_code == 201, spent.text
    async with points.runtime.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT rule, sum(remaining) AS left FROM value_lots WHERE member_id = :m "
                "GROUP BY rule"
            ),
            {"m": member},
        )
        left = {r.rule: int(r.left) for r in rows}
    assert left == {"top_up": 18000, "top_up_bonus": 2000}
