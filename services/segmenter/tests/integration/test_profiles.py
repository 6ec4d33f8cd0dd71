"""Profiles follow member, order, refund and points events; the recompute job moves stages."""

from __future__ import annotations

from datetime import timedelta

import pytest
from loyalty_shared.testing import outbox_events

from .events import (
    T0,
    cancelled,
    credited,
    debited,
    deliver,
    erased,
    next_id,
    paid,
    refunded,
    registered,
    tier_changed,
)

D = timedelta(days=1)


@pytest.fixture(autouse=True)
def _reset_clock(clock):
    clock.set(T0)
    yield
    clock.set(T0)


async def profile(segmenter, member_id: str) -> dict:
    response = await segmenter.client.get(f"/v1/profiles/{member_id}")
    assert response.status_code == 200, response.text
    return response.json()


async def run_recompute(segmenter, as_of) -> dict:
    response = await segmenter.client.post(
        "/v1/admin/jobs/recompute/run", json={"as_of": as_of.isoformat()}
    )
    assert response.status_code == 200, response.text
    return response.json()["counts"]


async def lifecycle_events(segmenter, member_id: str) -> list[tuple]:
    events = await outbox_events(
        segmenter.runtime, key=member_id, event_type="member.lifecycle_changed"
    )
    return [(e["data"].get("old_stage"), e["data"]["new_stage"]) for e in events]


async def test_unknown_member_is_404(segmenter):
    response = await segmenter.client.get("/v1/profiles/nobody")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


async def test_profile_follows_orders_refunds_and_cancels(segmenter):
    member = next_id("m")
    await deliver(segmenter, registered(member, T0 - 100 * D))
    body = await profile(segmenter, member)
    assert body["lifecycle_stage"] == "prospect"
    assert body["orders_count"] == 0 and body["churn_risk"] is None

    await deliver(
        segmenter,
        paid(member, "o-a", 30000, T0 - 20 * D, lines={"snacks": 20000, "tea": 10000}),
        paid(member, "o-b", 10000, T0 - 10 * D, lines={"snacks": 10000}),
    )
    body = await profile(segmenter, member)
    assert body["orders_count"] == 2
    assert body["spend_minor"] == 40000 and body["spend_365d_minor"] == 40000
    assert body["first_order_at"].startswith((T0 - 20 * D).date().isoformat())
    assert body["lifecycle_stage"] == "new"
    assert body["buyer_weight"] == "medium"
    assert body["category_spend_minor"] == {"snacks": 30000, "tea": 10000}
    assert body["preference_tags"] == ["snacks", "tea"]  # shares of 75% and 25% (>= 25%)
    assert body["rfm"]["recency_days"] == 10 and body["rfm"]["frequency"] == 2

    # a partial refund lowers spend, a full refund of the last order takes it out entirely
    await deliver(segmenter, refunded(member, "o-a", 5000, 5000, 30000, T0 - 5 * D))
    body = await profile(segmenter, member)
    assert (body["orders_count"], body["spend_minor"]) == (2, 35000)
    assert body["category_spend_minor"] == {"snacks": 16666 + 10000, "tea": 8333}
    assert body["preference_tags"] == ["snacks"]  # tea fell to 23.8%
    await deliver(segmenter, refunded(member, "o-b", 10000, 10000, 10000, T0 - 4 * D))
    body = await profile(segmenter, member)
    assert (body["orders_count"], body["spend_minor"]) == (1, 25000)
    assert body["last_order_at"].startswith((T0 - 20 * D).date().isoformat())
    assert body["buyer_weight"] == "light"

    await deliver(segmenter, cancelled(member, "o-a", 30000, T0 - 3 * D))
    body = await profile(segmenter, member)
    assert (body["orders_count"], body["spend_minor"]) == (0, 0)
    assert body["lifecycle_stage"] == "prospect" and body["last_order_at"] is None
    assert await lifecycle_events(segmenter, member) == [
        (None, "prospect"),
        ("prospect", "new"),
        ("new", "prospect"),
    ]


async def test_same_event_twice_and_same_order_twice_count_once(segmenter):
    member = next_id("m")
    order = paid(member, next_id("o"), 5000)
    await deliver(segmenter, order)
    await deliver(segmenter, order)  # redelivery: the inbox drops it
    again = paid(member, order.data.order_id, 5000)  # the same order under another event id
    await deliver(segmenter, again)
    body = await profile(segmenter, member)
    assert (body["orders_count"], body["spend_minor"]) == (1, 5000)
    assert await lifecycle_events(segmenter, member) == [(None, "new")]


async def test_guest_orders_are_kept_but_make_no_profile(segmenter):
    order_id = next_id("g")
    await deliver(segmenter, paid(None, order_id, 7000), refunded(None, order_id, 2000, 2000, 7000))
    async with segmenter.runtime.engine.connect() as conn:
        from sqlalchemy import text

        row = (
            await conn.execute(
                text("SELECT member_id, net_minor FROM profile_orders WHERE order_id = :o"),
                {"o": order_id},
            )
        ).one()
    assert (row.member_id, row.net_minor) == (None, 5000)


async def test_tier_points_and_erasure(segmenter):
    member = next_id("m")
    await deliver(
        segmenter,
        registered(member),
        credited(member, 100, 100),
        tier_changed(member, "silver"),
        debited(member, 30, 70),
    )
    body = await profile(segmenter, member)
    assert (body["tier"], body["points_available"]) == ("silver", 70)
    await deliver(segmenter, erased(member))
    assert (await profile(segmenter, member))["erased"] is True


async def test_job_moves_new_to_easy_winback_once(segmenter):
    member = next_id("m")
    await deliver(segmenter, registered(member), paid(member, next_id("o"), 120000))
    body = await profile(segmenter, member)
    assert body["lifecycle_stage"] == "new"
    # the first churn step: one order, so a usual gap of 45 days is assumed
    assert body["next_transition_at"] == "2026-04-16T04:00:00Z"  # T0 + 45 days

    as_of = T0 + 100 * D
    counts = await run_recompute(segmenter, as_of)
    assert counts["members_due"] >= 1
    body = await profile(segmenter, member)
    assert body["lifecycle_stage"] == "easy_winback"
    # 100 days against an assumed 45-day gap (level 3 of 4), and nothing bought in the last
    # 90 days against 120000 in the 275 days before
    assert [r["code"] for r in body["churn_reasons"]] == ["overdue", "single_order", "volume_drop"]
    assert body["churn_inputs"]["gap_level"] == 3
    assert body["churn_inputs"]["volume_ratio"] == 0.0
    assert body["churn_risk"] == round(0.7 * 3 / 4 + 0.3 * 1.0, 2)
    assert body["churn_inputs"]["days_since_last_order"] == 100
    events = await lifecycle_events(segmenter, member)
    assert events == [(None, "prospect"), ("prospect", "new"), ("new", "easy_winback")]

    again = await run_recompute(segmenter, as_of)  # nothing is due any more: no event again
    assert again["stage_changes"] == 0
    assert await lifecycle_events(segmenter, member) == events

    # a returning purchase brings the member back to active, through the event
    segmenter_clock = segmenter.runtime.clock
    segmenter_clock.set(as_of + D)
    await deliver(segmenter, paid(member, next_id("o"), 1000, as_of + D))
    assert (await profile(segmenter, member))["lifecycle_stage"] == "active"


async def test_job_touches_only_due_members(segmenter):
    members = [next_id("m") for _ in range(5)]
    await deliver(segmenter, *(paid(m, next_id("o"), 1000, T0) for m in members))
    await run_recompute(segmenter, T0 + 50 * D)  # every profile so far is due by then
    # nothing moves until the next boundary of anyone: the job reads nobody at all
    counts = await run_recompute(segmenter, T0 + 50 * D + timedelta(hours=1))
    assert counts["members_due"] == 0
