"""Analytics against a small data set whose figures are computed by hand in the comments."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest_asyncio

from .events import (
    cancelled,
    coupon_issued,
    coupon_redeemed,
    credited,
    debited,
    deliver,
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
