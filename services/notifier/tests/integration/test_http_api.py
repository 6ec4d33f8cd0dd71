"""The notifier's HTTP API: templates (validated by rendering), preferences, deliveries and the
inbox with paging, scopes and problem codes."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from loyalty_notifier.testing import T0, Harness, ScriptedProvider, event, new_member
from loyalty_shared.events.orders import OrderDelivered, OrderPaid
from loyalty_shared.testing import READ_ONLY_AUTH


def delivered(member_id: str, order_id: str):
    return event(
        "order.delivered",
        OrderDelivered(
            order_id=order_id,
            channel="pos",
            external_id=f"EXT-{order_id}",
            member_id=member_id,
            occurred_at=T0,
        ),
        member_id,
    )


async def test_builtin_templates_are_listed_for_every_kind_channel_and_locale(notifier: Harness):
    response = await notifier.client.get("/v1/templates")
    assert response.status_code == 200
    items = response.json()["items"]
    kinds = {t["event_type"] for t in items}
    assert {
        "member.registered",
        "points.credited",
        "points.expiring_soon",
        "coupon.issued",
        "coupon.expiring_soon",
        "member.tier_changed",
        "order.shipped",
        "order.delivered",
        "order.payment_reminder",
        "member.winback",
    } <= kinds
    assert len([t for t in items if t["source"] == "builtin"]) == 10 * 5 * 2
    one = await notifier.client.get("/v1/templates/order.shipped/email/en")
    assert one.json()["subject"] == "Your order has shipped"
    assert one.json()["category"] == "transactional"


async def test_a_saved_template_is_used_and_can_be_reverted(notifier: Harness):
    providers = notifier.use({"sms": [ScriptedProvider("sms-primary")]})
    member = notifier.members.add(new_member(), email=None, wechat=None, push=None)
    put = await notifier.client.put(
        "/v1/templates/order.delivered/sms/zh-CN",
        json={"body": "订单{{ event.external_id }}已签收 {{ member.name or '' }}"},
    )
    assert put.status_code == 200, put.text
    assert put.json()["source"] == "custom"
    await notifier.deliver(delivered(member, "o-custom"))
    await notifier.run_job("dispatch", T0)
    (sms,) = providers["sms"][0].to(member)
    assert sms.body == "订单EXT-o-custom已签收 Ada"

    assert (
        await notifier.client.delete("/v1/templates/order.delivered/sms/zh-CN")
    ).status_code == 204
    again = await notifier.client.get("/v1/templates/order.delivered/sms/zh-CN")
    assert again.json()["source"] == "builtin"
    missing = await notifier.client.delete("/v1/templates/order.delivered/sms/zh-CN")
    assert missing.status_code == 404


async def test_a_template_for_a_new_event_type_adds_a_message(notifier: Harness):
    providers = notifier.use({"wechat": [ScriptedProvider("wechat-primary")]})
    member = notifier.members.add(new_member(), email=None, phone=None, push=None)
    put = await notifier.client.put(
        "/v1/templates/order.paid/wechat/en",
        json={"subject": "Paid", "body": "We got {{ event.paid_minor | money }}. Thanks!"},
    )
    assert put.status_code == 200, put.text
    await notifier.deliver(
        event(
            "order.paid",
            OrderPaid(
                order_id="o-paid",
                channel="pos",
                external_id="E1",
                member_id=member,
                occurred_at=T0,
                total_minor=1990,
                paid_minor=1990,
            ),
            member,
        )
    )
    await notifier.run_job("dispatch", T0)
    statuses = await notifier.statuses(member, "order.paid")
    assert statuses == {"wechat": ("sent", None)}  # the only channel with a template
    (message,) = providers["wechat"][0].to(member)
    assert message.body == "We got ¥19.90. Thanks!" and message.to == "o-wechat-openid"
    await notifier.client.delete("/v1/templates/order.paid/wechat/en")


async def test_invalid_templates_are_refused_with_the_error(notifier: Harness):
    cases = {
        "/v1/templates/order.shipped/sms/en": {"body": "{{ event.tracking_no "},
        "/v1/templates/order.shipped/email/en": {"subject": "x", "body": "{{ event.nope }}"},
        "/v1/templates/order.shipped/sms/zh-CN": {"body": "{{ ''.__class__.__mro__[1] }}"},
        "/v1/templates/order.shipped/fax/en": {"body": "hi"},
        "/v1/templates/order.shipped/sms/fr": {"body": "hi"},
        "/v1/templates/no.such_event/sms/en": {"body": "hi"},
        # the control group of a campaign must never learn it is one
        "/v1/templates/coupon.holdout_assigned/sms/en": {"body": "you were left out"},
    }
    for path, body in cases.items():
        response = await notifier.client.put(path, json=body)
        assert response.status_code == 422, (path, response.text)
        problem = response.json()
        assert problem["code"] == "invalid_template", path
        assert problem["detail"]
    response = await notifier.client.put(
        "/v1/templates/order.shipped/sms/en", json={"body": "{{ event.tracking_no "}
    )
    assert "TemplateSyntaxError" in response.json()["detail"]
    # nothing was saved
    kept = await notifier.client.get("/v1/templates/order.shipped/sms/en")
    assert kept.json()["source"] == "builtin"


async def test_templates_need_the_notify_scope(notifier: Harness):
    response = await notifier.client.put(
        "/v1/templates/order.shipped/sms/en", json={"body": "hi"}, headers=READ_ONLY_AUTH
    )
    assert response.status_code == 403 and response.json()["code"] == "forbidden"
    response = await notifier.client.get("/v1/templates", headers={"Authorization": ""})
    assert response.status_code == 401


async def test_preferences_defaults_and_validation(notifier: Harness):
    member = new_member()
    response = await notifier.client.get(f"/v1/members/{member}/preferences")
    assert response.status_code == 200
    assert response.json() == {
        "member_id": member,
        "channels": {c: {"marketing": False} for c in ("email", "sms", "wechat", "push")},
        "quiet_hours": {"start": "22:00", "end": "08:00"},
        "quiet_hours_source": "default",
        "timezone": "Asia/Shanghai",
        "locale": "zh-CN",
        "erased": False,
    }
    bad = [
        {"channels": {"fax": {"marketing": True}}},
        {"quiet_hours": {"start": "25:00", "end": "08:00"}},
        {"quiet_hours": {"start": "08:00", "end": "08:00"}},
        {"timezone": "Mars/Olympus"},
        {"locale": "fr"},
    ]
    for body in bad:
        response = await notifier.client.put(f"/v1/members/{member}/preferences", json=body)
        assert response.status_code == 422, body
        assert response.json()["code"] == "validation_error"
    response = await notifier.client.put(
        f"/v1/members/{member}/preferences",
        json={
            "timezone": "Europe/Berlin",
            "locale": "en",
            "channels": {"push": {"marketing": True}},
        },
    )
    body = response.json()
    assert (body["timezone"], body["locale"], body["channels"]["push"]) == (
        "Europe/Berlin",
        "en",
        {"marketing": True},
    )


async def test_deliveries_and_inbox_page_newest_first(notifier: Harness):
    notifier.use({})  # no providers: only the inbox can send
    member = notifier.members.add(new_member(), email=None, phone=None, wechat=None, push=None)
    events = [delivered(member, f"o-page-{i}") for i in range(3)]
    for e in events:
        await notifier.deliver(e)
    await notifier.run_job("dispatch", T0 + timedelta(seconds=1))

    first = await notifier.client.get(
        "/v1/deliveries", params={"member_id": member, "limit": 4, "status": "sent"}
    )
    assert first.status_code == 200
    page = first.json()
    assert len(page["items"]) == 3 and page["next_cursor"] is None
    assert [d["event_id"] for d in page["items"]] == [e.id for e in reversed(events)]
    everything = await notifier.delivery_list(member)
    assert len(everything) == 15  # three events, five channels each
    assert {d["reason"] for d in everything if d["status"] == "suppressed"} == {"no_address"}

    inbox = await notifier.client.get(f"/v1/members/{member}/inbox", params={"limit": 2})
    assert len(inbox.json()["items"]) == 2 and inbox.json()["next_cursor"]
    rest = await notifier.client.get(
        f"/v1/members/{member}/inbox", params={"limit": 2, "cursor": inbox.json()["next_cursor"]}
    )
    assert len(rest.json()["items"]) == 1 and rest.json()["next_cursor"] is None
    message_id = rest.json()["items"][0]["message_id"]
    read = await notifier.client.post(f"/v1/members/{member}/inbox/{message_id}/read")
    assert read.status_code == 200 and read.json()["read_at"]
    unread = await notifier.client.get(f"/v1/members/{member}/inbox", params={"unread": "true"})
    assert len(unread.json()["items"]) == 2

    delivery_id = page["items"][0]["delivery_id"]
    one = await notifier.client.get(f"/v1/deliveries/{delivery_id}")
    assert one.json()["channel"] == "inbox" and one.json()["sent_at"]
    missing = await notifier.client.get("/v1/deliveries/nope")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


async def test_deliveries_and_inbox_refuse_cursors_they_did_not_hand_out(notifier: Harness):
    """Contract §3: a cursor the service did not hand out is a 422, never a first page."""
    notifier.use({})
    member = notifier.members.add(new_member(), email=None, phone=None, wechat=None, push=None)
    for i in range(3):
        await notifier.deliver(delivered(member, f"o-cursor-{i}"))
    await notifier.run_job("dispatch", T0 + timedelta(seconds=1))
    lists = {
        "/v1/deliveries": {"member_id": member},
        f"/v1/members/{member}/inbox": {},
    }
    for url, params in lists.items():
        everything = (await notifier.client.get(url, params={**params, "limit": 500})).json()
        seen, cursor = [], None
        while True:
            query = {**params, "limit": 2, **({"cursor": cursor} if cursor else {})}
            page = await notifier.client.get(url, params=query)
            assert page.status_code == 200, page.text
            seen += page.json()["items"]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
        assert seen == everything["items"] and len(seen) >= 3
        newest = everything["items"][0]
        # the ids these lists once took as cursors, garbage, and an edited cursor
        first = (await notifier.client.get(url, params={**params, "limit": 1})).json()
        for foreign in (
            newest.get("delivery_id") or newest["message_id"],
            "zzzzzzzzzzzzzzzzzzzzzzzzzz",
            "%%%",
            first["next_cursor"][:-2],
        ):
            response = await notifier.client.get(url, params={**params, "cursor": foreign})
            assert response.status_code == 422, (url, foreign, response.text)
            body = response.json()
            assert body["code"] == "validation_error"
            assert [e["loc"] for e in body["errors"]] == [["query", "cursor"]]


async def test_template_texts_are_stored_verbatim(notifier: Harness):
    url = "/v1/templates/member.winback/email/en"
    for text in ["'; DROP TABLE templates; --", "🎉 欢迎回来 שלום مرحبا", 'a"\\`$1%s']:
        put = await notifier.client.put(url, json={"subject": text, "body": text})
        assert put.status_code == 200, put.text
        got = (await notifier.client.get(url)).json()
        assert got["subject"] == text and got["body"] == text
    nul = await notifier.client.put(url, json={"subject": "a\x00b", "body": "x"})
    assert nul.status_code == 422 and nul.json()["code"] in ("validation_error", "invalid_template")
    assert (await notifier.client.delete(url)).status_code == 204


# Templates that cost too much to render (contract §7: a template that cannot be used is a 422
# invalid_template). `9**9**9` is (9**9)**9 in Jinja2, a harmless 78-digit number; the power
# that hurts is 9**(9**9).
COSTLY_TEMPLATES = {
    "repeat": '{{ "x" * 10**9 }}',
    "repeat by a variable": '{% set n = 999999999 %}{{ "x" * n }}',
    "power": "{{ 9**(9**9) }}",
    "nested ranges": (
        "{% for a in range(100000) %}{% for b in range(100000) %}.{% endfor %}{% endfor %}"
    ),
    "nested ranges under the range limit": (
        "{% for a in range(10000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}x"
    ),
    "huge loop with output": "{% for i in range(10**9) %}{{ i }}{% endfor %}",
    "concatenation in a loop": (
        '{% set ns = namespace(s="x") %}{% for i in range(100) %}'
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}"
    ),
    "concatenate then repeat": '{{ ("x" ~ "y") * 10**8 }}',
    "recursive macro": "{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}",
    "macro calling itself twice": (
        "{% macro m(n) %}{% if n %}{{ m(n - 1) }}{{ m(n - 1) }}{% endif %}{% endmacro %}{{ m(45) }}"
    ),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("body", COSTLY_TEMPLATES.values(), ids=COSTLY_TEMPLATES.keys())
async def test_a_costly_template_is_refused_and_the_service_keeps_answering(
    notifier: Harness, body: str
):
    url = "/v1/templates/order.shipped/sms/en"
    started = time.monotonic()
    saving = asyncio.create_task(notifier.client.put(url, json={"body": body}))
    await asyncio.sleep(0.02)  # the save is under way (rendering, unless it was refused at once)
    asked = time.monotonic()
    other = await notifier.client.get("/v1/templates/order.shipped/email/en")
    answered = time.monotonic() - asked
    response = await saving
    took = time.monotonic() - started
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "invalid_template" and problem["detail"]
    assert took < 3, took
    assert other.status_code == 200 and answered < 0.5, answered
    assert (await notifier.client.get(url)).json()["source"] == "builtin"  # nothing was saved


@pytest.mark.timeout(60)
async def test_other_requests_are_answered_while_a_template_renders(notifier: Harness):
    """The rendering runs in a worker thread: a GET made while it runs answers before it."""
    url = "/v1/templates/order.shipped/sms/en"
    saving = asyncio.create_task(
        notifier.client.put(url, json={"body": COSTLY_TEMPLATES["macro calling itself twice"]})
    )
    await asyncio.sleep(0.05)
    health = await notifier.client.get("/v1/templates/order.shipped/email/en")
    assert health.status_code == 200
    assert not saving.done()  # the save is still rendering, and the GET was answered
    response = await saving
    assert response.status_code == 422
    assert "RenderLimitExceeded" in response.json()["detail"]


async def test_the_limits_are_explained_when_a_template_is_refused(notifier: Harness):
    response = await notifier.client.put(
        "/v1/templates/order.shipped/sms/en", json={"body": '{{ "x" * 10**9 }}'}
    )
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail.startswith("the template cannot be used: RenderLimitExceeded: ")
    assert "262144 characters" in detail
    ok = await notifier.client.put(
        "/v1/templates/order.shipped/sms/en",
        json={"body": "{% for i in range(3) %}{{ i }}{% endfor %} {{ 'ab' * 2 }} {{ 2**10 }}"},
    )
    assert ok.status_code == 200, ok.text
    assert (await notifier.client.delete("/v1/templates/order.shipped/sms/en")).status_code == 204
