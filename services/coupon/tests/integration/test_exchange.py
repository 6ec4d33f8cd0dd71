"""Buying coupons with points, against the real points service served in-process; with the
points service failing at each step, no points are ever lost."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import httpx
import loyalty_coupon.bootstrap
import loyalty_points.bootstrap
import pytest
import pytest_asyncio
from loyalty_coupon.service_layer.exchange import settle_exchange
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
    assert counts == {
        "exchanges_refunded": 1,
        "exchanges_waiting": 0,
        "exchanges_failed": 0,
        "exchanges_already_settled": 0,
    }
    assert await available(points, member) == 500
    assert (await kit.run_job(coupon, "exchange-reconcile", kit.T0))["exchanges_refunded"] == 0


# ---------------------------------------------------------------------------------------------
# A late client retry racing `exchange-reconcile` over one exchange whose debit went through but
# whose first attempt died before the coupon: exactly one of them settles it.
# ---------------------------------------------------------------------------------------------

COST = 40
LATE = timedelta(minutes=11)  # after T0: the exchange has been pending long enough to reconcile


class Crash(Exception):
    """The first attempt's process dies right after the points service debited."""


@dataclass
class Abandoned:
    member: str
    template_code: str
    exchange_id: str
    url: str
    headers: dict[str, str]

    async def retry(self, coupon) -> httpx.Response:
        return await coupon.client.post(
            self.url, json={"template_code": self.template_code}, headers=self.headers
        )


async def abandoned_after_the_debit(coupon, points, kit, link) -> Abandoned:
    t = await kit.template(coupon, kind="free_shipping", value=0, points_cost=COST)
    member = await funded(points, kit)
    url = f"/v1/members/{member}/coupons:exchange"
    headers = {"Idempotency-Key": kit.unique("late-retry-")}

    async def die() -> None:
        raise Crash

    link.after_redeem = die
    with pytest.raises(Crash):
        await coupon.client.post(url, json={"template_code": t["code"]}, headers=headers)
    link.after_redeem = None
    assert await available(points, member) == 500 - COST  # debited...
    row = await _exchange_row(coupon, member)
    assert row.status == "pending" and row.coupon_code is None  # ...and left pending
    return Abandoned(member, t["code"], row.exchange_id, url, headers)


async def _exchange_row(coupon, member: str):
    async with coupon.runtime.engine.connect() as conn:
        (row,) = (
            await conn.execute(text("SELECT * FROM exchanges WHERE member_id = :m"), {"m": member})
        ).all()
    return row


async def settled_exactly_once(coupon, points, kit, link, x: Abandoned, answer) -> str:
    """Either the coupon was issued and the points kept, or no coupon and the points given back
    (with one cancel sent to the points service); never both; the client's answer agrees."""
    wallet = await kit.wallet(coupon, x.member)
    balance = await available(points, x.member)
    cancels = link.keys.count(f"coupon-exchange-cancel:{x.exchange_id}")
    row = await _exchange_row(coupon, x.member)
    outcome = (
        f"{len(wallet)} coupon(s), balance {balance}, {cancels} cancel(s), row {row.status}, "
        f"answer {answer.status_code} {answer.text[:200]}"
    )
    assert cancels <= 1, outcome
    if wallet:
        assert len(wallet) == 1 and balance == 500 - COST and cancels == 0, outcome
        assert row.status == "issued" and row.coupon_code == wallet[0]["coupon_code"], outcome
        assert answer.status_code == 201, outcome
        assert answer.json()["coupon_code"] == row.coupon_code, outcome
        assert answer.json()["exchange_id"] == x.exchange_id, outcome
        return "issued"
    assert balance == 500 and cancels == 1 and row.status == "refunded", outcome
    assert answer.status_code == 409, outcome
    assert answer.json()["code"] == "exchange_settled", outcome
    assert answer.json()["points_refund"] in ("done", "pending"), outcome
    return "refunded"


@pytest.mark.parametrize("job_starts_first", [False, True])
async def test_a_late_retry_and_the_reconcile_job_at_once_settle_it_once(
    coupon, points, kit, link, job_starts_first
):
    x = await abandoned_after_the_debit(coupon, points, kit, link)
    retry = x.retry(coupon)
    job = kit.run_job(coupon, "exchange-reconcile", kit.T0 + LATE)
    if job_starts_first:
        counts, answer = await asyncio.gather(job, retry)
    else:
        answer, counts = await asyncio.gather(retry, job)
    outcome = await settled_exactly_once(coupon, points, kit, link, x, answer)
    assert counts["exchanges_refunded"] == (1 if outcome == "refunded" else 0), counts
    again = await x.retry(coupon)  # and every later retry answers the same
    assert again.status_code == answer.status_code
    assert again.json().get("code") == answer.json().get("code")


async def test_a_retry_before_the_reconcile_job_gets_the_coupon(coupon, points, kit, link):
    x = await abandoned_after_the_debit(coupon, points, kit, link)
    answer = await x.retry(coupon)
    counts = await kit.run_job(coupon, "exchange-reconcile", kit.T0 + LATE)
    assert await settled_exactly_once(coupon, points, kit, link, x, answer) == "issued"
    assert counts["exchanges_refunded"] == 0, counts


async def test_a_retry_after_the_reconcile_job_is_told_it_was_refunded(coupon, points, kit, link):
    x = await abandoned_after_the_debit(coupon, points, kit, link)
    counts = await kit.run_job(coupon, "exchange-reconcile", kit.T0 + LATE)
    answer = await x.retry(coupon)
    assert await settled_exactly_once(coupon, points, kit, link, x, answer) == "refunded"
    assert counts["exchanges_refunded"] == 1, counts
    assert answer.json()["points_refund"] == "done"


async def test_the_reconcile_job_striking_between_the_retrys_debit_and_its_coupon(
    coupon, points, kit, link
):
    x = await abandoned_after_the_debit(coupon, points, kit, link)
    counts: dict = {}

    async def reconcile_now() -> None:  # the retry's debit replay has just been answered
        link.after_redeem = None
        job = kit.run_job(coupon, "exchange-reconcile", kit.T0 + LATE)
        counts.update(await asyncio.create_task(job))  # a task of its own, like another replica

    link.after_redeem = reconcile_now
    answer = await x.retry(coupon)
    assert counts, "the reconcile job ran in the middle of the retry"
    outcome = await settled_exactly_once(coupon, points, kit, link, x, answer)
    assert counts["exchanges_refunded"] == (1 if outcome == "refunded" else 0), counts


async def test_a_retry_arriving_while_the_reconcile_job_settles_the_exchange(
    coupon, points, kit, link
):
    x = await abandoned_after_the_debit(coupon, points, kit, link)
    answers: list[httpx.Response] = []

    async def retry_now() -> None:  # the job's debit replay has just been answered
        link.after_redeem = None
        answers.append(await asyncio.create_task(x.retry(coupon)))

    link.after_redeem = retry_now
    counts = await kit.run_job(coupon, "exchange-reconcile", kit.T0 + LATE)
    (answer,) = answers
    outcome = await settled_exactly_once(coupon, points, kit, link, x, answer)
    assert counts["exchanges_refunded"] == (1 if outcome == "refunded" else 0), counts


async def test_the_reconcile_job_leaves_alone_an_exchange_a_retry_settled_after_it_looked(
    coupon, points, kit, link
):
    x = await abandoned_after_the_debit(coupon, points, kit, link)
    seen_by_the_job = await _exchange_row(coupon, x.member)  # the job read it pending...
    answer = await x.retry(coupon)  # ...then the retry issued the coupon
    as_of = kit.T0 + LATE
    assert await settle_exchange(coupon.runtime, seen_by_the_job, as_of) == "already_settled"
    assert await settled_exactly_once(coupon, points, kit, link, x, answer) == "issued"


async def test_a_crash_after_the_debit_with_no_retry_is_refunded_by_the_job(
    coupon, points, kit, link
):
    x = await abandoned_after_the_debit(coupon, points, kit, link)
    too_soon = await kit.run_job(coupon, "exchange-reconcile", kit.T0 + timedelta(minutes=5))
    assert too_soon["exchanges_refunded"] == 0  # a retry may still come for it
    assert (await _exchange_row(coupon, x.member)).status == "pending"
    counts = await kit.run_job(coupon, "exchange-reconcile", kit.T0 + LATE)
    assert counts["exchanges_refunded"] == 1, counts
    assert await available(points, x.member) == 500
    assert await kit.wallet(coupon, x.member) == []
    row = await _exchange_row(coupon, x.member)
    assert row.status == "refunded" and row.points_redemption_id is not None
