"""Orders intake (contract §4): orders, status changes, refunds and the events they emit.

The service runs in-process without its Kafka tasks on one fresh database for the module, with
a fixed clock; the outbox is the record of what it emitted. One test at the end starts a
second instance with its relay and reads `loyalty.orders` from the real broker.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import loyalty_member.bootstrap
import loyalty_member.service_layer.tiers
import orjson
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, TopicPartition
from loyalty_shared.clock import FixedClock
from loyalty_shared.testing import READ_ONLY_AUTH, DatabaseFactory, RunningService, start_service
from sqlalchemy import text

NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)
LINES = [
    {"sku": "SNK-0042", "category": "snacks", "quantity": 3, "unit_price_minor": 1290},
    {"sku": "BEV-0107", "category": "beverages", "quantity": 2, "unit_price_minor": 650},
]

_numbers = itertools.count(1)


def new_phone() -> str:
    return f"137{next(_numbers):08d}"


def new_ref(prefix: str = "POS") -> str:
    return f"{prefix}-{next(_numbers):06d}"


def order_body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "channel": "pos",
        "external_id": new_ref(),
        "store_id": "store-sh-001",
        "status": "paid",
        "currency": "CNY",
        "total_minor": 5170,
        "paid_minor": 4170,
        "lines": LINES,
        "coupon_codes": ["CPN-7H2K-9QX4"],
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not ...}


@pytest_asyncio.fixture(scope="module")
async def member(databases: DatabaseFactory):
    service = await start_service(
        loyalty_member.bootstrap.definition(),
        database_url=await databases.fresh("orders_member"),
        bootstrap="127.0.0.1:9",  # background=False: the broker is never contacted
        clock=FixedClock(NOW),
        background=False,
    )
    yield service
    await service.stop()


@pytest.fixture
def client(member: RunningService):
    return member.client


async def scalar(member: RunningService, sql: str, **params: Any) -> Any:
    async with member.runtime.engine.connect() as conn:
        return await conn.scalar(text(sql), params)


async def execute(member: RunningService, sql: str, **params: Any) -> None:
    async with member.runtime.engine.begin() as conn:
        await conn.execute(text(sql), params)


async def events(member: RunningService, key: str, type_: str | None = None) -> list[dict]:
    """The CloudEvents the service wrote to its outbox for one message key, in order."""
    sql = "SELECT key, type, value FROM outbox WHERE key = :k"
    if type_:
        sql += " AND type = :t"
    async with member.runtime.engine.connect() as conn:
        rows = await conn.execute(text(sql + " ORDER BY seq"), {"k": key, "t": type_})
        found = []
        for row in rows:
            event = orjson.loads(row.value)
            assert event["type"] == row.type
            found.append(event)
    return found


async def snapshot(member: RunningService) -> tuple[int, ...]:
    return (
        await scalar(member, "SELECT count(*) FROM members"),
        await scalar(member, "SELECT count(*) FROM orders"),
        await scalar(member, "SELECT count(*) FROM refunds"),
        await scalar(member, "SELECT count(*) FROM outbox"),
    )


async def sign_up(client, **fields: Any) -> dict:
    response = await client.post("/v1/members", json={"phone": new_phone(), **fields})
    assert response.status_code == 201, response.text
    return response.json()


async def post_order(client, expected: int = 202, **fields: Any) -> dict:
    response = await client.post("/v1/orders", json=order_body(**fields))
    assert response.status_code == expected, response.text
    return response.json()


async def set_status(client, order_id: str, status: str, expected: int = 202, **extra) -> dict:
    response = await client.post(f"/v1/orders/{order_id}/status", json={"status": status, **extra})
    assert response.status_code == expected, response.text
    return response.json()


def assert_problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code, body
    assert body["detail"]
    return body


# ---------------------------------------------------------------------------------------------
# POST /v1/orders
# ---------------------------------------------------------------------------------------------


async def test_a_members_paid_order_is_accepted_with_one_order_paid(client, member):
    buyer = await sign_up(client)
    body = order_body(member_id=buyer["member_id"], occurred_at="2026-11-24T10:15:30+08:00")
    response = await client.post("/v1/orders", json=body)
    assert response.status_code == 202, response.text
    order = response.json()
    assert order["member_id"] == buyer["member_id"]
    assert order["status"] == "paid"
    assert order["member_tier"] == "bronze"
    assert order["lines"] == LINES
    assert order["refunded_total_minor"] == 0

    [paid] = await events(member, buyer["member_id"], "order.paid")
    assert paid["subject"] == buyer["member_id"]
    assert paid["time"] == "2026-11-24T02:15:30Z"  # the business time, not the clock
    assert paid["data"] == {
        "order_id": order["order_id"],
        "channel": "pos",
        "external_id": body["external_id"],
        "store_id": "store-sh-001",
        "member_id": buyer["member_id"],
        "occurred_at": "2026-11-24T02:15:30Z",
        "currency": "CNY",
        "total_minor": 5170,
        "paid_minor": 4170,
        "lines": LINES,
        "coupon_codes": ["CPN-7H2K-9QX4"],
        "member_tier": "bronze",
        "member_tier_multiplier": 1.0,
        "paid_order_count": 1,
    }
    assert [e["type"] for e in await events(member, buyer["member_id"])] == [
        "member.registered",
        "order.paid",
    ]


async def test_a_placed_order_emits_order_placed_only(client, member):
    buyer = await sign_up(client)
    order = await post_order(client, member_id=buyer["member_id"], status="placed")
    assert order["status"] == "placed"
    assert order["paid_at"] is None and order["member_tier"] is None
    [placed] = await events(member, buyer["member_id"], "order.placed")
    assert placed["data"]["order_id"] == order["order_id"]
    assert placed["time"] == "2026-11-24T03:00:00Z"  # no occurred_at: the service clock
    assert await events(member, buyer["member_id"], "order.paid") == []


@pytest.mark.parametrize(
    "written", ["{digits}", "+86{digits}", "+86 {spaced}", "{spaced}", "0086{digits}"]
)
async def test_the_buyer_is_found_by_phone_however_written(client, member, written):
    digits = new_phone()
    buyer = await sign_up(client, phone=digits)
    spaced = f"{digits[:3]} {digits[3:7]} {digits[7:]}"
    phone = written.format(digits=digits, spaced=spaced)
    order = await post_order(client, phone=phone)
    assert order["member_id"] == buyer["member_id"]


async def test_the_buyer_is_found_by_card_number(client, member):
    buyer = await sign_up(client)
    order = await post_order(client, card_no=buyer["card_no"])
    assert order["member_id"] == buyer["member_id"]


async def test_member_id_decides_before_phone_and_card(client, member):
    first, second = await sign_up(client), await sign_up(client)
    order = await post_order(
        client, member_id=first["member_id"], phone=second["phone"], card_no=second["card_no"]
    )
    assert order["member_id"] == first["member_id"]


@pytest.mark.parametrize(
    ("identity", "status", "code"),
    [
        ({"member_id": "01JZZZZZZZZZZZZZZZZZZZZZZZ"}, 422, "unknown_member"),
        ({"card_no": "8000000000000000"}, 422, "unknown_member"),
        ({"phone": "12345"}, 422, "invalid_phone"),
        ({"phone": "not a phone", "enroll_if_unknown": True}, 422, "invalid_phone"),
    ],
)
async def test_an_unknown_buyer_is_refused_and_nothing_changes(
    client, member, identity, status, code
):
    before = await snapshot(member)
    response = await client.post("/v1/orders", json=order_body(**identity))
    assert_problem(response, status, code)
    assert await snapshot(member) == before


async def test_an_erased_member_places_no_orders(client, member):
    buyer = await sign_up(client)
    placed = await post_order(client, member_id=buyer["member_id"], status="placed")
    await execute(
        member,
        "UPDATE members SET phone = NULL, erased_at = :at WHERE member_id = :m",
        at=NOW,
        m=buyer["member_id"],
    )
    before = await snapshot(member)
    for identity in [{"member_id": buyer["member_id"]}, {"card_no": buyer["card_no"]}]:
        response = await client.post("/v1/orders", json=order_body(**identity))
        assert_problem(response, 422, "unknown_member")
    assert await snapshot(member) == before
    # the phone was erased with the member: now it names nobody, so the order is a guest's
    guest = await post_order(client, phone=buyer["phone"])
    assert guest["member_id"] is None
    # an order placed before the erasure may still be paid, under the member_id
    paid = await set_status(client, placed["order_id"], "paid")
    assert paid["member_id"] == buyer["member_id"]


async def test_a_guest_order_has_no_member_and_is_keyed_by_its_id(client, member):
    before = await scalar(member, "SELECT count(*) FROM members")
    order = await post_order(client, channel="online", store_id=...)
    assert order["member_id"] is None
    [paid] = await events(member, order["order_id"])
    assert paid["type"] == "order.paid"
    assert paid["subject"] is None
    assert "member_id" not in paid["data"]
    assert "member_tier" not in paid["data"] and "paid_order_count" not in paid["data"]
    assert await scalar(member, "SELECT count(*) FROM members") == before


async def test_an_unknown_phone_without_enrolment_is_a_guest_order(client, member):
    phone = new_phone()
    order = await post_order(client, phone=phone)
    assert order["member_id"] is None
    assert (
        await scalar(member, "SELECT count(*) FROM members WHERE phone = :p", p="+86" + phone) == 0
    )
    assert len(await events(member, order["order_id"], "order.paid")) == 1


async def test_an_unknown_phone_with_enrolment_signs_the_buyer_up_once(client, member):
    phone = new_phone()
    body = order_body(phone=phone, enroll_if_unknown=True, channel="online")
    first = await client.post("/v1/orders", json=body)
    assert first.status_code == 202, first.text
    member_id = first.json()["member_id"]
    assert member_id is not None

    created = (await client.get(f"/v1/members/{member_id}")).json()
    assert created["phone"] == "+86" + phone
    assert created["channel"] == "online" and created["store_id"] == "store-sh-001"
    assert [e["type"] for e in await events(member, member_id)] == [
        "member.registered",
        "order.paid",
    ]
    # the same order again, and another order with the same phone: still one member
    again = await client.post("/v1/orders", json=body)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    other = await post_order(client, phone=phone, enroll_if_unknown=True)
    assert other["member_id"] == member_id
    assert (
        await scalar(member, "SELECT count(*) FROM members WHERE phone = :p", p="+86" + phone) == 1
    )
    assert [e["type"] for e in await events(member, member_id)] == [
        "member.registered",
        "order.paid",
        "order.paid",
    ]


async def test_concurrent_enrolments_of_one_phone_make_one_member(client, member):
    phone = new_phone()
    responses = await asyncio.gather(
        *(
            client.post("/v1/orders", json=order_body(phone=phone, enroll_if_unknown=True))
            for _ in range(6)
        )
    )
    assert [r.status_code for r in responses] == [202] * 6, [r.text for r in responses]
    member_ids = {r.json()["member_id"] for r in responses}
    assert len(member_ids) == 1
    [member_id] = member_ids
    assert len(await events(member, member_id, "member.registered")) == 1
    paid = await events(member, member_id, "order.paid")
    assert [e["data"]["paid_order_count"] for e in paid] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]  # paid orders of one member are counted one at a time


async def test_the_same_external_id_again_answers_the_first_order(client, member):
    buyer = await sign_up(client)
    body = order_body(member_id=buyer["member_id"])
    first = await client.post("/v1/orders", json=body)
    assert first.status_code == 202, first.text
    before = await snapshot(member)

    for repeat in [
        body,
        {**body, "total_minor": 9999, "paid_minor": 9999},  # the first wins
        {**body, "member_id": ..., "status": "placed"},
    ]:
        response = await client.post(
            "/v1/orders", json={k: v for k, v in repeat.items() if v is not ...}
        )
        assert response.status_code == 200, response.text
        assert response.json() == first.json()
    assert await snapshot(member) == before

    # the same external id from the other channel is another order
    other = await post_order(client, channel="online", external_id=body["external_id"])
    assert other["order_id"] != first.json()["order_id"]


async def test_concurrent_posts_of_one_order_record_it_once(client, member):
    buyer = await sign_up(client)
    body = order_body(member_id=buyer["member_id"])
    responses = await asyncio.gather(*(client.post("/v1/orders", json=body) for _ in range(8)))
    assert sorted(r.status_code for r in responses) == [200] * 7 + [202]
    assert len({r.json()["order_id"] for r in responses}) == 1
    assert len(await events(member, buyer["member_id"], "order.paid")) == 1


async def test_an_idempotency_key_replays_the_first_answer(client, member):
    buyer = await sign_up(client)
    body = order_body(member_id=buyer["member_id"])
    headers = {"Idempotency-Key": "order-" + body["external_id"]}
    first = await client.post("/v1/orders", json=body, headers=headers)
    assert first.status_code == 202, first.text
    before = await snapshot(member)
    again = await client.post("/v1/orders", json=body, headers=headers)
    assert again.status_code == 202
    assert again.json() == first.json()
    reused = await client.post(
        "/v1/orders", json={**body, "external_id": new_ref()}, headers=headers
    )
    assert_problem(reused, 422, "idempotency_key_reused")
    assert await snapshot(member) == before


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"paid_minor": 5171}, "paid_minor"),
        ({"total_minor": -1}, "total_minor"),
        ({"paid_minor": -1}, "paid_minor"),
        ({"total_minor": "5170"}, "total_minor"),
        ({"total_minor": 51.7}, "total_minor"),
        ({"currency": "USD"}, "currency"),
        ({"currency": ...}, "currency"),
        ({"status": "shipped"}, "status"),
        ({"status": ...}, "status"),
        ({"channel": "phone"}, "channel"),
        ({"external_id": ""}, "external_id"),
        ({"external_id": "x" * 129}, "external_id"),
        ({"lines": ...}, "lines"),
        ({"lines": [{**LINES[0], "quantity": 0}]}, "quantity"),
        ({"lines": [{**LINES[0], "unit_price_minor": -1}]}, "unit_price_minor"),
        ({"lines": [{"sku": "A"}]}, "category"),
        ({"lines": [{**LINES[0], "colour": "red"}]}, "colour"),
        ({"coupon_codes": [""]}, "coupon_codes"),
        ({"occurred_at": "2026-11-24T10:00:00"}, "occurred_at"),
        ({"occurred_at": "yesterday"}, "occurred_at"),
        ({"store_id": "s\u0000"}, "store_id"),
        ({"member_id": "x" * 33}, "member_id"),
        ({"enroll_if_unknown": "maybe"}, "enroll_if_unknown"),
        ({"discount": 5}, "discount"),
    ],
)
async def test_bad_orders_are_validation_errors_naming_the_field(client, member, fields, field):
    before = await snapshot(member)
    response = await client.post("/v1/orders", json=order_body(**fields))
    body = assert_problem(response, 422, "validation_error")
    assert any(field in error["loc"] for error in body["errors"]), body["errors"]
    assert await snapshot(member) == before


async def test_occurred_at_more_than_five_minutes_ahead_is_refused(client, member):
    before = await snapshot(member)
    ahead = (NOW + timedelta(minutes=5, seconds=1)).isoformat()
    response = await client.post("/v1/orders", json=order_body(occurred_at=ahead))
    body = assert_problem(response, 422, "validation_error")
    assert body["errors"][0]["loc"] == ["body", "occurred_at"]
    assert await snapshot(member) == before
    # a few minutes of clock skew, and any past (a backlog import), are fine
    skewed = await post_order(client, occurred_at=(NOW + timedelta(minutes=4)).isoformat())
    assert skewed["occurred_at"] == "2026-11-24T03:04:00Z"
    backlog = await post_order(client, occurred_at="2025-01-01T09:00:00+08:00")
    assert backlog["paid_at"] == "2025-01-01T01:00:00Z"
    [paid] = await events(member, backlog["order_id"])
    assert paid["time"] == "2025-01-01T01:00:00Z"


async def test_the_total_is_authoritative_and_a_free_order_may_be_paid(client, member):
    buyer = await sign_up(client)
    # lines add up to 5170; the total says otherwise (shipping), and the discount was 100 %
    order = await post_order(client, member_id=buyer["member_id"], total_minor=5670, paid_minor=0)
    assert (order["total_minor"], order["paid_minor"], order["status"]) == (5670, 0, "paid")
    [paid] = await events(member, buyer["member_id"], "order.paid")
    assert paid["data"]["paid_minor"] == 0
    empty = await post_order(client, lines=[], coupon_codes=...)
    assert empty["lines"] == [] and empty["coupon_codes"] == []


async def test_orders_need_the_events_write_scope(client, member):
    before = await snapshot(member)
    response = await client.post("/v1/orders", json=order_body(), headers=READ_ONLY_AUTH)
    assert_problem(response, 403, "forbidden")
    response = await client.post("/v1/orders", json=order_body(), headers={"Authorization": ""})
    assert_problem(response, 401, "unauthorized")
    assert await snapshot(member) == before


# ---------------------------------------------------------------------------------------------
# Tiers, paid-order counts, referrals
# ---------------------------------------------------------------------------------------------


async def test_order_paid_carries_the_tier_held_before_the_order(client, member, monkeypatch):
    buyer = await sign_up(client)
    member_id = buyer["member_id"]
    await execute(member, "UPDATE members SET tier = 'silver' WHERE member_id = :m", m=member_id)
    calls = []

    async def lift_to_gold(conn, *, member_id, order_id, occurred_at, **_):
        calls.append((member_id, order_id, occurred_at))
        await conn.execute(
            text("UPDATE members SET tier = 'gold' WHERE member_id = :m"), {"m": member_id}
        )
        return "gold"

    monkeypatch.setattr(
        loyalty_member.service_layer.tiers, "upgrade_after_paid_order", lift_to_gold
    )
    lifting = await post_order(client, member_id=member_id)
    assert lifting["member_tier"] == "silver"  # the order that lifts earns at the old tier
    placed = await post_order(client, member_id=member_id, status="placed")
    later = await set_status(client, placed["order_id"], "paid")
    assert later["member_tier"] == "gold"  # the tier when it was paid, not when placed

    paid = await events(member, member_id, "order.paid")
    assert [e["data"]["member_tier"] for e in paid] == ["silver", "gold"]
    assert [e["data"]["paid_order_count"] for e in paid] == [1, 2]
    assert [c[1] for c in calls] == [lifting["order_id"], placed["order_id"]]
    assert calls[0][2] == datetime.fromisoformat(lifting["paid_at"])


async def test_a_referred_members_first_paid_order_qualifies_the_referral_once(client, member):
    referrer = await sign_up(client)
    referred = await sign_up(client, referral_code=referrer["referral_code"])
    placed = await post_order(client, member_id=referred["member_id"], status="placed")
    assert await events(member, referrer["member_id"], "member.referral_qualified") == []

    await set_status(client, placed["order_id"], "paid")
    await post_order(client, member_id=referred["member_id"])
    [qualified] = await events(member, referrer["member_id"], "member.referral_qualified")
    assert qualified["data"]["member_id"] == referrer["member_id"]
    assert qualified["data"]["referred_member_id"] == referred["member_id"]
    assert qualified["data"]["order_id"] == placed["order_id"]
    # the referrer's own orders qualify nobody
    await post_order(client, member_id=referrer["member_id"])
    assert len(await events(member, referrer["member_id"], "member.referral_qualified")) == 1


async def qualifying_orders(member: RunningService, referrer_id: str) -> list[str]:
    """The order each `member.referral_qualified` of a referrer names, in order."""
    found = await events(member, referrer_id, "member.referral_qualified")
    return [e["data"]["order_id"] for e in found]


async def test_a_cancelled_qualifying_order_reopens_the_referral_for_the_next_paid_order(
    client, member
):
    referrer = await sign_up(client)
    referrer_id = referrer["member_id"]
    referred = (await sign_up(client, referral_code=referrer["referral_code"]))["member_id"]
    first = await post_order(client, member_id=referred)
    other = await post_order(client, member_id=referred)
    assert await qualifying_orders(member, referrer_id) == [first["order_id"]]

    # cancelling another order changes nothing
    await set_status(client, other["order_id"], "cancelled")
    await post_order(client, member_id=referred)
    assert await qualifying_orders(member, referrer_id) == [first["order_id"]]

    # cancelling the qualifying order (after payment) reopens the referral, silently
    await set_status(client, first["order_id"], "cancelled")
    assert await qualifying_orders(member, referrer_id) == [first["order_id"]]
    placed = await post_order(client, member_id=referred, status="placed")
    assert await qualifying_orders(member, referrer_id) == [first["order_id"]]
    paid = await set_status(client, placed["order_id"], "paid")
    [_, again] = await events(member, referrer_id, "member.referral_qualified")
    assert again["subject"] == referrer_id
    assert again["data"]["member_id"] == referrer_id
    assert again["data"]["referred_member_id"] == referred
    assert again["data"]["order_id"] == placed["order_id"]
    assert again["data"]["occurred_at"] == paid["paid_at"]

    # the same cancellation again is a no-op: the new qualifying order stands
    await set_status(client, first["order_id"], "cancelled", expected=200)
    await post_order(client, member_id=referred)
    assert await qualifying_orders(member, referrer_id) == [
        first["order_id"],
        placed["order_id"],
    ]


async def test_a_refund_in_full_reopens_the_referral_and_a_partial_one_does_not(client, member):
    referrer = await sign_up(client)
    referrer_id = referrer["member_id"]
    referred = (await sign_up(client, referral_code=referrer["referral_code"]))["member_id"]
    first = await post_order(client, member_id=referred, paid_minor=1000)

    # a partial refund keeps the referral qualified
    assert (await refund(client, first["order_id"], 300)).status_code == 202
    await post_order(client, member_id=referred)
    assert await qualifying_orders(member, referrer_id) == [first["order_id"]]

    # the refund that completes a full refund (over several refunds) reopens it
    assert (await refund(client, first["order_id"], 700)).status_code == 202
    second = await post_order(client, member_id=referred, paid_minor=2000)
    assert await qualifying_orders(member, referrer_id) == [
        first["order_id"],
        second["order_id"],
    ]

    # a full refund in one refund too
    assert (await refund(client, second["order_id"], 2000)).status_code == 202
    third = await post_order(client, member_id=referred)
    qualified = [first["order_id"], second["order_id"], third["order_id"]]
    assert await qualifying_orders(member, referrer_id) == qualified

    # a full refund or a cancellation of an order that no longer qualifies changes nothing
    await set_status(client, first["order_id"], "cancelled")
    fourth = await post_order(client, member_id=referred, paid_minor=500)
    assert (await refund(client, fourth["order_id"], 500)).status_code == 202
    await post_order(client, member_id=referred)
    assert await qualifying_orders(member, referrer_id) == qualified


# ---------------------------------------------------------------------------------------------
# POST /v1/orders/{order_id}/status
# ---------------------------------------------------------------------------------------------


async def test_an_order_goes_from_placed_to_delivered_with_one_event_each(client, member):
    buyer = await sign_up(client)
    member_id = buyer["member_id"]
    order = await post_order(client, member_id=member_id, status="placed", channel="online")
    order_id = order["order_id"]

    paid = await set_status(client, order_id, "paid", occurred_at="2026-11-24T09:30:00+08:00")
    assert (paid["status"], paid["paid_at"]) == ("paid", "2026-11-24T01:30:00Z")
    shipped = await set_status(
        client, order_id, "shipped", carrier="SF Express", tracking_no="SF1402837746512"
    )
    assert shipped["status"] == "shipped"
    delivered = await set_status(client, order_id, "delivered")
    assert delivered["status"] == "delivered"

    emitted = await events(member, member_id)
    assert [e["type"] for e in emitted] == [
        "member.registered",
        "order.placed",
        "order.paid",
        "order.shipped",
        "order.delivered",
    ]
    assert emitted[2]["time"] == "2026-11-24T01:30:00Z"
    assert emitted[2]["data"]["occurred_at"] == "2026-11-24T01:30:00Z"
    assert emitted[3]["data"]["carrier"] == "SF Express"
    assert emitted[3]["data"]["tracking_no"] == "SF1402837746512"
    assert emitted[4]["data"]["external_id"] == order["external_id"]

    # the status it has already: 200, no event
    again = await set_status(client, order_id, "delivered", expected=200)
    assert again == delivered
    assert len(await events(member, member_id)) == len(emitted)


@pytest.mark.parametrize(
    ("steps", "target"),
    [
        ([], "shipped"),
        ([], "delivered"),
        (["paid", "shipped"], "paid"),
        (["paid", "delivered"], "shipped"),
        (["paid", "delivered"], "cancelled"),  # a delivered order is refunded, not cancelled
        (["cancelled"], "paid"),
        (["paid", "cancelled"], "delivered"),
    ],
)
async def test_a_move_the_order_cannot_make_is_409(client, member, steps, target):
    order = await post_order(client, status="placed")
    for status in steps:
        await set_status(client, order["order_id"], status)
    current = steps[-1] if steps else "placed"
    before = await snapshot(member)
    response = await client.post(f"/v1/orders/{order['order_id']}/status", json={"status": target})
    body = assert_problem(response, 409, "invalid_status_transition")
    assert body["order_status"] == current
    assert await snapshot(member) == before
    assert (await client.get(f"/v1/orders/{order['order_id']}")).json()["status"] == current


@pytest.mark.parametrize("previous", ["placed", "paid", "shipped"])
async def test_cancelling_reports_what_had_been_paid(client, member, previous):
    order = await post_order(client, status="placed")
    for status in {"placed": [], "paid": ["paid"], "shipped": ["paid", "shipped"]}[previous]:
        await set_status(client, order["order_id"], status)
    if previous != "placed":
        refund = {"external_id": new_ref("RF"), "amount_minor": 170}
        response = await client.post(f"/v1/orders/{order['order_id']}/refunds", json=refund)
        assert response.status_code == 202, response.text
    cancelled = await set_status(client, order["order_id"], "cancelled", reason="customer")
    assert cancelled["status"] == "cancelled"
    [event] = await events(member, order["order_id"], "order.cancelled")
    assert event["subject"] is None  # a guest order: keyed by the order
    assert event["data"]["previous_status"] == previous
    assert event["data"]["paid_minor"] == (0 if previous == "placed" else 4170)
    assert event["data"]["refunded_total_minor"] == (0 if previous == "placed" else 170)
    assert event["data"]["total_minor"] == 5170
    assert event["data"]["coupon_codes"] == ["CPN-7H2K-9QX4"]
    assert event["data"]["reason"] == "customer"


@pytest.mark.parametrize(
    "payload",
    [
        {"status": "placed"},
        {"status": "refunded"},
        {},
        {"status": "paid", "carrier": "SF"},
        {"status": "shipped", "reason": "why"},
        {"status": "paid", "occurred_at": "2026-11-24T10:00:00"},
        {"status": "paid", "extra": 1},
    ],
)
async def test_bad_status_changes_are_validation_errors(client, member, payload):
    order = await post_order(client, status="placed")
    before = await snapshot(member)
    response = await client.post(f"/v1/orders/{order['order_id']}/status", json=payload)
    assert_problem(response, 422, "validation_error")
    assert await snapshot(member) == before


async def test_a_status_change_in_the_future_is_refused(client, member):
    order = await post_order(client, status="placed")
    ahead = (NOW + timedelta(minutes=6)).isoformat()
    response = await client.post(
        f"/v1/orders/{order['order_id']}/status", json={"status": "paid", "occurred_at": ahead}
    )
    assert_problem(response, 422, "validation_error")
    assert (await client.get(f"/v1/orders/{order['order_id']}")).json()["status"] == "placed"


async def test_the_status_of_an_unknown_order_is_404(client, member):
    response = await client.post(
        "/v1/orders/01JZZZZZZZZZZZZZZZZZZZZZZZ/status", json={"status": "paid"}
    )
    assert_problem(response, 404, "not_found")
    response = await client.post(
        "/v1/orders/01JZZZZZZZZZZZZZZZZZZZZZZZ/refunds",
        json={"external_id": "RF-1", "amount_minor": 1},
    )
    assert_problem(response, 404, "not_found")


# ---------------------------------------------------------------------------------------------
# POST /v1/orders/{order_id}/refunds
# ---------------------------------------------------------------------------------------------


async def refund(client, order_id: str, amount: int, external_id: str | None = None, **extra):
    payload = {"external_id": external_id or new_ref("RF"), "amount_minor": amount, **extra}
    return await client.post(f"/v1/orders/{order_id}/refunds", json=payload)


async def test_a_partial_then_a_full_refund_and_not_a_fen_more(client, member):
    buyer = await sign_up(client)
    order = await post_order(client, member_id=buyer["member_id"], paid_minor=1000)
    order_id = order["order_id"]

    first = await refund(client, order_id, 300, "RF-A", occurred_at="2026-11-23T12:00:00+08:00")
    assert first.status_code == 202, first.text
    assert first.json()["refunded_total_minor"] == 300
    assert first.json()["order_id"] == order_id
    second = await refund(client, order_id, 700, "RF-B")
    assert second.status_code == 202, second.text
    assert (second.json()["refunded_total_minor"], second.json()["paid_minor"]) == (1000, 1000)

    before = await snapshot(member)
    body = assert_problem(await refund(client, order_id, 1, "RF-C"), 422, "refund_exceeds_paid")
    assert body["refundable_minor"] == 0
    assert await snapshot(member) == before

    refunded = await events(member, buyer["member_id"], "order.refunded")
    assert [e["data"]["amount_minor"] for e in refunded] == [300, 700]
    assert [e["data"]["refunded_total_minor"] for e in refunded] == [300, 1000]
    assert [e["data"]["external_id"] for e in refunded] == ["RF-A", "RF-B"]
    assert refunded[0]["data"]["order_external_id"] == order["external_id"]
    assert refunded[0]["data"]["refund_id"] == first.json()["refund_id"]
    assert refunded[0]["time"] == "2026-11-23T04:00:00Z"

    detail = (await client.get(f"/v1/orders/{order_id}")).json()
    assert detail["refunded_total_minor"] == 1000
    assert detail["status"] == "paid"  # a refund changes no status
    assert [r["external_id"] for r in detail["refunds"]] == ["RF-A", "RF-B"]


async def test_a_refund_beyond_what_is_left_changes_nothing(client, member):
    order = await post_order(client, paid_minor=1000)
    assert (await refund(client, order["order_id"], 600)).status_code == 202
    before = await snapshot(member)
    body = assert_problem(await refund(client, order["order_id"], 401), 422, "refund_exceeds_paid")
    assert (body["paid_minor"], body["refunded_total_minor"], body["refundable_minor"]) == (
        1000,
        600,
        400,
    )
    assert await snapshot(member) == before
    assert (await refund(client, order["order_id"], 400)).status_code == 202


async def test_the_same_refund_again_answers_the_first_refund(client, member):
    order = await post_order(client, paid_minor=1000)
    first = await refund(client, order["order_id"], 250, "RF-SAME")
    assert first.status_code == 202, first.text
    before = await snapshot(member)
    for amount in [250, 900]:  # the first wins, even with another amount
        again = await refund(client, order["order_id"], amount, "RF-SAME")
        assert again.status_code == 200, again.text
        assert again.json() == first.json()
    assert await snapshot(member) == before
    # and with an Idempotency-Key the first answer comes back as it was
    headers = {"Idempotency-Key": "refund-" + order["order_id"]}
    payload = {"external_id": "RF-KEYED", "amount_minor": 100}
    url = f"/v1/orders/{order['order_id']}/refunds"
    keyed = await client.post(url, json=payload, headers=headers)
    assert keyed.status_code == 202
    replay = await client.post(url, json=payload, headers=headers)
    assert (replay.status_code, replay.json()) == (202, keyed.json())
    assert len(await events(member, order["order_id"], "order.refunded")) == 2


async def test_concurrent_refunds_never_exceed_what_was_paid(client, member):
    buyer = await sign_up(client)
    order = await post_order(client, member_id=buyer["member_id"], paid_minor=1000)
    responses = await asyncio.gather(*(refund(client, order["order_id"], 300) for _ in range(10)))
    accepted = [r for r in responses if r.status_code == 202]
    assert len(accepted) == 3, [r.text for r in responses]
    for response in responses:
        if response.status_code != 202:
            assert_problem(response, 422, "refund_exceeds_paid")
    assert sorted(r.json()["refunded_total_minor"] for r in accepted) == [300, 600, 900]
    detail = (await client.get(f"/v1/orders/{order['order_id']}")).json()
    assert detail["refunded_total_minor"] == 900 and len(detail["refunds"]) == 3
    refunded = await events(member, buyer["member_id"], "order.refunded")
    assert [e["data"]["refunded_total_minor"] for e in refunded] == [300, 600, 900]

    # the same refund posted concurrently is recorded once
    same = await asyncio.gather(
        *(refund(client, order["order_id"], 100, "RF-RACE") for _ in range(5))
    )
    assert sorted(r.status_code for r in same) == [200] * 4 + [202]
    assert len({r.json()["refund_id"] for r in same}) == 1


@pytest.mark.parametrize("status", ["placed", "cancelled"])
async def test_an_unpaid_or_cancelled_order_is_not_refundable(client, member, status):
    order = await post_order(client, status="placed")
    if status == "cancelled":
        await set_status(client, order["order_id"], "cancelled")
    before = await snapshot(member)
    assert_problem(await refund(client, order["order_id"], 1), 409, "order_not_refundable")
    assert await snapshot(member) == before


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"external_id": "RF-1", "amount_minor": 0}, "amount_minor"),
        ({"external_id": "RF-1", "amount_minor": -5}, "amount_minor"),
        ({"external_id": "RF-1", "amount_minor": "5"}, "amount_minor"),
        ({"external_id": "RF-1"}, "amount_minor"),
        ({"amount_minor": 5}, "external_id"),
        ({"external_id": "", "amount_minor": 5}, "external_id"),
        ({"external_id": "RF-1", "amount_minor": 5, "occurred_at": "2026-11-24"}, "occurred_at"),
        ({"external_id": "RF-1", "amount_minor": 5, "reason": "x"}, "reason"),
    ],
)
async def test_bad_refunds_are_validation_errors(client, member, payload, field):
    order = await post_order(client)
    before = await snapshot(member)
    response = await client.post(f"/v1/orders/{order['order_id']}/refunds", json=payload)
    body = assert_problem(response, 422, "validation_error")
    assert any(field in error["loc"] for error in body["errors"]), body["errors"]
    assert await snapshot(member) == before


async def test_a_refund_in_the_future_is_refused(client, member):
    order = await post_order(client)
    before = await snapshot(member)
    ahead = (NOW + timedelta(hours=1)).isoformat()
    response = await refund(client, order["order_id"], 5, occurred_at=ahead)
    assert_problem(response, 422, "validation_error")
    assert await snapshot(member) == before


# ---------------------------------------------------------------------------------------------
# Reads
# ---------------------------------------------------------------------------------------------


async def test_reading_an_order(client, member):
    order = await post_order(client)
    response = await client.get(f"/v1/orders/{order['order_id']}", headers=READ_ONLY_AUTH)
    assert response.status_code == 200, response.text
    detail = response.json()
    assert {k: v for k, v in detail.items() if k != "refunds"} == order
    assert detail["refunds"] == []
    assert_problem(await client.get("/v1/orders/nope"), 404, "not_found")


async def test_a_members_orders_page_by_page_newest_first(client, member):
    buyer = await sign_up(client)
    member_id = buyer["member_id"]
    posted = []
    for day in range(1, 6):
        at = f"2026-11-{day:02d}T12:00:00+08:00"
        posted.append(await post_order(client, member_id=member_id, occurred_at=at))
    await post_order(client)  # somebody else's

    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        response = await client.get(
            f"/v1/members/{member_id}/orders", params=params, headers=READ_ONLY_AUTH
        )
        assert response.status_code == 200, response.text
        page = response.json()
        seen += page["items"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert [o["order_id"] for o in seen] == [o["order_id"] for o in reversed(posted)]

    everything = (await client.get(f"/v1/members/{member_id}/orders")).json()
    assert len(everything["items"]) == 5 and everything["next_cursor"] is None


@pytest.mark.parametrize(
    "params", [{"limit": 0}, {"limit": 501}, {"limit": "many"}, {"cursor": "garbage!"}]
)
async def test_bad_list_parameters_are_validation_errors(client, member, params):
    buyer = await sign_up(client)
    response = await client.get(f"/v1/members/{buyer['member_id']}/orders", params=params)
    assert_problem(response, 422, "validation_error")


async def test_the_orders_of_an_unknown_member_are_404(client, member):
    response = await client.get("/v1/members/01JZZZZZZZZZZZZZZZZZZZZZZZ/orders")
    assert_problem(response, 404, "not_found")


# ---------------------------------------------------------------------------------------------
# Over the real broker
# ---------------------------------------------------------------------------------------------


async def test_order_paid_reaches_the_orders_topic_keyed_by_the_member(
    databases: DatabaseFactory, kafka_bootstrap: str
):
    service = await start_service(
        loyalty_member.bootstrap.definition(),
        database_url=await databases.fresh("orders_relay"),
        bootstrap=kafka_bootstrap,
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    try:
        buyer = await sign_up(service.client)
        order = await post_order(service.client, member_id=buyer["member_id"])
        await consumer.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        partitions: list[TopicPartition] = []
        while True:
            assert loop.time() < deadline, "order.paid did not reach loyalty.orders"
            if not partitions:
                await consumer.topics()
                ids = consumer.partitions_for_topic("loyalty.orders") or set()
                partitions = [TopicPartition("loyalty.orders", p) for p in sorted(ids)]
                if not partitions:
                    await asyncio.sleep(0.1)
                    continue
                consumer.assign(partitions)
                await consumer.seek_to_beginning(*partitions)
            batches = await consumer.getmany(timeout_ms=300)
            found = [
                record
                for batch in batches.values()
                for record in batch
                if orjson.loads(record.value)["data"]["order_id"] == order["order_id"]
            ]
            if found:
                break
        [record] = found
        event = orjson.loads(record.value)
        assert event["type"] == "order.paid"
        assert record.key == buyer["member_id"].encode()
        assert event["subject"] == buyer["member_id"]
        assert event["data"]["member_tier"] == "bronze"
    finally:
        await consumer.stop()
        await service.stop()
