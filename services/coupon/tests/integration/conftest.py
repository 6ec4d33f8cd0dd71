"""Fixtures of the coupon service's integration tests: the service on real PostgreSQL (no
broker: events are delivered through the consumer's own handlers), a clock the tests move,
and builders of the events the service consumes."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import loyalty_coupon.bootstrap
import pytest_asyncio
from loyalty_shared.clock import FixedClock
from loyalty_shared.events import Event, make_event
from loyalty_shared.events.members import MemberCheckedIn, MemberRegistered, MemberTierChanged
from loyalty_shared.events.orders import OrderCancelled, OrderPaid, OrderRefunded
from loyalty_shared.events.segments import SegmentEntered
from loyalty_shared.testing import (
    DatabaseFactory,
    RunningService,
    deliver,
    outbox_events,
    start_service,
)
from sqlalchemy import text

T0 = datetime(2026, 3, 2, 4, 0, tzinfo=UTC)
_ids = itertools.count(1)


@pytest_asyncio.fixture(scope="module")
async def clock() -> FixedClock:
    return FixedClock(T0)


@pytest_asyncio.fixture(scope="module")
async def coupon(databases: DatabaseFactory, clock: FixedClock):
    service = await start_service(
        loyalty_coupon.bootstrap.definition(),
        database_url=await databases.fresh("coupon"),
        bootstrap="127.0.0.1:9",
        background=False,
        clock=clock,
    )
    yield service
    await service.stop()


def unique(prefix: str) -> str:
    return f"{prefix}{next(_ids):06d}"


def _event(type_: str, data: Any, member_id: str, at: datetime) -> Event[Any]:
    return make_event(type_, data, subject=member_id, source="test", time=at)


def registered(member_id: str, at: datetime = T0) -> Event[Any]:
    data = MemberRegistered(
        member_id=member_id, card_no="8000000000000000", referral_code="ABCDEFGH", registered_at=at
    )
    return _event("member.registered", data, member_id, at)


def paid(
    member_id: str,
    order_id: str,
    count: int,
    *,
    paid_minor: int = 10000,
    coupon_codes: tuple[str, ...] = (),
    at: datetime = T0,
) -> Event[Any]:
    data = OrderPaid(
        order_id=order_id,
        channel="pos",
        external_id=order_id,
        member_id=member_id,
        occurred_at=at,
        total_minor=paid_minor,
        paid_minor=paid_minor,
        paid_order_count=count,
        coupon_codes=list(coupon_codes),
    )
    return _event("order.paid", data, member_id, at)


def cancelled(member_id: str, order_id: str, at: datetime = T0) -> Event[Any]:
    data = OrderCancelled(
        order_id=order_id,
        channel="pos",
        external_id=order_id,
        member_id=member_id,
        occurred_at=at,
        previous_status="paid",
        total_minor=10000,
        paid_minor=10000,
    )
    return _event("order.cancelled", data, member_id, at)


def refunded(member_id: str, order_id: str, amount: int, total: int, at: datetime = T0):
    data = OrderRefunded(
        order_id=order_id,
        channel="pos",
        external_id=unique("rf"),
        member_id=member_id,
        occurred_at=at,
        refund_id=unique("rid"),
        amount_minor=amount,
        refunded_total_minor=total,
        paid_minor=10000,
    )
    return _event("order.refunded", data, member_id, at)


def entered(member_id: str, segment_code: str, at: datetime = T0) -> Event[Any]:
    data = SegmentEntered(segment_code=segment_code, member_id=member_id, as_of=at)
    return _event("segment.entered", data, member_id, at)


def tier_changed(member_id: str, new_tier: str, reason: str = "upgrade", at: datetime = T0):
    data = MemberTierChanged(
        member_id=member_id,
        old_tier="bronze",
        new_tier=new_tier,
        reason=reason,
        points_multiplier=1.2,
        occurred_at=at,
    )
    return _event("member.tier_changed", data, member_id, at)


def checked_in(member_id: str, streak: int, day: date, at: datetime = T0) -> Event[Any]:
    data = MemberCheckedIn(member_id=member_id, date=day, streak_days=streak, occurred_at=at)
    return _event("member.checked_in", data, member_id, at)


async def template(service: RunningService, **fields: Any) -> dict[str, Any]:
    body = {"code": unique("T-"), "name": "20 off", "kind": "amount_off", "value": 2000}
    body.update(fields)
    if "valid_days" not in body and "ends_at" not in body:
        body["valid_days"] = 30
    response = await service.client.post("/v1/coupon-templates", json=body)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def campaign(
    service: RunningService, template_codes: list[str], trigger: dict[str, Any], **fields: Any
) -> dict[str, Any]:
    body = {"code": unique("C-"), "template_codes": template_codes, "trigger": trigger, **fields}
    response = await service.client.post("/v1/campaigns", json=body)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def wallet(service: RunningService, member_id: str, status: str | None = None) -> list[dict]:
    params = {"status": status} if status else {}
    response = await service.client.get(f"/v1/members/{member_id}/coupons", params=params)
    assert response.status_code == 200, response.text
    return response.json()["items"]  # type: ignore[no-any-return]


async def events_of(service: RunningService, member_id: str, event_type: str) -> list[dict]:
    return await outbox_events(service.runtime, key=member_id, event_type=event_type)


async def scalar(service: RunningService, sql: str, **params: Any) -> Any:
    async with service.runtime.engine.connect() as conn:
        return await conn.scalar(text(sql), params)


async def run_job(service: RunningService, job: str, as_of: datetime) -> dict[str, Any]:
    response = await service.client.post(
        f"/v1/admin/jobs/{job}/run", json={"as_of": as_of.isoformat()}
    )
    assert response.status_code == 200, response.text
    return response.json()["counts"]  # type: ignore[no-any-return]


@pytest_asyncio.fixture(scope="session")
async def kit() -> SimpleNamespace:
    return SimpleNamespace(
        T0=T0,
        unique=unique,
        deliver=deliver,
        registered=registered,
        paid=paid,
        cancelled=cancelled,
        refunded=refunded,
        entered=entered,
        tier_changed=tier_changed,
        checked_in=checked_in,
        template=template,
        campaign=campaign,
        wallet=wallet,
        events_of=events_of,
        scalar=scalar,
        run_job=run_job,
        timedelta=timedelta,
    )


@pytest_asyncio.fixture(autouse=True)
async def _campaigns_of_one_test(request: Any):
    """Campaigns react to every member: pause each test's campaigns when it ends, so that the
    next test's members see only their own."""
    yield
    if "coupon" in request.fixturenames:
        service: RunningService = request.getfixturevalue("coupon")
        async with service.runtime.transaction() as conn:
            await conn.execute(text("UPDATE campaigns SET status = 'paused'"))
