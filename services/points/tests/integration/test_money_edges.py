"""Where points used to leak (issue "Exact money at every edge"): a referral bonus surviving its
order's cancellation, a card multiplying orders from before it existed, expired points still
spendable until the expire job ran, expiry dates in UTC, erased members' accounts taking money,
and earn entries that did not say how their points were computed."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import loyalty_points.bootstrap
import pytest_asyncio
from loyalty_shared.clock import FixedClock
from loyalty_shared.events import make_event
from loyalty_shared.events.members import (
    CardBenefits,
    MemberCardIssued,
    MemberErased,
    MemberReferralQualified,
    MemberRegistered,
)
from loyalty_shared.events.orders import OrderCancelled, OrderPaid, OrderRefunded
from loyalty_shared.testing import DatabaseFactory, RunningService, deliver, start_service

T0 = datetime(2026, 3, 2, 4, 0, tzinfo=UTC)  # 12:00 in Shanghai, not a member day
_ids = itertools.count(1)


@pytest_asyncio.fixture
async def clock() -> FixedClock:
    return FixedClock(T0)


@pytest_asyncio.fixture
async def points(databases: DatabaseFactory, clock: FixedClock):
    service = await start_service(
        loyalty_points.bootstrap.definition(),
        database_url=await databases.fresh("edges_points"),
        bootstrap="127.0.0.1:9",
        background=False,
        clock=clock,
    )
    yield service
    await service.stop()


def _event(kind: str, data, member_id: str, at: datetime):
    return make_event(kind, data, subject=member_id, source="test", time=at)


def new_member() -> str:
    return f"e{next(_ids):06d}"


def registered(member_id: str, at: datetime = T0, timezone: str = "Asia/Shanghai"):
    data = MemberRegistered(
        member_id=member_id,
        card_no="8000000000000000",
        referral_code="ABCDEFGH",
        registered_at=at,
        timezone=timezone,
    )
    return _event("member.registered", data, member_id, at)


def paid(member_id: str, order_id: str, paid_minor: int, at: datetime = T0, tier="bronze", **kw):
    data = OrderPaid(
        order_id=order_id,
        channel="pos",
        external_id=order_id,
        member_id=member_id,
        occurred_at=at,
        total_minor=paid_minor,
        paid_minor=paid_minor,
        member_tier=tier,
        **kw,
    )
    return _event("order.paid", data, member_id, at)


def cancelled(member_id: str, order_id: str, paid_minor: int, at: datetime = T0):
    data = OrderCancelled(
        order_id=order_id,
        channel="pos",
        external_id=order_id,
        member_id=member_id,
        occurred_at=at,
        previous_status="paid",
        total_minor=paid_minor,
        paid_minor=paid_minor,
    )
    return _event("order.cancelled", data, member_id, at)


def refunded_in_full(member_id: str, order_id: str, paid_minor: int, at: datetime = T0):
    data = OrderRefunded(
        order_id=order_id,
        channel="pos",
        external_id=f"r{next(_ids)}",
        member_id=member_id,
        occurred_at=at,
        refund_id=f"rf{next(_ids)}",
        amount_minor=paid_minor,
        refunded_total_minor=paid_minor,
        paid_minor=paid_minor,
    )
    return _event("order.refunded", data, member_id, at)


def referral(referrer: str, referred: str, order_id: str, at: datetime = T0):
    data = MemberReferralQualified(
        member_id=referrer, referred_member_id=referred, order_id=order_id, occurred_at=at
    )
    return _event("member.referral_qualified", data, referrer, at)


def card(member_id: str, multiplier: float, valid_from: datetime, expires_at: datetime):
    data = MemberCardIssued(
        member_id=member_id,
        card_no=f"C{next(_ids):08d}",
        plan_code="plus",
        plan_kind="paid",
        action="issued",
        valid_from=valid_from,
        expires_at=expires_at,
        benefits=CardBenefits(points_multiplier=multiplier),
        occurred_at=valid_from,
    )
    return _event("member.card_issued", data, member_id, valid_from)


def erased(member_id: str, at: datetime = T0):
    return _event("member.erased", MemberErased(member_id=member_id, occurred_at=at), member_id, at)


async def account(service: RunningService, member_id: str) -> dict:
    response = await service.client.get(f"/v1/accounts/{member_id}")
    assert response.status_code == 200, response.text
    return response.json()


async def ledger(service: RunningService, member_id: str) -> list[dict]:
    response = await service.client.get(f"/v1/accounts/{member_id}/ledger?limit=500")
    assert response.status_code == 200, response.text
    return list(reversed(response.json()["items"]))


async def run_job(service: RunningService, job: str, as_of: datetime) -> dict:
    response = await service.client.post(
        f"/v1/admin/jobs/{job}/run", json={"as_of": as_of.isoformat()}
    )
    assert response.status_code == 200, response.text
    return response.json()["counts"]


async def redeem(service: RunningService, member_id: str, points: int):
    return await service.client.post(
        "/v1/redemptions", json={"member_id": member_id, "points": points, "reason": "gift"}
    )


# --- referrals ---------------------------------------------------------------------------------


async def test_a_referral_bonus_is_reversed_from_pending_when_its_order_is_cancelled(points):
    referrer, referred = new_member(), new_member()
    await deliver(points, registered(referrer), registered(referred))
    await deliver(points, paid(referred, "o-ref-1", 5000), referral(referrer, referred, "o-ref-1"))
    assert (await account(points, referrer))["pending"] == 200
    await deliver(points, cancelled(referred, "o-ref-1", 5000, T0 + timedelta(days=2)))
    after = await account(points, referrer)
    assert (after["available"], after["pending"], after["lifetime_earned"]) == (100, 0, 100)
    entries = await ledger(points, referrer)
    assert [(e["kind"], e["rule"], e["points"]) for e in entries][-1] == (
        "reverse",
        "referral",
        -200,
    )
    # the pending lot holds nothing now: a release gives nothing
    await run_job(points, "release-pending", T0 + timedelta(days=8))
    assert (await account(points, referrer))["available"] == 100


async def test_a_referral_bonus_released_is_taken_back_on_a_full_refund(points):
    referrer, referred = new_member(), new_member()
    await deliver(points, registered(referrer), registered(referred))
    await deliver(points, paid(referred, "o-ref-2", 5000), referral(referrer, referred, "o-ref-2"))
    await run_job(points, "release-pending", T0 + timedelta(days=7))
    assert (await account(points, referrer))["available"] == 300
    assert (await redeem(points, referrer, 250)).status_code == 201
    await deliver(points, refunded_in_full(referred, "o-ref-2", 5000, T0 + timedelta(days=9)))
    after = await account(points, referrer)
    # 50 left of the bonus's lot and the signup's, 200 taken back: a debt of 150
    assert (after["available"], after["pending"]) == (-150, 0)
    # the same cancel afterwards takes nothing more
    await deliver(points, cancelled(referred, "o-ref-2", 5000, T0 + timedelta(days=10)))
    assert (await account(points, referrer))["available"] == -150


async def test_a_referral_that_arrives_after_its_order_was_cancelled_earns_nothing(points):
    referrer, referred = new_member(), new_member()
    await deliver(points, registered(referrer), registered(referred))
    await deliver(points, paid(referred, "o-ref-3", 5000), cancelled(referred, "o-ref-3", 5000))
    await deliver(points, referral(referrer, referred, "o-ref-3"))
    after = await account(points, referrer)
    assert (after["available"], after["pending"], after["lifetime_earned"]) == (100, 0, 100)


# --- cards ---------------------------------------------------------------------------------------


async def test_a_card_multiplies_only_orders_inside_its_validity(points):
    member = new_member()
    start, end = T0, T0 + timedelta(days=30)
    await deliver(
        points, registered(member, T0 - timedelta(days=90)), card(member, 2.0, start, end)
    )
    await deliver(
        points,
        paid(member, "o-card-before", 10000, T0 - timedelta(days=20)),
        paid(member, "o-card-inside", 10000, T0 + timedelta(days=1)),
        paid(member, "o-card-after", 10000, end),
    )
    earned = {
        e["source"]["order_id"]: e["points"]
        for e in await ledger(points, member)
        if e["rule"] == "purchase"
    }
    assert earned == {"o-card-before": 100, "o-card-inside": 200, "o-card-after": 100}


# --- expiry --------------------------------------------------------------------------------------


async def test_expired_points_are_not_available_before_the_expire_job_runs(points, clock):
    member = new_member()
    await deliver(points, registered(member))
    clock.set(T0 + timedelta(days=366))
    body = await account(points, member)
    assert (body["available"], body["expiring"]) == (0, [])
    liability = (await points.client.get("/v1/reports/liability")).json()["points"]
    assert liability["available"] == 0
    refused = await redeem(points, member, 10)
    assert refused.status_code == 422 and refused.json()["code"] == "insufficient_points"
    # the refusal changed nothing; the job books the expiry when it runs
    assert [e["kind"] for e in await ledger(points, member)] == ["earn"]
    assert (await run_job(points, "expire", clock.now()))["lots_expired"] == 1
    assert (await account(points, member))["available"] == 0


async def test_an_order_backdated_past_its_expiry_earns_points_that_are_expired(points, clock):
    member = new_member()
    await deliver(points, registered(member))
    clock.set(T0 + timedelta(days=30))
    await deliver(points, paid(member, "o-ancient", 50000, T0 - timedelta(days=400)))
    body = await account(points, member)
    assert body["available"] == 100 and body["pending"] == 0
    assert body["lifetime_earned"] == 600
    assert [(e["kind"], e["points"]) for e in await ledger(points, member)][-2:] == [
        ("earn", 500),
        ("expire", -500),
    ]
    assert (await redeem(points, member, 101)).status_code == 422


async def test_cancelling_a_redemption_whose_lots_expired_gives_them_back_as_expired(points, clock):
    member = new_member()
    await deliver(points, registered(member))
    taken = await redeem(points, member, 60)
    assert taken.status_code == 201
    clock.set(T0 + timedelta(days=400))
    cancel = await points.client.post(f"/v1/redemptions/{taken.json()['redemption_id']}/cancel")
    assert cancel.status_code == 200, cancel.text
    body = await account(points, member)
    assert (body["available"], body["lifetime_redeemed"]) == (0, 0)
    kinds = [(e["kind"], e["points"]) for e in await ledger(points, member)]
    assert kinds[-1] == ("expire", -100) or kinds[-2:] == [("reverse", 60), ("expire", -60)]
    assert sum(points for _, points in kinds) == 0


async def test_expiring_on_is_the_members_local_date(points):
    member = new_member()
    evening = datetime(2026, 3, 2, 20, 0, tzinfo=UTC)  # 04:00 on the 3rd in Shanghai
    await deliver(points, registered(member, evening))
    expiring = (await account(points, member))["expiring"]
    assert expiring == [{"on": "2027-03-03", "points": 100}]


# --- erasure -------------------------------------------------------------------------------------


async def test_an_erased_members_account_takes_no_new_money(points):
    member = new_member()
    await deliver(points, registered(member))
    await deliver(points, erased(member))
    refused = [
        await redeem(points, member, 10),
        await points.client.post(
            f"/v1/accounts/{member}/adjustments", json={"points": 10, "reason": "goodwill"}
        ),
        await points.client.post(
            f"/v1/stored-value/{member}/top-ups",
            json={"external_id": f"tu-{member}", "amount_minor": 10000, "currency": "CNY"},
        ),
        await points.client.post(
            f"/v1/stored-value/{member}/spends", json={"amount_minor": 1, "reason": "tea"}
        ),
    ]
    for response in refused:
        assert response.status_code == 409, response.text
        assert response.json()["code"] == "member_erased"
    body = await account(points, member)
    assert body["available"] == 100
    assert len(await ledger(points, member)) == 1


# --- the calculation of every earn entry ---------------------------------------------------------


async def test_every_earn_entry_says_how_its_points_were_computed(points):
    member = new_member()
    member_day = datetime(2026, 3, 20, 2, 0, tzinfo=UTC)  # the 20th in Shanghai
    await deliver(points, registered(member, member_day - timedelta(days=1)))
    await deliver(
        points, paid(member, "o-calc", 12345, member_day, tier="silver", member_tier_multiplier=1.2)
    )
    entries = {e["rule"]: e for e in await ledger(points, member) if e["kind"] == "earn"}
    purchase = entries["purchase"]
    assert purchase["points"] == 295
    calculation = purchase["calculation"]
    assert calculation["base_points"] == 123 and calculation["capped_points"] == 0
    factors = {f["kind"]: f["value"] for f in calculation["factors"]}
    assert factors == {"tier": 1.2, "member_day": 2.0}
    assert entries["signup"]["calculation"] == {
        "base_points": 100,
        "factors": [],
        "capped_points": 0,
    }


# --- the ladder ----------------------------------------------------------------------------------


def ladder_changed(multipliers: dict[str, float], at: datetime = T0):
    from loyalty_shared.events.members import (
        TIER_LADDER_KEY,
        LadderTier,
        MemberTierLadderChanged,
    )

    data = MemberTierLadderChanged(
        tiers=[
            LadderTier(code=c, label=c.title(), points_multiplier=m) for c, m in multipliers.items()
        ],
        occurred_at=at,
    )
    return make_event(
        "member.tier_ladder_changed",
        data,
        subject=None,
        key=TIER_LADDER_KEY,
        source="test",
        time=at,
    )


def tier_changed(member_id: str, tier: str, multiplier: float, at: datetime = T0):
    from loyalty_shared.events.members import MemberTierChanged

    data = MemberTierChanged(
        member_id=member_id,
        old_tier="bronze",
        new_tier=tier,
        points_multiplier=multiplier,
        reason="upgrade",
        occurred_at=at,
    )
    return _event("member.tier_changed", data, member_id, at)


async def test_the_rules_show_the_ladder_as_it_stands_now(points):
    member = new_member()
    await deliver(points, registered(member))
    await deliver(points, ladder_changed({"bronze": 1.0, "silver": 1.1, "gold": 2.0}))
    # a tier change of before the ladder (another partition) arrives late: the ladder stands
    await deliver(points, tier_changed(member, "silver", 1.2))

    async def multipliers() -> dict:
        rules = (await points.client.get("/v1/rules")).json()["items"]
        return next(r for r in rules if r["code"] == "tier_multiplier")["params"]["multipliers"]

    assert await multipliers() == {"bronze": 1.0, "silver": 1.1, "gold": 2.0}
    order = paid(member, "o-sim", 10000, tier="silver").to_cloudevent()
    event = {"type": order["type"], "data": order["data"]}
    simulated = await points.client.post("/v1/rules:simulate", json={"event": event})
    assert simulated.status_code == 200, simulated.text
    assert simulated.json()["points"] == 110
