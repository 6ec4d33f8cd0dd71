"""Analytics against a small data set whose figures are computed by hand in the comments."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
import pytest_asyncio
from sqlalchemy import text

from .events import (
    cancelled,
    coupon_issued,
    coupon_redeemed,
    credited,
    debited,
    deliver,
    holdout_assigned,
    next_id,
    paid,
    refunded,
    registered,
)


def at(month: int, day: int, hour: int = 0, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


FEB = {"start": at(2, 1).isoformat(), "end": at(3, 1).isoformat()}


@pytest_asyncio.fixture(scope="module")
async def data_set(segmenter, clock):
    """Members A-F registered on 2025-10-01; orders (W = 30 days for "customer"):

    A: Jan 10, Feb 15 (10000)         -> customer at Feb 1 and at Mar 1: retained
    B: Jan 20                         -> customer at Feb 1 only: lost
    C: Jan 25, Feb 5 (cancelled)      -> customer at Feb 1 only: lost
    D: Feb 10 (4000), Feb 25 (6000)   -> first order in Feb: new; a repeat buyer
    E: 2025-11-01, Feb 20 (20000)     -> lapsed, back in Feb: reactivated
    F: Jan 5, fully refunded          -> never a customer
    guests: Feb 3 (3000), Feb 12 (5000, 1000 refunded)
    """
    clock.set(at(3, 10))
    await deliver(segmenter, *(registered(m, at(10, 1, year=2025)) for m in "ABCDEF"))
    await deliver(
        segmenter,
        paid("A", "a1", 5000, at(1, 10)),
        paid("A", "a2", 10000, at(2, 15)),
        paid("B", "b1", 5000, at(1, 20)),
        paid("C", "c1", 5000, at(1, 25)),
        paid("C", "c2", 7000, at(2, 5)),
        paid("D", "d1", 4000, at(2, 10)),
        paid("D", "d2", 6000, at(2, 25)),
        paid("E", "e1", 9000, at(11, 1, year=2025)),
        paid("E", "e2", 20000, at(2, 20)),
        paid("F", "f1", 8000, at(1, 5)),
        paid(None, "g1", 3000, at(2, 3)),
        paid(None, "g2", 5000, at(2, 12)),
    )
    await deliver(
        segmenter,
        cancelled("C", "c2", 7000, at(2, 6)),
        refunded("F", "f1", 8000, 8000, 8000, at(1, 6)),
        refunded(None, "g2", 1000, 1000, 5000, at(2, 13)),
        credited("A", 100, 100, at=at(2, 2)),
        debited("A", 30, 70, at=at(2, 3)),
        credited("B", 50, 0, pending_after=50, at=at(2, 4)),
        coupon_issued("A", "CPN-A", "WINBACK", at(2, 1, 12)),
        coupon_issued("B", "CPN-B", "WINBACK", at(2, 1, 12)),
        coupon_redeemed("A", "CPN-A", "WINBACK", "a2", at(2, 15)),
    )


async def get(segmenter, path: str, **params) -> dict:
    response = await segmenter.client.get(f"/v1/analytics/{path}", params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def test_retention_rate(segmenter, data_set):
    body = await get(segmenter, "retention", active_days=30, **FEB)
    # S = {A, B, C}; E = {A, D, E}; N = {D, E}: (3 - 2) / 3 x 100
    assert (body["S"], body["E"], body["N"]) == (3, 3, 2)
    assert body["retention_rate"] == 33.33
    assert body["churn_rate"] == 66.67
    assert body["figures"]["new"] == 1 and body["figures"]["reactivated"] == 1
    assert body["period"] == {"start": "2026-02-01T00:00:00Z", "end": "2026-03-01T00:00:00Z"}
    assert body["definitions"]["retention_rate"] == "(E - N) / S x 100"


async def test_leaky_bucket_shows_churn_behind_a_flat_total(segmenter, data_set):
    body = await get(
        segmenter,
        "leaky-bucket",
        start_month="2026-01",
        end_month="2026-02",
        timezone="UTC",
        active_days=30,
    )
    jan, feb = body["items"]
    assert (jan["month"], jan["customers_at_start"], jan["gained"], jan["new"], jan["lost"]) == (
        "2026-01",
        0,
        3,
        3,
        0,
    )
    assert feb["customers_at_start"] == feb["customers_at_end"] == 3
    assert (feb["gained"], feb["lost"], feb["net_change"]) == (2, 2, 0)
    assert body["totals"] == {"gained": 5, "lost": 2}


async def test_repeat_purchase_rate(segmenter, data_set):
    body = await get(segmenter, "repeat-purchase", **FEB)
    # February buyers with counted orders: A (1), D (2), E (1); C's order was cancelled
    assert (body["buyers"], body["repeat_buyers"], body["repeat_purchase_rate"]) == (3, 1, 33.33)


async def test_members_versus_guests(segmenter, data_set):
    body = await get(segmenter, "members-vs-guests", **FEB)
    assert body["members"] == {
        "orders": 4,
        "revenue_minor": 40000,
        "spend_per_order_minor": 10000.0,
        "buyers": 3,
        "orders_per_buyer": 1.33,
    }
    assert body["guests"]["orders"] == 2 and body["guests"]["revenue_minor"] == 7000
    assert body["guests"]["spend_per_order_minor"] == 3500.0
    assert body["guests"]["buyers"] is None
    assert body["spend_per_order_ratio"] == 2.86
    assert body["limitations"]


async def test_points_liability(segmenter, data_set):
    body = await get(segmenter, "points-liability", **FEB)
    assert body["outstanding"] == {
        "available": 70,
        "pending": 50,
        "total": 120,
        "negative_balances": 0,
        "members_holding_points": 2,
    }
    assert body["movements"]["credited"] == 150 and body["movements"]["debited"] == 30
    assert body["redemption_rate"] == 20.0


async def test_campaign_results(segmenter, data_set):
    body = await get(segmenter, "campaigns/WINBACK", window_days=30)
    assert (body["issued"], body["redeemed"], body["redemption_rate"]) == (2, 1, 50.0)
    # receivers A, B: A bought 10000 within 30 days of the coupon
    assert body["receivers"] == {
        "members": 2,
        "buyers": 1,
        "orders": 1,
        "revenue_minor": 10000,
        "revenue_per_member_minor": 5000.0,
        "response_rate": 50.0,
    }
    # others C, D, E, F: D 10000 and E 20000 in the same 30 days; C's order was cancelled
    assert body["comparison"]["members"] == 4
    assert body["comparison"]["revenue_minor"] == 30000
    assert body["revenue_per_member_lift_minor"] == 5000.0 - 7500.0
    assert body["holdout"] is None and "holdout" in body["limitations"][0]
    missing = await segmenter.client.get("/v1/analytics/campaigns/NOPE")
    assert missing.status_code == 404


@pytest_asyncio.fixture(scope="module")
async def holdout_set(segmenter, clock, data_set):
    """Campaign SPRING (window 30 days), members R1-R3 and H1-H2 registered on 2026-03-01,
    after WINBACK's first issue, so they stay out of its comparison group:

    R1: coupon Apr 1; orders Mar 25 (6000, before), Apr 10 (12000), May 5 (8000, after May 1)
    R2: coupons Apr 1 and Apr 10 (window from the first); Apr 15 (9000, redeems its coupon,
        discount 1000), Apr 20 (3000, cancelled)
    R3: coupon Apr 5; no order
    H1: held out Apr 1; Apr 20 (6000)
    H2: held out Apr 5, again Apr 20 (another grant key; window from the first);
        May 1 (4000, 1000 refunded: 3000 net, inside Apr 5 + 30 days)
    receivers 3 members, 2 buyers, 21000 -> 7000.0 a member, response 66.67
    holdout   2 members, 2 buyers,  9000 -> 4500.0 a member, response 100.0
    lift 2500.0 a member (55.56 %), response -33.33 points, incremental 2500 x 3 = 7500.0
    comparison: A-F (registered before Apr 1, neither group), no order Apr 1 - May 1
    """
    clock.set(at(5, 10))
    try:
        await deliver(segmenter, *(registered(m, at(3, 1)) for m in ("R1", "R2", "R3", "H1", "H2")))
        twice = holdout_assigned("H2", "SPRING", "segment:wb:1", at(4, 5))
        await deliver(
            segmenter,
            coupon_issued("R1", "CPN-R1", "SPRING", at(4, 1)),
            coupon_issued("R2", "CPN-R2", "SPRING", at(4, 1)),
            coupon_issued("R3", "CPN-R3", "SPRING", at(4, 5)),
            coupon_issued("R2", "CPN-R2B", "SPRING", at(4, 10)),
            holdout_assigned("H1", "SPRING", "segment:wb:1", at(4, 1)),
            twice,
            holdout_assigned("H2", "SPRING", "segment:wb:2", at(4, 20)),
        )
        # The same holdout record again under another event id: one row still.
        await deliver(segmenter, replace(twice, id=next_id("again-")))
        await deliver(
            segmenter,
            paid("R1", "r1a", 6000, at(3, 25)),
            paid("R1", "r1b", 12000, at(4, 10)),
            paid("R1", "r1c", 8000, at(5, 5)),
            paid("R2", "r2a", 9000, at(4, 15), coupon_codes=["CPN-R2"]),
            paid("R2", "r2b", 3000, at(4, 20)),
            paid("H1", "h1a", 6000, at(4, 20)),
            paid("H2", "h2a", 4000, at(5, 1)),
        )
        await deliver(
            segmenter,
            coupon_redeemed("R2", "CPN-R2", "SPRING", "r2a", at(4, 15)),
            cancelled("R2", "r2b", 3000, at(4, 21)),
            refunded("H2", "h2a", 1000, 1000, 4000, at(5, 2)),
        )
    finally:
        clock.set(at(3, 10))


async def test_campaign_results_against_the_holdout(segmenter, holdout_set, clock):
    clock.set(at(6, 1))
    try:
        body = await get(segmenter, "campaigns/SPRING", window_days=30)
    finally:
        clock.set(at(3, 10))
    assert (body["issued"], body["redeemed"], body["redemption_rate"]) == (4, 1, 25.0)
    assert body["discount_minor"] == 1000
    assert body["receivers"] == {
        "members": 3,
        "buyers": 2,
        "orders": 2,
        "revenue_minor": 21000,
        "revenue_per_member_minor": 7000.0,
        "response_rate": 66.67,
    }
    assert body["holdout"] == {
        "members": 2,
        "buyers": 2,
        "orders": 2,
        "revenue_minor": 9000,
        "revenue_per_member_minor": 4500.0,
        "response_rate": 100.0,
    }
    assert body["lift"] == {
        "baseline": "holdout",
        "revenue_per_member_minor": 2500.0,
        "revenue_per_member_pct": 55.56,
        "response_rate_points": -33.33,
        "incremental_revenue_minor": 7500.0,
    }
    assert body["revenue_per_member_lift_minor"] == 2500.0
    async with segmenter.runtime.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT member_id, grant_key FROM campaign_holdouts "
                "WHERE campaign_code = 'SPRING' ORDER BY 1, 2"
            )
        )
        # H2's record redelivered under another id is one row; its second grant key another.
        assert [tuple(r) for r in rows] == [
            ("H1", "segment:wb:1"),
            ("H2", "segment:wb:1"),
            ("H2", "segment:wb:2"),
        ]
    assert body["comparison"] == {
        "group": "non_receivers",
        "members": 6,
        "buyers": 0,
        "orders": 0,
        "revenue_minor": 0,
        "revenue_per_member_minor": 0.0,
        "response_rate": 0.0,
    }
    # Windows run from Apr 1 (R1, R2, H1) to Apr 5 (R3, H2) + 30 days, all over by Jun 1.
    assert body["period"] == {"start": "2026-04-01T00:00:00Z", "end": "2026-05-05T00:00:00Z"}
    assert body["windows_complete"] is True and body["window_days"] == 30
    assert body["definitions"]["holdout"] and body["definitions"]["lift"]
    assert not any("non-receivers" in text for text in body["limitations"])

    # Ten days: only R1's Apr 10 order (12000, before Apr 11) and nothing of the holdout's.
    week = await get(segmenter, "campaigns/SPRING", window_days=10)
    assert week["receivers"]["revenue_minor"] == 12000
    assert week["receivers"]["revenue_per_member_minor"] == 4000.0
    assert week["holdout"]["revenue_minor"] == 0
    assert week["lift"]["revenue_per_member_minor"] == 4000.0
    assert week["lift"]["revenue_per_member_pct"] is None  # the holdout's is 0
    # Asked on Mar 10 (the module's clock), every window is still open.
    assert week["windows_complete"] is False
    assert any("still open" in text for text in week["limitations"])


async def test_a_campaign_with_only_holdout_members_answers(segmenter, holdout_set):
    await deliver(segmenter, holdout_assigned("R1", "ALL-HELD", "registered", at(4, 1)))
    body = await get(segmenter, "campaigns/ALL-HELD", window_days=30)
    assert body["issued"] == 0 and body["redemption_rate"] is None
    assert body["receivers"]["members"] == 0
    assert body["receivers"]["revenue_per_member_minor"] is None
    assert body["holdout"]["members"] == 1 and body["holdout"]["revenue_minor"] == 12000
    assert body["lift"]["revenue_per_member_minor"] is None


async def test_bad_periods_are_422(segmenter):
    response = await segmenter.client.get(
        "/v1/analytics/retention", params={"start": FEB["end"], "end": FEB["start"]}
    )
    assert response.status_code == 422 and response.json()["code"] == "validation_error"
    response = await segmenter.client.get(
        "/v1/analytics/leaky-bucket",
        params={"start_month": "2026-01", "end_month": "2026-02", "timezone": "Mars/Olympus"},
    )
    assert response.status_code == 422


@pytest.mark.parametrize(
    "months",
    [("0000-01", "0000-01"), ("9999-12", "9999-12"), ("0001-01", "0001-02")],
)
async def test_months_out_of_range_are_422(segmenter, months):
    """Found by schemathesis: year 0 (and the month after 9999-12) was a 500."""
    start_month, end_month = months
    response = await segmenter.client.get(
        "/v1/analytics/leaky-bucket", params={"start_month": start_month, "end_month": end_month}
    )
    assert response.status_code == 422 and response.json()["code"] == "validation_error"
