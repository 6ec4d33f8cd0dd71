"""Campaign triggers driven by consumed events: each issues exactly once per fact, even when
its event arrives twice; dates, budget, limits and holdout; coupons of undone orders released;
the expire and expiry-notice jobs."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import date, timedelta

from loyalty_coupon.domain.campaigns import in_holdout


async def _issued(coupon, kit, member, campaign_code) -> int:
    return await kit.scalar(
        coupon,
        "SELECT count(*) FROM coupons WHERE member_id = :m AND campaign_code = :c",
        m=member,
        c=campaign_code,
    )


async def test_each_trigger_issues_once_even_when_delivered_twice(coupon, kit):
    t = await kit.template(coupon, per_member_limit=100)
    code = t["code"]
    welcome = await kit.campaign(coupon, [code], {"type": "member.registered"})
    first = await kit.campaign(coupon, [code], {"type": "first_order"})
    repeat = await kit.campaign(coupon, [code], {"type": "nth_order", "n": 2})
    winback = await kit.campaign(coupon, [code], {"type": "segment.entered", "segment_code": "wb"})
    gold = await kit.campaign(coupon, [code], {"type": "tier_changed", "tier": "gold"})
    streak = await kit.campaign(coupon, [code], {"type": "checkin_streak", "days": 7})
    member = kit.unique("m")
    d = date(2026, 3, 2)
    events = [
        kit.registered(member),
        kit.paid(member, "o-1", 1),
        kit.paid(member, "o-2", 2),
        kit.paid(member, "o-3", 3),  # a third order: neither first nor second
        kit.entered(member, "wb"),
        kit.entered(member, "another-segment"),
        kit.tier_changed(member, "gold"),
        kit.tier_changed(member, "silver"),
        kit.checked_in(member, 6, d),
        kit.checked_in(member, 7, d + timedelta(days=1)),
    ]
    await kit.deliver(coupon, *events)
    await kit.deliver(coupon, *events)  # the same events again: the inbox skips them
    # The same facts under new event ids (a producer that re-sent them): the grant keys hold.
    await kit.deliver(coupon, *[replace(e, id=kit.unique("again-")) for e in events])

    for c in (welcome, first, repeat, winback, gold, streak):
        assert await _issued(coupon, kit, member, c["code"]) == 1, c["trigger"]
    issued = await kit.events_of(coupon, member, "coupon.issued")
    assert len(issued) == 6
    assert {e["data"]["issued_via"] for e in issued} == {"campaign"}
    trigger_ids = {e["data"]["trigger_event_id"] for e in issued}
    assert trigger_ids <= {e.id for e in events}


async def test_a_guest_order_or_a_downgrade_triggers_nothing(coupon, kit):
    t = await kit.template(coupon)
    await kit.campaign(coupon, [t["code"]], {"type": "tier_changed", "tier": "silver"})
    member = kit.unique("m")
    await kit.deliver(coupon, kit.tier_changed(member, "silver", reason="downgrade"))
    assert await kit.wallet(coupon, member) == []


async def test_campaign_dates_budget_and_member_limit(coupon, kit):
    t = await kit.template(coupon, per_member_limit=1)
    dated = await kit.campaign(
        coupon,
        [t["code"]],
        {"type": "member.registered"},
        starts_at=(kit.T0 + timedelta(days=1)).isoformat(),
        ends_at=(kit.T0 + timedelta(days=2)).isoformat(),
        budget=2,
    )
    early = kit.unique("m")
    await kit.deliver(coupon, kit.registered(early, at=kit.T0))
    assert await kit.wallet(coupon, early) == []
    day1 = kit.T0 + timedelta(days=1, hours=1)
    members = [kit.unique("m") for _ in range(3)]
    await kit.deliver(coupon, *[kit.registered(m, at=day1) for m in members])
    got = [len(await kit.wallet(coupon, m)) for m in members]
    assert got == [1, 1, 0]  # the budget of 2 coupons is spent
    view = (await coupon.client.get(f"/v1/campaigns/{dated['code']}")).json()
    assert view["issued_count"] == 2 and view["budget_left"] == 0
    assert view["results"]["members_issued"] == 2
    assert view["results"]["members_not_issued"] == 1

    # Per-member limit 1: a second campaign on the same template gives nothing more.
    await kit.campaign(coupon, [t["code"]], {"type": "first_order"})
    await kit.deliver(coupon, kit.paid(members[0], kit.unique("o"), 1))
    assert len(await kit.wallet(coupon, members[0])) == 1
    reasons = await kit.scalar(
        coupon,
        "SELECT reasons FROM campaign_grants WHERE member_id = :m AND trigger_key LIKE 'order:%'",
        m=members[0],
    )
    assert reasons == [f"{t['code']}:member_limit_reached"]


async def test_holdout_is_recorded_and_gets_nothing(coupon, kit):
    t = await kit.template(coupon)
    c = await kit.campaign(coupon, [t["code"]], {"type": "member.registered"}, holdout_percent=30)
    members = [kit.unique("h") for _ in range(60)]
    await kit.deliver(coupon, *[kit.registered(m) for m in members])
    held = [m for m in members if in_holdout(c["code"], m, 30)]
    assert 0 < len(held) < len(members)
    for m in members:
        assert len(await kit.wallet(coupon, m)) == (0 if m in held else 1)
    recorded = await kit.scalar(
        coupon,
        "SELECT array_agg(member_id ORDER BY member_id) FROM campaign_grants "
        "WHERE campaign_code = :c AND outcome = 'holdout'",
        c=c["code"],
    )
    assert recorded == sorted(held)
    results = (await coupon.client.get(f"/v1/campaigns/{c['code']}")).json()["results"]
    assert results["members_holdout"] == len(held)
    assert results["members_issued"] == len(members) - len(held)


async def _holdout_events(coupon, kit, member: str, campaign_code: str) -> list[dict]:
    events = await kit.events_of(coupon, member, "coupon.holdout_assigned")
    return [e for e in events if e["data"]["campaign_code"] == campaign_code]


async def test_holdout_is_announced_once_per_record(coupon, kit):
    t = await kit.template(coupon, per_member_limit=10)
    c = await kit.campaign(
        coupon, [t["code"]], {"type": "segment.entered", "segment_code": "wb"}, holdout_percent=40
    )
    members = [kit.unique("ha") for _ in range(30)]
    held = [m for m in members if in_holdout(c["code"], m, 40)]
    assert 0 < len(held) < len(members)
    first = [kit.entered(m, "wb") for m in members]
    await kit.deliver(coupon, *first)
    await kit.deliver(coupon, *first)  # redelivered: the inbox skips it
    # The same facts under new event ids: the grant key refuses them, nothing is said again.
    await kit.deliver(coupon, *[replace(e, id=kit.unique("again-")) for e in first])

    for m, event in zip(members, first, strict=True):
        announced = await _holdout_events(coupon, kit, m, c["code"])
        if m not in held:
            assert announced == []
            continue
        (one,) = announced  # keyed by member: events_of reads the outbox by key
        assert one["subject"] == m and one["source"] == "loyalty/coupon"
        assert one["data"] == {
            "member_id": m,
            "campaign_code": c["code"],
            "trigger": "segment.entered",
            "grant_key": f"segment:wb:{kit.T0.isoformat()}",
            "assigned_via": "campaign",
            "trigger_event_id": event.id,
            "occurred_at": one["time"],
        }
    records = await kit.scalar(
        coupon,
        "SELECT count(*) FROM campaign_grants WHERE campaign_code = :c AND outcome = 'holdout'",
        c=c["code"],
    )
    assert records == len(held)

    # Another fact is another record: entering the segment again a day later.
    later = kit.T0 + timedelta(days=1)
    await kit.deliver(coupon, *[kit.entered(m, "wb", at=later) for m in held[:2]])
    for m in held[:2]:
        keys = [e["data"]["grant_key"] for e in await _holdout_events(coupon, kit, m, c["code"])]
        assert keys == [f"segment:wb:{kit.T0.isoformat()}", f"segment:wb:{later.isoformat()}"]


async def test_a_bulk_issue_announces_its_holdout_once(coupon, kit):
    t = await kit.template(coupon)
    c = await kit.campaign(coupon, [t["code"]], {"type": "manual"}, holdout_percent=50)
    members = [kit.unique("hb") for _ in range(12)]
    held = [m for m in members if in_holdout(c["code"], m, 50)]
    assert 0 < len(held) < len(members)
    response = await coupon.client.post(
        f"/v1/campaigns/{c['code']}/issue", json={"member_ids": [*members, *members[:3]]}
    )
    job_id = response.json()["job_id"]
    for _ in range(200):
        job = (await coupon.client.get(f"/v1/jobs/{job_id}")).json()
        if job["status"] == "completed":
            break
        await asyncio.sleep(0.02)
    assert job["holdout"] == len(held)
    for m in members:
        announced = await _holdout_events(coupon, kit, m, c["code"])
        assert len(announced) == (1 if m in held else 0)
        for e in announced:
            assert e["data"]["assigned_via"] == "bulk_issue"
            assert e["data"]["job_id"] == job_id
            assert e["data"]["grant_key"] == f"job:{job_id}"
            assert e["data"]["trigger"] == "manual"


async def test_invalid_campaigns(coupon, kit):
    t = await kit.template(coupon)
    cases = [
        ({"type": "nth_order"}, ["body", "trigger", "n"]),
        ({"type": "segment.entered"}, ["body", "trigger", "segment_code"]),
        ({"type": "checkin_streak", "days": 0}, ["body", "trigger", "days"]),
        ({"type": "sometimes"}, ["body", "trigger", "type"]),
    ]
    for trigger, loc in cases:
        body = {"code": "BAD", "template_codes": [t["code"]], "trigger": trigger}
        response = await coupon.client.post("/v1/campaigns", json=body)
        assert response.status_code == 422, response.text
        assert loc in [e["loc"] for e in response.json()["errors"]]
    unknown = await coupon.client.post(
        "/v1/campaigns",
        json={"code": "BAD", "template_codes": ["NOPE"], "trigger": {"type": "manual"}},
    )
    assert unknown.status_code == 422
    assert unknown.json()["errors"][0]["loc"] == ["body", "template_codes"]
    c = await kit.campaign(coupon, [t["code"]], {"type": "manual"})
    again = await coupon.client.post(
        "/v1/campaigns",
        json={"code": c["code"], "template_codes": [t["code"]], "trigger": {"type": "manual"}},
    )
    assert again.status_code == 409 and again.json()["code"] == "campaign_exists"
    paused = await coupon.client.patch(f"/v1/campaigns/{c['code']}", json={"status": "paused"})
    assert paused.status_code == 200 and paused.json()["status"] == "paused"


async def test_undone_orders_release_their_coupons(coupon, kit, clock):
    t = await kit.template(coupon, valid_days=5)
    await kit.campaign(coupon, [t["code"]], {"type": "member.registered"})
    member = kit.unique("m")
    await kit.deliver(coupon, kit.registered(member))
    (c,) = await kit.wallet(coupon, member)
    order = kit.unique("o")
    redeemed = await coupon.client.post(
        "/v1/redemptions",
        json={"coupon_code": c["coupon_code"], "member_id": member, "order_id": order},
    )
    assert redeemed.status_code == 201
    await kit.deliver(coupon, kit.refunded(member, order, 4000, 4000))  # partial: kept
    assert [x["status"] for x in await kit.wallet(coupon, member)] == ["redeemed"]
    await kit.deliver(coupon, kit.refunded(member, order, 6000, 10000))  # now fully refunded
    assert [x["status"] for x in await kit.wallet(coupon, member)] == ["issued"]
    (released,) = await kit.events_of(coupon, member, "coupon.released")
    assert released["data"]["reason"] == "order_refunded"
    assert released["data"]["order_id"] == order
    assert released["data"]["redemption_id"] == redeemed.json()["redemption_id"]

    # Used again, by an order.paid naming it (a shop that never calls /v1/redemptions)...
    order2 = kit.unique("o")
    await kit.deliver(coupon, kit.paid(member, order2, 5, coupon_codes=(c["coupon_code"],)))
    assert [x["order_id"] for x in await kit.wallet(coupon, member, "redeemed")] == [order2]
    assert len(await kit.events_of(coupon, member, "coupon.redeemed")) == 2
    # ...then cancelled after the coupon's end: it stays used.
    clock.advance(timedelta(days=6))
    try:
        await kit.deliver(coupon, kit.cancelled(member, order2))
    finally:
        clock.advance(-timedelta(days=6))
    assert [x["status"] for x in await kit.wallet(coupon, member)] == ["redeemed"]
    assert len(await kit.events_of(coupon, member, "coupon.released")) == 1


async def test_expire_and_expiry_notice_jobs(coupon, kit):
    t = await kit.template(coupon, valid_days=10)
    await kit.campaign(coupon, [t["code"]], {"type": "member.registered"})
    member = kit.unique("m")
    await kit.deliver(coupon, kit.registered(member))
    (c,) = await kit.wallet(coupon, member)

    assert (await kit.run_job(coupon, "expiry-notice", kit.T0 + timedelta(days=6)))[
        "coupons_noticed"
    ] == 0
    at = kit.T0 + timedelta(days=7, hours=1)
    assert (await kit.run_job(coupon, "expiry-notice", at))["coupons_noticed"] >= 1
    await kit.run_job(coupon, "expiry-notice", at + timedelta(hours=1))  # once per coupon
    (notice,) = await kit.events_of(coupon, member, "coupon.expiring_soon")
    assert notice["data"]["coupon_code"] == c["coupon_code"]
    assert notice["data"]["kind"] == "amount_off" and notice["data"]["value"] == 2000

    await kit.run_job(coupon, "expire", kit.T0 + timedelta(days=9))
    assert await kit.events_of(coupon, member, "coupon.expired") == []
    await kit.run_job(coupon, "expire", kit.T0 + timedelta(days=10))
    await kit.run_job(coupon, "expire", kit.T0 + timedelta(days=11))
    (gone,) = await kit.events_of(coupon, member, "coupon.expired")
    assert gone["data"]["coupon_code"] == c["coupon_code"]
    status = await kit.scalar(
        coupon, "SELECT status FROM coupons WHERE coupon_code = :c", c=c["coupon_code"]
    )
    assert status == "expired"
