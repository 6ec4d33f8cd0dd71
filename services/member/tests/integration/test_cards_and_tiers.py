"""Cards, card plans and tiers on the member service (contract §4), against a real database.

The service runs in-process without its Kafka tasks and with a fixed clock. Orders are written
straight into the `orders` table (orders intake is its own slice); tier upgrades are driven
through `upgrade_after_paid_order` in a transaction as orders intake calls it, and the points
consumer through `apply_events` with constructed events, so no broker is needed. Tests that
change the ladder or count every member run on a service of their own.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import loyalty_member.bootstrap
import orjson
import pytest_asyncio
from loyalty_member.domain.members import luhn_check_digit
from loyalty_member.entrypoints.events import handlers as member_handlers
from loyalty_member.service_layer.tiers import load_ladder, upgrade_after_paid_order
from loyalty_shared.clock import FixedClock
from loyalty_shared.events import make_event
from loyalty_shared.events.points import LedgerPortion, PointsCredited, PointsReversed
from loyalty_shared.kafka import apply_events
from loyalty_shared.testing import READ_ONLY_AUTH, DatabaseFactory, RunningService, start_service
from sqlalchemy import text
from ulid import ULID

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
DEFAULT_LADDER = {
    "metric": "spend_365d",
    "tiers": [
        {"code": "bronze", "name": "Bronze", "threshold": 0, "points_multiplier": 1.0},
        {"code": "silver", "name": "Silver", "threshold": 100000, "points_multiplier": 1.2},
        {"code": "gold", "name": "Gold", "threshold": 500000, "points_multiplier": 1.5},
    ],
}
_phones = itertools.count(1)
_orders = itertools.count(1)


async def start(databases: DatabaseFactory, prefix: str) -> RunningService:
    return await start_service(
        loyalty_member.bootstrap.definition(),
        database_url=await databases.fresh(prefix),
        bootstrap="127.0.0.1:9",  # background=False: the broker is never contacted
        clock=FixedClock(NOW),
        background=False,
    )


@pytest_asyncio.fixture(scope="module")
async def member(databases: DatabaseFactory):
    service = await start(databases, "cards_tiers")
    yield service
    await service.stop()


@pytest_asyncio.fixture
async def own_member(databases: DatabaseFactory):
    """A service on a database of its own, for tests that change the ladder or count members."""
    service = await start(databases, "tiers_own")
    yield service
    await service.stop()


def clock(service: RunningService) -> FixedClock:
    return service.runtime.clock  # type: ignore[return-value]


async def new_member(service: RunningService) -> str:
    response = await service.client.post("/v1/members", json={"phone": f"137{next(_phones):08d}"})
    assert response.status_code == 201, response.text
    return response.json()["member_id"]


async def sql(service: RunningService, statement: str, **params):
    async with service.runtime.engine.begin() as conn:
        result = await conn.execute(text(statement), params)
        return result.all() if result.returns_rows else []


async def paid_order(
    service: RunningService,
    member_id: str,
    paid_minor: int,
    paid_at: datetime,
    *,
    refunded_minor: int = 0,
    status: str = "paid",
) -> str:
    """An order as orders intake stores it, then the tier evaluation it runs when it is paid."""
    order_id = str(ULID())
    await sql(
        service,
        "INSERT INTO orders (order_id, channel, external_id, member_id, status, currency, "
        "total_minor, paid_minor, refunded_minor, lines, coupon_codes, occurred_at, paid_at, "
        "created_at, updated_at) VALUES (:id, 'pos', :ext, :m, :status, 'CNY', :paid, :paid, "
        ":refunded, CAST('[]' AS jsonb), CAST('[]' AS jsonb), :at, :at, :at, :at)",
        id=order_id,
        ext=f"T-{next(_orders)}",
        m=member_id,
        status=status,
        paid=paid_minor,
        refunded=refunded_minor,
        at=paid_at,
    )
    return order_id


async def evaluate(service: RunningService, member_id: str, order_id: str, at: datetime):
    async with service.runtime.transaction() as conn:
        current = await conn.scalar(
            text("SELECT tier FROM members WHERE member_id = :m FOR UPDATE"), {"m": member_id}
        )
        return await upgrade_after_paid_order(
            conn,
            member_id=member_id,
            current=current,
            order_id=order_id,
            occurred_at=at,
            now=service.runtime.clock.now(),
            ladder=await load_ladder(conn),
        )


async def events(service: RunningService, member_id: str, event_type: str) -> list[dict]:
    rows = await sql(
        service,
        "SELECT value FROM outbox WHERE key = :k AND type = :t ORDER BY seq",
        k=member_id,
        t=event_type,
    )
    return [orjson.loads(r.value) for r in rows]


async def tier_of(service: RunningService, member_id: str) -> str:
    return (await sql(service, "SELECT tier FROM members WHERE member_id = :m", m=member_id))[0][0]


def problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code, body
    return body


# ---------------------------------------------------------------------------------------------
# Tier upgrades on paid orders
# ---------------------------------------------------------------------------------------------


async def test_an_order_reaching_silver_upgrades_once(member):
    member_id = await new_member(member)
    small = await paid_order(member, member_id, 99_999, NOW - timedelta(days=30))
    assert await evaluate(member, member_id, small, NOW - timedelta(days=30)) is None
    assert await events(member, member_id, "member.tier_changed") == []

    order = await paid_order(member, member_id, 1, NOW)  # exactly 100000 in the window
    assert await evaluate(member, member_id, order, NOW) == "silver"
    assert await tier_of(member, member_id) == "silver"
    (changed,) = await events(member, member_id, "member.tier_changed")
    assert changed["subject"] == member_id
    assert changed["data"] == {
        "member_id": member_id,
        "old_tier": "bronze",
        "new_tier": "silver",
        "reason": "upgrade",
        "points_multiplier": 1.2,
        "qualifying_spend_minor": 100_000,
        "metric": "spend_365d",
        "metric_value": 100_000,
        "currency": "CNY",
        "order_id": order,
        "occurred_at": "2026-11-26T12:00:00Z",
    }
    (issued,) = await events(member, member_id, "member.card_issued")
    assert issued["data"]["plan_code"] == "tier-silver"
    assert issued["data"]["plan_kind"] == "tier"
    assert issued["data"]["action"] == "issued"
    assert issued["data"]["benefits"]["points_multiplier"] == 1.2

    # The same evaluation again changes nothing and emits nothing.
    assert await evaluate(member, member_id, order, NOW) is None
    assert len(await events(member, member_id, "member.tier_changed")) == 1
    assert len(await events(member, member_id, "member.card_issued")) == 1

    cards = (await member.client.get(f"/v1/members/{member_id}/cards")).json()["items"]
    assert [c["plan_code"] for c in cards] == ["free", "tier-silver"]
    assert cards[1]["card_no"] == issued["data"]["card_no"]


async def test_a_big_order_skips_to_gold_and_replaces_the_tier_card(member):
    member_id = await new_member(member)
    first = await paid_order(member, member_id, 150_000, NOW - timedelta(days=2))
    assert await evaluate(member, member_id, first, NOW - timedelta(days=2)) == "silver"
    second = await paid_order(member, member_id, 400_000, NOW)
    assert await evaluate(member, member_id, second, NOW) == "gold"
    changes = await events(member, member_id, "member.tier_changed")
    assert [(e["data"]["old_tier"], e["data"]["new_tier"]) for e in changes] == [
        ("bronze", "silver"),
        ("silver", "gold"),
    ]
    cards = await events(member, member_id, "member.card_issued")
    assert [c["data"]["action"] for c in cards] == ["issued", "replaced"]
    assert cards[0]["data"]["card_no"] == cards[1]["data"]["card_no"]  # one tier card
    rows = await sql(member, "SELECT plan_code FROM cards WHERE member_id = :m", m=member_id)
    assert [r.plan_code for r in rows] == ["tier-gold"]


async def test_refunds_cancellations_and_old_orders_do_not_count(member):
    member_id = await new_member(member)
    await paid_order(member, member_id, 90_000, NOW - timedelta(days=365))  # just out of window
    await paid_order(member, member_id, 90_000, NOW, status="cancelled")
    order = await paid_order(member, member_id, 150_000, NOW, refunded_minor=60_000)
    assert await evaluate(member, member_id, order, NOW) is None  # 90000 net
    progress = (await member.client.get(f"/v1/members/{member_id}/tier")).json()
    assert progress["value"] == 90_000
    assert progress["next_tier"] == {
        "code": "silver",
        "name": "Silver",
        "threshold": 100_000,
        "remaining": 10_000,
    }


async def test_a_backdated_order_is_measured_in_its_own_window(member):
    member_id = await new_member(member)
    long_ago = NOW - timedelta(days=500)
    order = await paid_order(member, member_id, 120_000, long_ago)
    assert await evaluate(member, member_id, order, long_ago) == "silver"
    (changed,) = await events(member, member_id, "member.tier_changed")
    assert changed["time"] == changed["data"]["occurred_at"] == "2025-07-14T12:00:00Z"


# ---------------------------------------------------------------------------------------------
# tier-review
# ---------------------------------------------------------------------------------------------


async def run_review(service: RunningService, as_of: datetime) -> dict:
    response = await service.client.post(
        "/v1/admin/jobs/tier-review/run", json={"as_of": as_of.isoformat()}
    )
    assert response.status_code == 200, response.text
    return response.json()["counts"]


async def test_tier_review_moves_members_straight_down_a_year_later(own_member):
    service = own_member
    gold, steady, bronze = [await new_member(service) for _ in range(3)]
    order = await paid_order(service, gold, 600_000, NOW)
    assert await evaluate(service, gold, order, NOW) == "gold"
    order = await paid_order(service, steady, 120_000, NOW)
    assert await evaluate(service, steady, order, NOW) == "silver"
    await paid_order(service, bronze, 5_000, NOW)

    # The next day every tier still holds: nobody is touched.
    assert await run_review(service, NOW + timedelta(days=1)) == {
        "members_reviewed": 2,
        "downgraded": 0,
        "reassigned": 0,
    }
    # Half a year on, steady buys again and keeps silver; gold's spend is still in the window.
    later = NOW + timedelta(days=200)
    order = await paid_order(service, steady, 100_000, later)
    assert await evaluate(service, steady, order, later) is None

    year_later = NOW + timedelta(days=365)
    assert await run_review(service, year_later) == {
        "members_reviewed": 2,
        "downgraded": 1,
        "reassigned": 0,
    }
    assert await tier_of(service, gold) == "bronze"  # straight down, past silver
    assert await tier_of(service, steady) == "silver"
    changes = await events(service, gold, "member.tier_changed")
    assert changes[-1]["data"]["old_tier"] == "gold"
    assert changes[-1]["data"]["new_tier"] == "bronze"
    assert changes[-1]["data"]["reason"] == "downgrade"
    assert changes[-1]["data"]["qualifying_spend_minor"] == 0
    assert changes[-1]["data"].get("order_id") is None
    assert changes[-1]["time"] == "2027-11-26T12:00:00Z"
    cards = await events(service, gold, "member.card_issued")
    assert cards[-1]["data"]["plan_code"] == "tier-bronze"
    assert cards[-1]["data"]["action"] == "replaced"

    # Run again: gold is on the lowest tier now and is not even read.
    assert await run_review(service, year_later) == {
        "members_reviewed": 1,
        "downgraded": 0,
        "reassigned": 0,
    }
    assert len(await events(service, gold, "member.tier_changed")) == 2


async def test_a_rerun_for_a_past_night_does_not_undo_a_later_upgrade(own_member):
    service = own_member
    member_id = await new_member(service)
    order = await paid_order(service, member_id, 200_000, NOW)
    assert await evaluate(service, member_id, order, NOW) == "silver"
    # As of yesterday the order was not paid yet, but the upgrade came after that night.
    counts = await run_review(service, NOW - timedelta(days=1))
    assert counts == {"members_reviewed": 1, "downgraded": 0, "reassigned": 0}
    assert await tier_of(service, member_id) == "silver"


# ---------------------------------------------------------------------------------------------
# The ladder
# ---------------------------------------------------------------------------------------------


async def test_the_default_ladder(member):
    body = (await member.client.get("/v1/tiers")).json()
    assert body["metric"] == "spend_365d"
    assert [(t["code"], t["threshold"], t["points_multiplier"]) for t in body["tiers"]] == [
        ("bronze", 0, 1.0),
        ("silver", 100_000, 1.2),
        ("gold", 500_000, 1.5),
    ]


async def test_a_broken_ladder_is_refused_and_changes_nothing(member):
    before = (await member.client.get("/v1/tiers")).json()
    bronze = {"code": "bronze", "name": "Bronze", "threshold": 0, "points_multiplier": 1.0}
    cases = [
        ({"metric": "spend_365d", "tiers": []}, ["body", "tiers"]),
        (
            {"metric": "spend_365d", "tiers": [{**bronze, "threshold": 10}]},
            ["body", "tiers", 0, "threshold"],
        ),
        (
            {"metric": "spend_365d", "tiers": [bronze, {**bronze, "code": "a", "threshold": 0}]},
            ["body", "tiers", 1, "threshold"],
        ),
        (
            {"metric": "spend_365d", "tiers": [bronze, {**bronze, "threshold": 5}]},
            ["body", "tiers", 1, "code"],
        ),
        (
            {"metric": "spend_365d", "tiers": [{**bronze, "points_multiplier": 0.5}]},
            ["body", "tiers", 0, "points_multiplier"],
        ),
        ({"metric": "visits", "tiers": [bronze]}, ["body", "metric"]),
        (
            {"metric": "spend_365d", "tiers": [{**bronze, "perks": 1}]},
            ["body", "tiers", 0, "perks"],
        ),
    ]
    for body, loc in cases:
        response = await member.client.put("/v1/tiers", json=body)
        errors = problem(response, 422, "validation_error")["errors"]
        assert loc in [e["loc"] for e in errors], (body, errors)
    assert (await member.client.get("/v1/tiers")).json() == before


async def test_only_admins_set_the_ladder(member):
    response = await member.client.put("/v1/tiers", json=DEFAULT_LADDER, headers=READ_ONLY_AUTH)
    problem(response, 403, "forbidden")


async def test_a_new_ladder_moves_nobody_until_their_next_order(own_member):
    service = own_member
    member_id = await new_member(service)
    order = await paid_order(service, member_id, 30_000, NOW - timedelta(days=1))
    assert await evaluate(service, member_id, order, NOW - timedelta(days=1)) is None
    ladder = {
        "metric": "order_count_365d",
        "tiers": [
            {"code": "member", "name": "Member", "threshold": 0, "points_multiplier": 1.0},
            {
                "code": "regular",
                "name": "Regular",
                "threshold": 2,
                "points_multiplier": 1.1,
                "benefits": {"discount_percent": 5, "free_shipping": True},
            },
        ],
    }
    response = await service.client.put("/v1/tiers", json=ladder)
    assert response.status_code == 200, response.text
    assert await tier_of(service, member_id) == "bronze"  # nobody moved
    plans = (await service.client.get("/v1/card-plans", params={"kind": "tier"})).json()["items"]
    assert {p["code"]: p["active"] for p in plans} == {
        "tier-bronze": False,
        "tier-gold": False,
        "tier-member": True,
        "tier-regular": True,
        "tier-silver": False,
    }
    order = await paid_order(service, member_id, 100, NOW)
    assert await evaluate(service, member_id, order, NOW) == "regular"
    (changed,) = await events(service, member_id, "member.tier_changed")
    assert changed["data"]["reason"] == "manual"  # bronze left the ladder
    assert changed["data"]["metric"] == "order_count_365d"
    assert changed["data"]["metric_value"] == 2
    assert "qualifying_spend_minor" not in changed["data"]
    (issued,) = await events(service, member_id, "member.card_issued")
    assert issued["data"]["benefits"] == {
        "points_multiplier": 1.1,
        "discount_percent": 5,
        "free_shipping": True,
    }


# ---------------------------------------------------------------------------------------------
# Lifetime points from loyalty.points
# ---------------------------------------------------------------------------------------------


def credited(member_id: str, points: int, order_id: str | None = None):
    return make_event(
        "points.credited",
        PointsCredited(
            member_id=member_id,
            entry_id=str(ULID()),
            lot_id=str(ULID()),
            points=points,
            rule="purchase",
            reason="order paid",
            order_id=order_id,
            status="pending",
            available_after=0,
            pending_after=points,
            occurred_at=NOW,
        ),
        subject=member_id,
        source="loyalty/points",
        time=NOW,
    )


def reversed_(member_id: str, points: int, reverses: str = "earn"):
    return make_event(
        "points.reversed",
        PointsReversed(
            member_id=member_id,
            reverses=reverses,
            points=points,
            reason="order refunded",
            entries=[LedgerPortion(entry_id=str(ULID()), lot_id=str(ULID()), points=points)],
            available_after=0,
            pending_after=0,
            occurred_at=NOW,
        ),
        subject=member_id,
        source="loyalty/points",
        time=NOW,
    )


async def consume(service: RunningService, batch) -> int:
    table = member_handlers(service.runtime)
    async with service.runtime.transaction() as conn:
        fresh = await apply_events(conn, service.runtime.consumer_group, table, batch)
    return len(fresh)


async def lifetime(service: RunningService, member_id: str) -> int | None:
    rows = await sql(
        service, "SELECT lifetime_earned FROM member_points WHERE member_id = :m", m=member_id
    )
    return rows[0][0] if rows else None


async def test_points_events_keep_lifetime_points_and_upgrade_on_that_ladder(own_member):
    service = own_member
    a, b = await new_member(service), await new_member(service)
    first = [credited(a, 100), credited(b, 40), credited(a, 50), reversed_(a, 30)]
    assert await consume(service, first) == 4
    assert await consume(service, first) == 0  # redelivered: nothing twice
    assert await lifetime(service, a) == 120
    assert await lifetime(service, b) == 40
    # A cancelled redemption gives points back but earns nothing.
    assert await consume(service, [reversed_(b, 10, reverses="redeem")]) == 1
    assert await lifetime(service, b) == 40
    assert await events(service, a, "member.tier_changed") == []  # spend ladder: no move

    ladder = {
        "metric": "lifetime_points",
        "tiers": [
            {"code": "bronze", "name": "Bronze", "threshold": 0, "points_multiplier": 1.0},
            {"code": "silver", "name": "Silver", "threshold": 1000, "points_multiplier": 1.2},
            {"code": "gold", "name": "Gold", "threshold": 5000, "points_multiplier": 1.5},
        ],
    }
    assert (await service.client.put("/v1/tiers", json=ladder)).status_code == 200
    order_id = str(ULID())
    assert await consume(service, [credited(a, 880, order_id), credited(b, 5000)]) == 2
    assert await tier_of(service, a) == "silver"  # 1000 exactly
    assert await tier_of(service, b) == "gold"
    (changed,) = await events(service, a, "member.tier_changed")
    assert changed["data"]["reason"] == "upgrade"
    assert changed["data"]["metric"] == "lifetime_points"
    assert changed["data"]["metric_value"] == 1000
    assert changed["data"]["order_id"] == order_id
    assert len(await events(service, b, "member.card_issued")) == 1

    # A paid order under this ladder reads the same lifetime points.
    c = await new_member(service)
    await consume(service, [credited(c, 1200)])
    assert await tier_of(service, c) == "silver"
    await consume(service, [reversed_(c, 1200)])
    assert await lifetime(service, c) == 0
    order = await paid_order(service, c, 10**6, NOW)
    assert await evaluate(service, c, order, NOW) is None  # spend does not count here
    assert await run_review(service, NOW) == {
        "members_reviewed": 3,
        "downgraded": 1,
        "reassigned": 0,
    }
    assert await tier_of(service, c) == "bronze"


# ---------------------------------------------------------------------------------------------
# Card plans and paid cards
# ---------------------------------------------------------------------------------------------


async def test_card_plans(member):
    plans = (await member.client.get("/v1/card-plans")).json()["items"]
    free = next(p for p in plans if p["code"] == "free")
    assert free["kind"] == "free" and free["price_minor"] is None

    bad = [
        ({"code": "m1", "name": "Monthly", "kind": "paid", "period": "month"}, "price_minor"),
        ({"code": "m1", "name": "Monthly", "kind": "paid", "price_minor": 900}, "period"),
        ({"code": "s1", "name": "Staff", "kind": "internal", "price_minor": 1}, "price_minor"),
        ({"code": "t1", "name": "Tier", "kind": "tier"}, "kind"),
        ({"code": "tier-x", "name": "X", "kind": "free"}, "code"),
        ({"code": "Bad Code", "name": "X", "kind": "free"}, "code"),
        (
            {"code": "b1", "name": "X", "kind": "free", "benefits": {"discount_percent": 101}},
            "benefits",
        ),
    ]
    for body, field in bad:
        response = await member.client.post("/v1/card-plans", json=body)
        errors = problem(response, 422, "validation_error")["errors"]
        assert field in [e["loc"][1] for e in errors], (body, errors)

    plan = {
        "code": "plus-monthly",
        "name": "Plus (monthly)",
        "kind": "paid",
        "price_minor": 1900,
        "period": "month",
        "benefits": {"points_multiplier": 1.5, "discount_percent": 5, "free_shipping": True},
    }
    response = await member.client.post("/v1/card-plans", json=plan)
    assert response.status_code == 201, response.text
    assert response.json()["benefits"] == plan["benefits"]
    problem(await member.client.post("/v1/card-plans", json=plan), 409, "card_plan_exists")
    assert (await member.client.get("/v1/card-plans/plus-monthly")).json()["price_minor"] == 1900
    problem(await member.client.get("/v1/card-plans/nope"), 404, "not_found")


def refused_cursor(response) -> None:
    """A cursor the list did not hand out (contract §3): 422 at the cursor, not a first page."""
    errors = problem(response, 422, "validation_error")["errors"]
    assert [e["loc"] for e in errors] == [["query", "cursor"]] and errors[0]["msg"]


async def test_card_plans_and_batch_cards_page_and_refuse_foreign_cursors(member):
    for code in ("page-a", "page-b", "page-c"):
        body = {"code": code, "name": code, "kind": "free"}
        assert (await member.client.post("/v1/card-plans", json=body)).status_code in (201, 409)
    everything = (await member.client.get("/v1/card-plans", params={"limit": 500})).json()
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await member.client.get("/v1/card-plans", params=params)).json()
        seen += [p["code"] for p in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [p["code"] for p in everything["items"]] and len(seen) >= 4
    first = (await member.client.get("/v1/card-plans", params={"limit": 1})).json()
    # "free" or "page-a" were once read as "after this code": no cursor was ever either
    for foreign in ("free", "page-a", "zzz", "%%%", first["next_cursor"][:-2], "日本"):
        refused_cursor(await member.client.get("/v1/card-plans", params={"cursor": foreign}))

    batch = (await member.client.post("/v1/card-batches", json={"count": 3, "prefix": "55"})).json()
    url = f"/v1/card-batches/{batch['batch_id']}/cards"
    one = (await member.client.get(url, params={"limit": 2})).json()
    rest = (await member.client.get(url, params={"limit": 2, "cursor": one["next_cursor"]})).json()
    assert [c["card_no"] for c in one["items"] + rest["items"]] == sorted(batch["card_nos"])
    assert rest["next_cursor"] is None
    for foreign in (batch["card_nos"][0], "0"):
        refused_cursor(await member.client.get(url, params={"cursor": foreign}))


async def test_buying_and_renewing_a_paid_card(member):
    plan = {"code": "vip-year", "name": "VIP", "kind": "paid", "price_minor": 19900}
    await member.client.post("/v1/card-plans", json={**plan, "period": "year"})
    member_id = await new_member(member)
    url = f"/v1/members/{member_id}/cards:purchase"

    first = await member.client.post(url, json={"plan_code": "vip-year"})
    assert first.status_code == 201, first.text
    card = first.json()
    assert card["plan_kind"] == "paid" and card["status"] == "active"
    assert card["expires_at"] == "2027-11-26T12:00:00Z"
    assert card["purchase"]["renewal"] is False

    # Renewed a month before it expires: a year from the old expiry, not from now.
    clock(member).set(datetime(2027, 10, 26, 12, 0, tzinfo=UTC))
    try:
        again = await member.client.post(url, json={"plan_code": "vip-year"})
    finally:
        clock(member).set(NOW)
    assert again.status_code == 201, again.text
    assert again.json()["card_no"] == card["card_no"]
    assert again.json()["expires_at"] == "2028-11-26T12:00:00Z"
    assert again.json()["purchase"]["renewal"] is True
    assert again.json()["purchase"]["period_start"] == "2027-11-26T12:00:00Z"

    issued = await events(member, member_id, "member.card_issued")
    assert [e["data"]["action"] for e in issued] == ["issued", "renewed"]
    assert issued[1]["data"] == {
        "member_id": member_id,
        "card_no": card["card_no"],
        "plan_code": "vip-year",
        "plan_kind": "paid",
        "action": "renewed",
        "valid_from": "2026-11-26T12:00:00Z",
        "expires_at": "2028-11-26T12:00:00Z",
        "price_minor": 19900,
        "currency": "CNY",
        "benefits": {"points_multiplier": 1.0, "discount_percent": 0, "free_shipping": False},
        "occurred_at": "2027-10-26T12:00:00Z",
    }
    purchases = await sql(
        member, "SELECT count(*) FROM card_purchases WHERE member_id = :m", m=member_id
    )
    assert purchases[0][0] == 2

    problem(await member.client.post(url, json={"plan_code": "free"}), 422, "wrong_card_plan_kind")
    problem(await member.client.post(url, json={"plan_code": "nope"}), 422, "unknown_card_plan")
    future = (NOW + timedelta(minutes=10)).isoformat()
    problem(
        await member.client.post(url, json={"plan_code": "vip-year", "occurred_at": future}),
        422,
        "validation_error",
    )
    problem(
        await member.client.post("/v1/members/nobody/cards:purchase", json={"plan_code": "free"}),
        404,
        "not_found",
    )
    assert len(await events(member, member_id, "member.card_issued")) == 2


async def test_a_lapsed_card_starts_again_from_the_purchase(member):
    await member.client.post(
        "/v1/card-plans",
        json={
            "code": "one-month",
            "name": "M",
            "kind": "paid",
            "price_minor": 900,
            "period": "month",
        },
    )
    member_id = await new_member(member)
    url = f"/v1/members/{member_id}/cards:purchase"
    headers = {"Idempotency-Key": f"buy-{member_id}"}
    first = await member.client.post(url, json={"plan_code": "one-month"}, headers=headers)
    replay = await member.client.post(url, json={"plan_code": "one-month"}, headers=headers)
    assert replay.status_code == first.status_code == 201
    assert replay.json() == first.json()  # the same key: answered again, bought once
    assert len(await events(member, member_id, "member.card_issued")) == 1

    # Bought again two months after it lapsed, by a till that was offline for a day.
    clock(member).set(datetime(2027, 3, 2, 0, 0, tzinfo=UTC))
    lapsed_at = datetime(2027, 3, 1, 0, 0, tzinfo=UTC)
    try:
        response = await member.client.post(
            url, json={"plan_code": "one-month", "occurred_at": lapsed_at.isoformat()}
        )
    finally:
        clock(member).set(NOW)
    assert response.status_code == 201, response.text
    assert response.json()["valid_from"] == "2027-03-01T00:00:00Z"
    assert response.json()["expires_at"] == "2027-04-01T00:00:00Z"


async def test_internal_cards(member):
    await member.client.post(
        "/v1/card-plans",
        json={
            "code": "staff",
            "name": "Staff",
            "kind": "internal",
            "benefits": {"discount_percent": 20},
        },
    )
    member_id = await new_member(member)
    url = f"/v1/members/{member_id}/cards"
    response = await member.client.post(url, json={"plan_code": "staff"})
    assert response.status_code == 201, response.text
    assert response.json()["benefits"]["discount_percent"] == 20
    assert response.json()["expires_at"] is None
    problem(await member.client.post(url, json={"plan_code": "staff"}), 409, "card_already_issued")
    problem(await member.client.post(url, json={"plan_code": "free"}), 422, "wrong_card_plan_kind")
    (issued,) = await events(member, member_id, "member.card_issued")
    assert issued["data"]["plan_kind"] == "internal"
    cards = (await member.client.get(url)).json()["items"]
    assert [c["plan_code"] for c in cards] == ["free", "staff"]
    problem(await member.client.get("/v1/members/nobody/cards"), 404, "not_found")
    problem(
        await member.client.post("/v1/members/nobody/cards", json={"plan_code": "staff"}),
        404,
        "not_found",
    )
    paths = (await member.client.get("/openapi.json")).json()["paths"]
    assert {"/v1/members/{member_id}/cards:purchase", "/v1/tiers", "/v1/card-batches"} <= set(paths)


# ---------------------------------------------------------------------------------------------
# Physical card batches and binding
# ---------------------------------------------------------------------------------------------


async def test_card_batches_and_binding_once(member):
    response = await member.client.post("/v1/card-batches", json={"count": 20, "prefix": "6200"})
    assert response.status_code == 201, response.text
    batch = response.json()
    numbers = batch["card_nos"]
    assert batch["count"] == len(set(numbers)) == 20
    assert all(len(n) == 16 and n.startswith("6200") for n in numbers)
    summary = (await member.client.get(f"/v1/card-batches/{batch['batch_id']}")).json()
    assert (summary["bound"], summary["unbound"]) == (0, 20)

    alice, bob = await new_member(member), await new_member(member)
    number = numbers[0]
    grouped = " ".join(number[i : i + 4] for i in range(0, 16, 4))
    bound = await member.client.post(f"/v1/members/{alice}/cards:bind", json={"card_no": grouped})
    assert bound.status_code == 200, bound.text
    assert bound.json()["card_no"] == number
    assert bound.json()["plan_code"] == "free" and bound.json()["batch_id"] == batch["batch_id"]
    (issued,) = await events(member, alice, "member.card_issued")
    assert issued["data"]["action"] == "bound" and issued["data"]["card_no"] == number

    again = await member.client.post(f"/v1/members/{alice}/cards:bind", json={"card_no": number})
    assert again.status_code == 200  # hers already: the same answer, no second event
    assert len(await events(member, alice, "member.card_issued")) == 1
    taken = await member.client.post(f"/v1/members/{bob}/cards:bind", json={"card_no": number})
    problem(taken, 409, "card_already_bound")

    wrong_digit = number[:-1] + str((int(number[-1]) + 1) % 10)
    never_made = "629900000000000" + luhn_check_digit("629900000000000")
    for bad in (wrong_digit, never_made, "abc", number[:-1]):
        response = await member.client.post(f"/v1/members/{bob}/cards:bind", json={"card_no": bad})
        problem(response, 422, "invalid_card_no")
    assert await events(member, bob, "member.card_issued") == []

    summary = (await member.client.get(f"/v1/card-batches/{batch['batch_id']}")).json()
    assert (summary["bound"], summary["unbound"]) == (1, 19)
    listed = await member.client.get(
        f"/v1/card-batches/{batch['batch_id']}/cards", params={"status": "bound"}
    )
    assert [c["member_id"] for c in listed.json()["items"]] == [alice]
    page = (
        await member.client.get(f"/v1/card-batches/{batch['batch_id']}/cards", params={"limit": 15})
    ).json()
    assert len(page["items"]) == 15 and page["next_cursor"]

    for body in (
        {"count": 0, "prefix": "1"},
        {"count": 10001, "prefix": "1"},
        {"count": 1, "prefix": "12a"},
        {"count": 1, "prefix": "123456789"},
    ):
        problem(await member.client.post("/v1/card-batches", json=body), 422, "validation_error")
    problem(await member.client.get("/v1/card-batches/nope"), 404, "not_found")


async def test_concurrent_binds_of_one_number_have_one_winner(member):
    batch = (await member.client.post("/v1/card-batches", json={"count": 1, "prefix": "77"})).json()
    (number,) = batch["card_nos"]
    members = [await new_member(member) for _ in range(6)]
    responses = await asyncio.gather(
        *(
            member.client.post(f"/v1/members/{m}/cards:bind", json={"card_no": number})
            for m in members
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 409, 409, 409, 409, 409], [r.text for r in responses]
    winner = next(m for m, r in zip(members, responses, strict=True) if r.status_code == 200)
    rows = await sql(member, "SELECT member_id FROM cards WHERE card_no = :c", c=number)
    assert [r.member_id for r in rows] == [winner]
    outbox = await sql(
        member,
        "SELECT count(*) FROM outbox WHERE type = 'member.card_issued' "
        "AND convert_from(value, 'UTF8')::jsonb -> 'data' ->> 'card_no' = :c",
        c=number,
    )
    assert outbox[0][0] == 1


async def test_a_large_batch(member):
    response = await member.client.post(
        "/v1/card-batches", json={"count": 10000, "prefix": "12345678"}
    )
    assert response.status_code == 201, response.text
    assert len(set(response.json()["card_nos"])) == 10000
