"""Buying coupons with points, against the real points service served in-process; with the
points service failing at each step, no points are ever lost."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import loyalty_coupon.bootstrap
import loyalty_points.bootstrap
import pytest_asyncio
from loyalty_shared.testing import start_service
from sqlalchemy import text


class PointsLink(httpx.AsyncBaseTransport):
    """The way to the in-process points app, which a test can cut, per path, or hook."""

    def __init__(self) -> None:
        self.inner: httpx.AsyncBaseTransport | None = None
        self.down_paths: set[str] = set()  # path suffixes that fail to connect
        self.after_redeem: Callable[[], Awaitable[None]] | None = None
        self.keys: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert self.inner is not None
        if any(request.url.path.endswith(p) for p in self.down_paths):
            raise httpx.ConnectError("points is down", request=request)
        self.keys.append(request.headers.get("idempotency-key", ""))
        response = await self.inner.handle_async_request(request)
        if request.url.path == "/v1/redemptions" and self.after_redeem is not None:
            await response.aread()
            await self.after_redeem()
        return response


@pytest_asyncio.fixture(scope="module")
async def link() -> PointsLink:
    return PointsLink()


@pytest_asyncio.fixture(scope="module")
async def points(databases, clock, link):
    service = await start_service(
        loyalty_points.bootstrap.definition(),
        database_url=await databases.fresh("coupon_points"),
        bootstrap="127.0.0.1:9",
        background=False,
        clock=clock,
    )
    link.inner = httpx.ASGITransport(app=service.app)
    yield service
    await service.stop()


@pytest_asyncio.fixture(scope="module")
async def coupon(databases, clock, link, points):
    service = await start_service(
        loyalty_coupon.bootstrap.definition(points_transport=link),
        database_url=await databases.fresh("coupon_exchange"),
        bootstrap="127.0.0.1:9",
        background=False,
        clock=clock,
    )
    yield service
    await service.stop()


@pytest_asyncio.fixture(autouse=True)
async def _link_restored(link):
    yield
    link.down_paths = set()
    link.after_redeem = None


async def funded(points, kit, amount: int = 500) -> str:
    member = kit.unique("x")
    response = await points.client.post(
        f"/v1/accounts/{member}/adjustments", json={"points": amount, "reason": "test grant"}
    )
    assert response.status_code == 201, response.text
    return member


async def available(points, member: str) -> int:
    return (await points.client.get(f"/v1/accounts/{member}")).json()["available"]  # type: ignore[no-any-return]


async def test_exchange_takes_points_once_and_issues(coupon, points, kit, link):
    t = await kit.template(coupon, kind="free_shipping", value=0, points_cost=120)
    member = await funded(points, kit)
    url = f"/v1/members/{member}/coupons:exchange"
    headers = {"Idempotency-Key": "buy-1"}
    first = await coupon.client.post(url, json={"template_code": t["code"]}, headers=headers)
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["issued_via"] == "exchange" and body["points_cost"] == 120
    assert body["member_id"] == member and body["status"] == "issued"
    assert await available(points, member) == 380
    assert link.keys[-1].startswith("coupon-exchange:")

    replay = await coupon.client.post(url, json={"template_code": t["code"]}, headers=headers)
    assert replay.status_code == 201 and replay.json() == body
    assert await available(points, member) == 380
    (issued,) = await kit.events_of(coupon, member, "coupon.issued")
    assert issued["data"]["points_cost"] == 120 and issued["data"]["issued_via"] == "exchange"
    ledger = (await points.client.get(f"/v1/accounts/{member}/ledger")).json()["items"]
    assert (ledger[0]["kind"], ledger[0]["points"]) == ("redeem", -120)


async def test_refusals_before_any_points_move(coupon, points, kit):
    priced = await kit.template(coupon, points_cost=1000)
    free = await kit.template(coupon)
    member = await funded(points, kit, 100)
    url = f"/v1/members/{member}/coupons:exchange"
    poor = await coupon.client.post(url, json={"template_code": priced["code"]})
    assert poor.status_code == 422 and poor.json()["code"] == "insufficient_points"
    unpriced = await coupon.client.post(url, json={"template_code": free["code"]})
    assert unpriced.status_code == 422 and unpriced.json()["code"] == "not_exchangeable"
    missing = await coupon.client.post(url, json={"template_code": "NOPE"})
    assert missing.status_code == 404
    assert await available(points, member) == 100
    assert await kit.wallet(coupon, member) == []


async def test_points_down_is_a_clear_503_and_a_retry_completes(coupon, points, kit, link):
    t = await kit.template(coupon, points_cost=50)
    member = await funded(points, kit)
    url = f"/v1/members/{member}/coupons:exchange"
    headers = {"Idempotency-Key": "buy-down"}
    link.down_paths = {"/v1/redemptions"}
    down = await coupon.client.post(url, json={"template_code": t["code"]}, headers=headers)
    assert down.status_code == 503 and down.json()["code"] == "points_unavailable"
    assert await available(points, member) == 500
    assert await kit.wallet(coupon, member) == []
    link.down_paths = set()
    retry = await coupon.client.post(url, json={"template_code": t["code"]}, headers=headers)
    assert retry.status_code == 201, retry.text
    assert await available(points, member) == 450


async def test_points_come_back_when_the_coupon_cannot_be_issued(coupon, points, kit, link):
    t = await kit.template(coupon, points_cost=70, stock=5)

    async def stock_runs_out() -> None:  # another buyer takes the last coupon meanwhile
        async with coupon.runtime.transaction() as conn:
            await conn.execute(
                text("UPDATE coupon_templates SET issued_count = stock WHERE code = :c"),
                {"c": t["code"]},
            )

    member = await funded(points, kit)
    link.after_redeem = stock_runs_out
    response = await coupon.client.post(
        f"/v1/members/{member}/coupons:exchange", json={"template_code": t["code"]}
    )
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "out_of_stock"
    assert response.json()["points_refund"] == "done"
    assert await available(points, member) == 500
    assert await kit.wallet(coupon, member) == []


async def test_a_refund_the_points_service_missed_is_made_by_the_reconcile_job(
    coupon, points, kit, link
):
    t = await kit.template(coupon, points_cost=30, stock=5)

    async def stock_runs_out() -> None:
        async with coupon.runtime.transaction() as conn:
            await conn.execute(
                text("UPDATE coupon_templates SET issued_count = stock WHERE code = :c"),
                {"c": t["code"]},
            )
        link.down_paths = {"/cancel"}  # and points goes down before the refund

    member = await funded(points, kit)
    link.after_redeem = stock_runs_out
    response = await coupon.client.post(
        f"/v1/members/{member}/coupons:exchange", json={"template_code": t["code"]}
    )
    assert response.status_code == 409 and response.json()["points_refund"] == "pending"
    assert await available(points, member) == 470
    assert (await kit.run_job(coupon, "exchange-reconcile", kit.T0))["exchanges_waiting"] == 1
    link.down_paths = set()
    counts = await kit.run_job(coupon, "exchange-reconcile", kit.T0)
    assert counts == {"exchanges_refunded": 1, "exchanges_waiting": 0}
    assert await available(points, member) == 500
    assert (await kit.run_job(coupon, "exchange-reconcile", kit.T0))["exchanges_refunded"] == 0
