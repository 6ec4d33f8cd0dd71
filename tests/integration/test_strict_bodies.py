"""Hostile JSON types on every service: `true` where an integer is wanted, a number where a time
or a string is wanted is a 422 `validation_error` naming the field and changes nothing; the same
request with the right types succeeds (loyalty_shared.api_types, contract §3)."""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Iterator
from typing import Any, get_args

import httpx
import pytest
import pytest_asyncio
from fastapi.routing import APIRoute
from loyalty_shared.api_types import RequestModel
from loyalty_shared.testing import DatabaseFactory, RunningService, deliver, start_service
from pydantic import BaseModel

SERVICES = ["member", "points", "coupon", "notifier", "segmenter"]
_ids = itertools.count(1)


def _models(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in get_args(annotation):
        yield from _models(arg)


def test_every_request_body_of_the_five_services_is_a_request_model():
    from loyalty_shared.service import admin

    seen, lax = set(), set()
    for name in SERVICES:
        definition = importlib.import_module(f"loyalty_{name}.bootstrap").definition()
        for router in [*definition.routers, admin]:
            for route in router.routes:
                assert isinstance(route, APIRoute), route
                for param in route.dependant.body_params:
                    models = list(_models(param.field_info.annotation))
                    assert models, f"{name} {route.path}: a body that is not a model"
                    for model in models:
                        seen.add(model.__name__)
                        if not issubclass(model, RequestModel):
                            lax.add(model.__name__)
    assert len(seen) > 30 and {"OrderCreate", "TemplateCreate", "SegmentCreate"} <= seen
    assert not lax, f"request bodies that are not strict: {sorted(lax)}"


@pytest_asyncio.fixture
async def service(request: pytest.FixtureRequest, databases: DatabaseFactory):
    async def start(name: str) -> RunningService:
        definition = importlib.import_module(f"loyalty_{name}.bootstrap").definition()
        return await start_service(
            definition,
            database_url=await databases.fresh(f"strict_{name}"),
            bootstrap="127.0.0.1:9",  # background=False: the broker is never contacted
            background=False,
        )

    started: list[RunningService] = []

    async def make(name: str) -> RunningService:
        started.append(await start(name))
        return started[-1]

    yield make
    for running in started:
        await running.stop()


async def refused(client: httpx.AsyncClient, method: str, url: str, body: Any, loc: list[Any]):
    response = await client.request(method, url, json=body)
    assert response.status_code == 422, (body, response.text)
    problem = response.json()
    assert problem["code"] == "validation_error", problem
    assert loc in [e["loc"] for e in problem["errors"]], (body, problem["errors"])


def changed(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of `body` with the value at `path` (dotted, list indexes as digits) set."""
    import copy

    out = copy.deepcopy(body)
    *parents, last = path.split(".")
    node: Any = out
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    return out


def loc(path: str) -> list[Any]:
    return ["body", *(int(p) if p.isdigit() else p for p in path.split("."))]


async def test_member_orders(service: Any):
    member = await service("member")
    member_id = (
        await member.client.post("/v1/members", json={"phone": f"139{next(_ids):08d}"})
    ).json()["member_id"]
    order = {
        "channel": "pos",
        "external_id": f"POS-{member_id}",
        "member_id": member_id,
        "occurred_at": "2024-05-01T09:30:00+08:00",
        "status": "paid",
        "currency": "CNY",
        "total_minor": 12900,
        "paid_minor": 12900,
        "lines": [{"sku": "SNK-1", "category": "snacks", "quantity": 1, "unit_price_minor": 12900}],
    }
    for path, value in [
        ("total_minor", True),  # an integer
        ("paid_minor", 12900.0),  # minor units are whole
        ("lines.0.quantity", True),
        ("lines.0.unit_price_minor", "12900"),
        ("occurred_at", 1714527000),  # a time
        ("external_id", 12345),  # a string
        ("enroll_if_unknown", 1),  # a boolean
    ]:
        await refused(member.client, "POST", "/v1/orders", changed(order, path, value), loc(path))
    orders = f"/v1/members/{member_id}/orders"
    assert (await member.client.get(orders)).json()["items"] == []
    await refused(
        member.client, "PATCH", f"/v1/members/{member_id}", {"birthday": 19000}, loc("birthday")
    )
    await refused(
        member.client,
        "POST",
        f"/v1/members/{member_id}/check-ins",
        {"occurred_at": 1714527000},
        loc("occurred_at"),
    )
    profile = (await member.client.get(f"/v1/members/{member_id}")).json()
    assert profile["birthday"] is None
    assert (await member.client.get(f"/v1/members/{member_id}/check-ins")).json()["items"] == []

    placed = await member.client.post("/v1/orders", json=order)
    assert placed.status_code == 202, placed.text
    (listed,) = (await member.client.get(orders)).json()["items"]
    assert listed["total_minor"] == 12900 and listed["occurred_at"].startswith("2024-05-01T01:30")
    birthday = await member.client.patch(
        f"/v1/members/{member_id}", json={"birthday": "1990-02-28"}
    )
    assert birthday.status_code == 200 and birthday.json()["birthday"] == "1990-02-28"


async def test_points_adjustments_rules_and_stored_value(service: Any):
    from loyalty_shared.events import make_event
    from loyalty_shared.events.members import MemberRegistered

    points = await service("points")
    member_id = f"strict{next(_ids):06d}"
    now = points.runtime.clock.now()
    registered = MemberRegistered(
        member_id=member_id,
        card_no="8000000000000000",
        referral_code="ABCDEFGH",
        registered_at=now,
    )
    await deliver(
        points,
        make_event("member.registered", registered, subject=member_id, source="test", time=now),
    )
    account = f"/v1/accounts/{member_id}"
    before = (await points.client.get(account)).json()["available"]

    adjustment = {"points": 50, "reason": "apology"}
    for path, value in [("points", True), ("points", 50.0), ("points", "50"), ("reason", 5)]:
        await refused(
            points.client,
            "POST",
            f"{account}/adjustments",
            changed(adjustment, path, value),
            loc(path),
        )
    top_up = f"/v1/stored-value/{member_id}/top-ups"
    await refused(
        points.client,
        "POST",
        top_up,
        {"external_id": "T-1", "amount_minor": True},
        ["body", "amount_minor"],
    )
    await refused(
        points.client,
        "POST",
        "/v1/rules:simulate",
        {"event": {"type": "member.registered", "data": {}, "time": 1714527000}},
        ["body", "event", "time"],
    )
    # the rule's parameters are part of the body: `true` is no day of the month
    rules = (await points.client.get("/v1/rules")).json()["items"]
    response = await points.client.put(
        "/v1/rules/member_day", json={"params": {"day_of_month": True, "multiplier": 2.0}}
    )
    assert response.status_code == 422 and response.json()["code"] == "validation_error"
    assert ["body", "params", "day_of_month"] in [e["loc"] for e in response.json()["errors"]]
    assert (await points.client.get("/v1/rules")).json()["items"] == rules
    assert (await points.client.get(account)).json()["available"] == before
    assert (await points.client.get(f"/v1/stored-value/{member_id}")).json()["balance_minor"] == 0

    granted = await points.client.post(f"{account}/adjustments", json=adjustment)
    assert granted.status_code == 201, granted.text
    assert (await points.client.get(account)).json()["available"] == before + 50
    topped = await points.client.post(top_up, json={"external_id": "T-1", "amount_minor": 500})
    assert topped.status_code == 201, topped.text
    day = await points.client.put(
        "/v1/rules/member_day", json={"params": {"day_of_month": 21, "multiplier": 2}}
    )
    assert day.status_code == 200 and day.json()["params"]["day_of_month"] == 21


async def test_coupon_templates_and_campaigns(service: Any):
    coupon = await service("coupon")
    template = {
        "code": "STRICT-5OFF",
        "name": "5 off",
        "kind": "amount_off",
        "value": 500,
        "min_spend_minor": 1000,
        "starts_at": "2024-05-01T00:00:00+08:00",
        "ends_at": "2024-06-01T00:00:00+08:00",
    }
    for path, value in [
        ("value", True),
        ("value", 500.0),
        ("min_spend_minor", "1000"),
        ("starts_at", 1714492800),
        ("name", 5),
    ]:
        await refused(
            coupon.client, "POST", "/v1/coupon-templates", changed(template, path, value), loc(path)
        )
    assert (await coupon.client.get("/v1/coupon-templates/STRICT-5OFF")).status_code == 404
    await refused(
        coupon.client,
        "POST",
        "/v1/validations",
        {"member_id": "m1", "total_minor": True, "coupon_codes": ["X"]},
        ["body", "total_minor"],
    )

    created = await coupon.client.post("/v1/coupon-templates", json=template)
    assert created.status_code == 201, created.text
    shown = (await coupon.client.get("/v1/coupon-templates/STRICT-5OFF")).json()
    assert shown["value"] == 500 and shown["starts_at"].startswith("2024-04-30T16:00")
    campaign = {
        "code": "STRICT-C",
        "template_codes": ["STRICT-5OFF"],
        "trigger": {"type": "manual"},
    }
    await refused(
        coupon.client,
        "POST",
        "/v1/campaigns",
        {**campaign, "holdout_percent": True},
        ["body", "holdout_percent"],
    )
    assert (await coupon.client.get("/v1/campaigns/STRICT-C")).status_code == 404
    ok = await coupon.client.post("/v1/campaigns", json={**campaign, "holdout_percent": 10})
    assert ok.status_code == 201 and ok.json()["holdout_percent"] == 10.0


async def test_notifier_templates_and_preferences(service: Any):
    notifier = await service("notifier")
    template = "/v1/templates/order.shipped/sms/en"
    builtin = (await notifier.client.get(template)).json()
    await refused(notifier.client, "PUT", template, {"body": 42}, ["body", "body"])
    await refused(
        notifier.client, "PUT", template, {"body": "Shipped", "subject": 1}, ["body", "subject"]
    )
    assert (await notifier.client.get(template)).json() == builtin

    preferences = "/v1/members/strict-m1/preferences"
    before = (await notifier.client.get(preferences)).json()
    for body, where in [
        ({"channels": {"sms": {"marketing": 1}}}, ["body", "channels", "sms", "marketing"]),
        ({"quiet_hours": {"start": 2200, "end": "08:00"}}, ["body", "quiet_hours", "start"]),
        ({"timezone": 8}, ["body", "timezone"]),
    ]:
        await refused(notifier.client, "PUT", preferences, body, where)
    assert (await notifier.client.get(preferences)).json() == before

    saved = await notifier.client.put(template, json={"body": "Shipped: {{ event.order_id }}"})
    assert saved.status_code == 200 and saved.json()["source"] == "custom"
    quiet = {"quiet_hours": {"start": "22:00", "end": "08:00"}}
    changed_preferences = await notifier.client.put(preferences, json=quiet)
    assert changed_preferences.status_code == 200, changed_preferences.text
    assert changed_preferences.json()["quiet_hours"] == {"start": "22:00", "end": "08:00"}


async def test_segmenter_segments(service: Any):
    segmenter = await service("segmenter")
    segment = {
        "code": "strict-loyal",
        "name": "Loyal",
        "rule": {"field": "orders_count", "op": "gte", "value": 2},
    }
    for path, value in [("name", 5), ("code", 123), ("description", True)]:
        await refused(
            segmenter.client, "POST", "/v1/segments", changed(segment, path, value), loc(path)
        )
    # a rule's value is checked against its field's type as before (the rule is free JSON)
    response = await segmenter.client.post(
        "/v1/segments", json=changed(segment, "rule.value", True)
    )
    assert response.status_code == 422 and response.json()["code"] == "validation_error"
    assert ["body", "rule", "value"] in [e["loc"] for e in response.json()["errors"]]
    assert (await segmenter.client.get("/v1/segments/strict-loyal")).status_code == 404

    created = await segmenter.client.post("/v1/segments", json=segment)
    assert created.status_code == 201, created.text
    assert (await segmenter.client.get("/v1/segments/strict-loyal")).json()["name"] == "Loyal"
