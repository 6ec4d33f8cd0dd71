"""The points ledger over PostgreSQL: order paid → pending → released → redeemed → refunded,
with the balances checked at every step, duplicates changing nothing, and concurrency."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import loyalty_points.bootstrap
import pytest
import pytest_asyncio
from loyalty_shared.clock import FixedClock
from loyalty_shared.events import make_event
from loyalty_shared.events.members import MemberCheckedIn, MemberRegistered, MemberTierChanged
from loyalty_shared.events.orders import OrderCancelled, OrderPaid, OrderRefunded
from loyalty_shared.testing import (
    DatabaseFactory,
    RunningService,
    deliver,
    outbox_events,
    start_service,
)
from sqlalchemy import text

T0 = datetime(2026, 3, 2, 4, 0, tzinfo=UTC)  # 12:00 in Shanghai, not a member day
_ids = itertools.count(1)


@pytest_asyncio.fixture(scope="module")
async def points(databases: DatabaseFactory):
    service = await start_service(
        loyalty_points.bootstrap.definition(),
        database_url=await databases.fresh("ledger_points"),
        bootstrap="127.0.0.1:9",
        background=False,
        clock=FixedClock(T0),
    )
    yield service
    await service.stop()


def new_member() -> str:
    return f"m{next(_ids):06d}"


def registered(member_id: str, at: datetime = T0):
    return make_event(
        "member.registered",
        MemberRegistered(
            member_id=member_id,
            card_no="8000000000000000",
            referral_code="ABCDEFGH",
            registered_at=at,
        ),
        subject=member_id,
        source="test",
        time=at,
    )


def paid(member_id: str, order_id: str, paid_minor: int, at: datetime = T0, tier="bronze"):
    return make_event(
        "order.paid",
        OrderPaid(
            order_id=order_id,
            channel="pos",
            external_id=order_id,
            member_id=member_id,
            occurred_at=at,
            total_minor=paid_minor,
            paid_minor=paid_minor,
            member_tier=tier,
        ),
        subject=member_id,
        source="test",
        time=at,
    )


def refunded(
    member_id: str, order_id: str, amount: int, total: int, paid_minor: int, at: datetime = T0
):
    return make_event(
        "order.refunded",
        OrderRefunded(
            order_id=order_id,
            channel="pos",
            external_id=f"r{next(_ids)}",
            member_id=member_id,
            occurred_at=at,
            refund_id=f"rf{next(_ids)}",
            amount_minor=amount,
            refunded_total_minor=total,
            paid_minor=paid_minor,
        ),
        subject=member_id,
        source="test",
        time=at,
    )


async def balance(service: RunningService, member_id: str) -> tuple[int, int]:
    body = (await service.client.get(f"/v1/accounts/{member_id}")).json()
    return body["available"], body["pending"]


async def run_job(service: RunningService, job: str, as_of: datetime) -> dict:
    response = await service.client.post(
        f"/v1/admin/jobs/{job}/run", json={"as_of": as_of.isoformat()}
    )
    assert response.status_code == 200, response.text
    return response.json()["counts"]


async def ledger_sum_matches(service: RunningService, member_id: str) -> None:
    async with service.runtime.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT a.available, a.pending, "
                    "coalesce(sum(e.points) FILTER (WHERE e.bucket = 'available'), 0) "
                    "AS avail_sum, "
                    "coalesce(sum(e.points) FILTER (WHERE e.bucket = 'pending'), 0) "
                    " - coalesce(sum(e.points) FILTER (WHERE e.kind = 'release'), 0) AS pend_sum "
                    "FROM accounts a LEFT JOIN ledger_entries e USING (member_id) "
                    "WHERE a.member_id = :m GROUP BY a.available, a.pending"
                ),
                {"m": member_id},
            )
        ).one()
    assert (row.available, row.pending) == (row.avail_sum, row.pend_sum)


async def test_order_to_refund_journey(points):
    member = new_member()
    await deliver(points, registered(member))
    assert await balance(points, member) == (100, 0)

    await deliver(points, paid(member, "o-1", 25000))  # 250 points, pending 7 days
    assert await balance(points, member) == (100, 250)

    counts = await run_job(points, "release-pending", T0 + timedelta(days=6))
    assert counts["lots_released"] == 0
    counts = await run_job(points, "release-pending", T0 + timedelta(days=7))
    assert counts["lots_released"] == 1
    assert await balance(points, member) == (350, 0)

    response = await points.client.post(
        "/v1/redemptions", json={"member_id": member, "points": 300, "reason": "tea set"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["available_after"] == 50

    # Refund 200 of 250 yuan: the order keeps 50 points, 200 are taken back; only 50 are
    # left in lots, so 150 become a debt.
    await deliver(points, refunded(member, "o-1", 20000, 20000, 25000))
    assert await balance(points, member) == (-150, 0)
    refused = await points.client.post(
        "/v1/redemptions", json={"member_id": member, "points": 1, "reason": "x"}
    )
    assert refused.status_code == 422 and refused.json()["code"] == "insufficient_points"

    # Cancelling the redemption gives 300 back; the debt takes its 150 first.
    cancel_url = f"/v1/redemptions/{response.json()['redemption_id']}/cancel"
    cancel = await points.client.post(cancel_url)
    assert cancel.status_code == 200 and cancel.json()["available_after"] == 150
    again = await points.client.post(cancel_url)
    assert again.status_code == 409

    # The rest of the refund: the order ends at 0 points.
    await deliver(points, refunded(member, "o-1", 5000, 25000, 25000))
    assert await balance(points, member) == (100, 0)
    await ledger_sum_matches(points, member)

    ledger = (await points.client.get(f"/v1/accounts/{member}/ledger")).json()["items"]
    assert [(e["kind"], e["rule"]) for e in reversed(ledger)][:3] == [
        ("earn", "signup"),
        ("earn", "purchase"),
        ("release", "purchase"),
    ]
    kinds = {e["kind"] for e in ledger}
    assert kinds == {"earn", "release", "redeem", "reverse"}
    emitted = await outbox_events(points.runtime, key=member)
    types = [e["type"] for e in emitted]
    assert types.count("points.credited") == 2 and types.count("points.released") == 1

    assert types.count("points.debited") == 1 and types.count("points.reversed") == 3


async def test_the_same_events_twice_change_nothing(points):
    member = new_member()
    events = [
        registered(member),
        paid(member, "o-dup", 10000),
        refunded(member, "o-dup", 5000, 5000, 10000),
    ]
    await deliver(points, *events)
    first = await balance(points, member)
    await deliver(points, *events)
    await deliver(points, events[1])
    assert await balance(points, member) == first == (100, 50)
    # A second order.paid for the same order (another event id) earns nothing more.
    again = paid(member, "o-dup", 10000)
    await deliver(points, again)
    assert await balance(points, member) == (100, 50)


async def test_a_cancelled_order_reverses_its_pending_points(points):
    member = new_member()
    await deliver(points, registered(member), paid(member, "o-c", 8000))
    assert await balance(points, member) == (100, 80)
    cancelled = make_event(
        "order.cancelled",
        OrderCancelled(
            order_id="o-c",
            channel="online",
            external_id="o-c",
            member_id=member,
            occurred_at=T0,
            previous_status="paid",
            total_minor=8000,
            paid_minor=8000,
        ),
        subject=member,
        source="test",
        time=T0,
    )
    await deliver(points, cancelled)
    assert await balance(points, member) == (100, 0)
    await ledger_sum_matches(points, member)


async def test_the_order_that_lifts_a_tier_earns_at_the_old_one(points):
    member = new_member()
    upgrade = make_event(
        "member.tier_changed",
        MemberTierChanged(
            member_id=member,
            old_tier="bronze",
            new_tier="silver",
            reason="upgrade",
            points_multiplier=1.2,
            occurred_at=T0,
        ),
        subject=member,
        source="test",
        time=T0,
    )
    # The tier change may arrive before the order that caused it (another topic).
    await deliver(points, registered(member), upgrade, paid(member, "o-t1", 10000, tier="bronze"))
    await deliver(points, paid(member, "o-t2", 10000, tier="silver"))
    assert await balance(points, member) == (100, 100 + 120)


async def test_check_in_streak_and_member_day(points):
    member = new_member()
    await deliver(points, registered(member))
    for day in range(1, 8):
        at = T0 + timedelta(days=day)
        await deliver(
            points,
            make_event(
                "member.checked_in",
                MemberCheckedIn(member_id=member, date=at.date(), streak_days=day, occurred_at=at),
                subject=member,
                source="test",
                time=at,
            ),
        )
    assert await balance(points, member) == (100 + 7 * 5 + 20, 0)
    member_day = datetime(2026, 3, 20, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai on the 20th
    await deliver(points, paid(member, "o-md", 10000, at=member_day))
    assert (await balance(points, member))[1] == 200


async def test_expiry_and_notice(points):
    member = new_member()
    await deliver(points, registered(member))
    notice = await run_job(points, "expiry-notice", T0 + timedelta(days=340))
    assert notice["lots"] >= 1
    again = await run_job(points, "expiry-notice", T0 + timedelta(days=341))
    warned = [
        e
        for e in await outbox_events(points.runtime, key=member, event_type="points.expiring_soon")
    ]
    assert len(warned) == 1 and warned[0]["data"]["points"] == 100
    assert again["lots"] == 0 or member not in str(again)
    await run_job(points, "expire", T0 + timedelta(days=365))
    assert await balance(points, member) == (0, 0)
    liability = (await points.client.get("/v1/reports/liability")).json()
    assert any(m["points"] >= 100 for m in liability["expired_by_month"])


async def test_fifty_concurrent_redemptions_against_ten_succeed_ten_times(points):
    member = new_member()
    await deliver(points, registered(member))  # 100 points
    responses = await asyncio.gather(
        *[
            points.client.post(
                "/v1/redemptions", json={"member_id": member, "points": 10, "reason": "concurrency"}
            )
            for _ in range(50)
        ]
    )
    codes = sorted(r.status_code for r in responses)
    assert codes.count(201) == 10 and codes.count(422) == 40
    assert await balance(points, member) == (0, 0)
    await ledger_sum_matches(points, member)


async def test_adjustments_need_a_reason_and_cannot_overdraw(points):
    member = new_member()
    await deliver(points, registered(member))
    granted = await points.client.post(
        f"/v1/accounts/{member}/adjustments",
        json={"points": 50, "reason": "apology for late delivery"},
    )
    assert granted.status_code == 201 and granted.json()["available_after"] == 150
    for bad in ({"points": 5}, {"points": 5, "reason": "  "}, {"points": 0, "reason": "x"}):
        response = await points.client.post(f"/v1/accounts/{member}/adjustments", json=bad)
        assert response.status_code == 422, bad
    overdraw = await points.client.post(
        f"/v1/accounts/{member}/adjustments", json={"points": -151, "reason": "fraud"}
    )
    assert overdraw.status_code == 422 and overdraw.json()["code"] == "insufficient_points"
    assert await balance(points, member) == (150, 0)


async def test_rules_are_data_and_simulation_writes_nothing(points):
    rules = (await points.client.get("/v1/rules")).json()["items"]
    assert {r["code"] for r in rules} >= {"purchase", "member_day", "daily_cap", "signup"}
    bad = await points.client.put("/v1/rules/member_day", json={"params": {"day_of_month": 40}})
    assert bad.status_code == 422
    unknown = await points.client.put("/v1/rules/nope", json={"enabled": False})
    assert unknown.status_code == 404

    member = new_member()
    await deliver(points, registered(member))
    event = {
        "type": "order.paid",
        "data": paid(member, "o-sim", 12345).data.model_dump(mode="json"),
    }
    simulated = await points.client.post("/v1/rules:simulate", json={"event": event})
    assert simulated.status_code == 200, simulated.text
    body = simulated.json()
    assert body["points"] == 123 and body["pending_after"] == 123
    assert body["steps"][0]["rule"] == "purchase"
    assert await balance(points, member) == (100, 0)  # nothing was written

    changed = await points.client.put(
        "/v1/rules/purchase", json={"params": {"points": 2, "per_minor": 100, "pending_days": 0}}
    )
    assert changed.status_code == 200
    try:
        simulated = (await points.client.post("/v1/rules:simulate", json={"event": event})).json()
        assert simulated["points"] == 246 and simulated["available_after"] == 346
    finally:
        await points.client.put(
            "/v1/rules/purchase",
            json={"params": {"points": 1, "per_minor": 100, "pending_days": 7}},
        )


@pytest.mark.parametrize("job", ["release-pending", "expire", "expiry-notice"])
@pytest.mark.parametrize("as_of", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"])
async def test_a_job_run_at_the_ends_of_the_calendar_is_a_422(points, job, as_of):
    """as_of may lie anywhere, but not where its arithmetic leaves the calendar: expiry-notice
    at 9999-12-31 (+ 30 days) was a 500."""
    response = await points.client.post(f"/v1/admin/jobs/{job}/run", json={"as_of": as_of})
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"


async def test_a_tier_card_does_not_pay_the_tier_twice(points):
    from loyalty_shared.events.members import CardBenefits, MemberCardIssued

    member = new_member()
    tier_card = make_event(
        "member.card_issued",
        MemberCardIssued(
            member_id=member,
            card_no="8000000000000018",
            plan_code="tier-silver",
            plan_kind="tier",
            benefits=CardBenefits(points_multiplier=1.2),
            occurred_at=T0,
        ),
        subject=member,
        source="test",
        time=T0,
    )
    paid_card = make_event(
        "member.card_issued",
        MemberCardIssued(
            member_id=member,
            card_no="8000000000000026",
            plan_code="vip-month",
            plan_kind="paid",
            benefits=CardBenefits(points_multiplier=1.1),
            occurred_at=T0,
        ),
        subject=member,
        source="test",
        time=T0,
    )
    await deliver(
        points, registered(member), tier_card, paid(member, "o-tc1", 10000, tier="silver")
    )
    assert await balance(points, member) == (100, 120)  # the tier's 1.2 once, not 1.44
    await deliver(points, paid_card, paid(member, "o-tc2", 10000, tier="silver"))
    assert await balance(points, member) == (100, 120 + 132)  # a paid card's benefit does count


async def test_points_events_keep_the_business_time_of_a_backdated_order(points):
    member = new_member()
    backdated = T0 - timedelta(days=3)  # an offline till imports its backlog
    await deliver(points, registered(member), paid(member, "o-back", 10000, at=backdated))
    [credited] = [
        e
        for e in await outbox_events(points.runtime, key=member, event_type="points.credited")
        if e["data"]["rule"] == "purchase"
    ]
    assert datetime.fromisoformat(credited["time"]) == backdated
    assert datetime.fromisoformat(credited["data"]["occurred_at"]) == backdated
