"""Events → deliveries → dispatcher, on PostgreSQL: routing by template, address and consent;
one delivery per event and channel; quiet hours; frequency caps; retries and failover;
erasure; payment and expiry reminders."""

# ruff: noqa: RUF001  (Chinese text uses full-width punctuation)
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from loyalty_notifier.testing import T0, Harness, ScriptedProvider, event, new_member
from loyalty_shared.events.coupons import CouponExpiringSoon, CouponIssued
from loyalty_shared.events.members import MemberErased, MemberRegistered, MemberUpdated
from loyalty_shared.events.orders import OrderPaid, OrderPlaced, OrderShipped
from loyalty_shared.events.points import ExpiringLot, PointsExpiringSoon
from loyalty_shared.events.segments import MemberLifecycleChanged
from sqlalchemy import text

NIGHT = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)  # 23:30 in Shanghai
NEXT_MORNING = datetime(2026, 3, 3, 0, 0, tzinfo=UTC)  # 08:00 in Shanghai


def registered(member_id: str, consents: dict[str, bool], at: datetime = T0, **kwargs):
    return event(
        "member.registered",
        MemberRegistered(
            member_id=member_id,
            card_no="8800000000001",
            referral_code="REF12345",
            consents=consents,
            registered_at=at,
            **kwargs,
        ),
        member_id,
        at,
    )


def shipped(member_id: str, at: datetime = T0, order_id: str | None = None):
    order_id = order_id or new_member("o")
    return event(
        "order.shipped",
        OrderShipped(
            order_id=order_id,
            channel="online",
            external_id=f"EXT-{order_id}",
            member_id=member_id,
            occurred_at=at,
            carrier="SF Express",
            tracking_no="SF123",
        ),
        member_id,
        at,
    )


def coupon_issued(member_id: str, at: datetime = T0):
    return event(
        "coupon.issued",
        CouponIssued(
            coupon_code=new_member("C"),
            template_code="NEW10",
            member_id=member_id,
            valid_from=at,
            valid_until=at + timedelta(days=30),
            occurred_at=at,
            kind="amount_off",
            value=1000,
            min_spend_minor=5000,
            issued_via="campaign",
        ),
        member_id,
        at,
    )


def placed(member_id: str, order_id: str, at: datetime = T0):
    return event(
        "order.placed",
        OrderPlaced(
            order_id=order_id,
            channel="online",
            external_id=f"EXT-{order_id}",
            member_id=member_id,
            occurred_at=at,
            total_minor=12900,
            paid_minor=0,
        ),
        member_id,
        at,
    )


def paid(member_id: str, order_id: str, at: datetime = T0):
    return event(
        "order.paid",
        OrderPaid(
            order_id=order_id,
            channel="online",
            external_id=f"EXT-{order_id}",
            member_id=member_id,
            occurred_at=at,
            total_minor=12900,
            paid_minor=12900,
        ),
        member_id,
        at,
    )


async def test_a_transactional_message_goes_to_every_channel_even_at_night(notifier: Harness):
    providers = notifier.use(
        {c: [ScriptedProvider(f"{c}-primary")] for c in ("email", "sms", "wechat", "push")}
    )
    member = notifier.members.add(new_member())
    await notifier.deliver(
        registered(member, consents={}, at=NIGHT), shipped(member, NIGHT), at=NIGHT
    )

    statuses = await notifier.statuses(member, "order.shipped")
    assert statuses == {c: ("queued", None) for c in ("inbox", "email", "sms", "wechat", "push")}
    await notifier.run_job("dispatch", NIGHT)

    statuses = await notifier.statuses(member, "order.shipped")
    assert statuses == {c: ("sent", None) for c in ("inbox", "email", "sms", "wechat", "push")}
    (sms,) = providers["sms"][0].to(member)
    assert sms.to == "+8613800138000"
    assert sms.body.startswith("【会员中心】您的订单 EXT-") and "SF Express" in sms.body
    (email,) = providers["email"][0].to(member)
    assert email.subject == "订单已发货" and email.body.startswith("Ada，您好")
    inbox = {m["event_type"]: m for m in await notifier.inbox(member)}
    assert sorted(inbox) == ["member.registered", "order.shipped"]
    message = inbox["order.shipped"]
    assert message["title"] == "订单已发货" and "SF123" in message["body"]
    sent = [
        e
        for e in await notifier.notifications(member, "sent")
        if e["event_type"] == "order.shipped"
    ]
    assert sorted(e["channel"] for e in sent) == ["email", "inbox", "push", "sms", "wechat"]
    assert all(e["category"] == "transactional" and e["attempts"] == 1 for e in sent)
    # the welcome message is marketing and nobody consented: only the inbox has it
    welcome = await notifier.statuses(member, "member.registered")
    assert welcome["inbox"] == ("sent", None)
    assert {c: s for c, s in welcome.items() if c != "inbox"} == {
        c: ("suppressed", "no_consent") for c in ("email", "sms", "wechat", "push")
    }


async def test_a_duplicate_event_makes_one_delivery_per_channel(notifier: Harness):
    notifier.use({c: [ScriptedProvider(f"{c}-primary")] for c in ("email", "sms")})
    member = notifier.members.add(new_member(), wechat=None, push=None)
    twice = shipped(member)
    await notifier.deliver(twice)
    await notifier.deliver(twice)  # redelivered by the broker: the inbox skips it
    # even past the consumer's inbox (another consumer group, a replay), the key holds
    from loyalty_notifier.service_layer.intake import apply_batch

    async with notifier.runtime.transaction() as conn:
        await apply_batch(notifier.notifier, conn, [twice], T0)
    rows = await notifier.sql("SELECT channel FROM deliveries WHERE event_id = :e", e=twice.id)
    assert sorted(r.channel for r in rows) == ["email", "inbox", "push", "sms", "wechat"]
    await notifier.run_job("dispatch", T0)
    await notifier.run_job("dispatch", T0 + timedelta(minutes=1))
    statuses = await notifier.statuses(member, "order.shipped")
    assert statuses["sms"] == ("sent", None)
    assert statuses["wechat"] == ("suppressed", "no_address")
    assert len(notifier.notifier.providers["sms"][0].to(member)) == 1


async def test_marketing_without_consent_is_suppressed(notifier: Harness):
    providers = notifier.use(
        {c: [ScriptedProvider(f"{c}-primary")] for c in ("email", "sms", "wechat", "push")}
    )
    member = notifier.members.add(new_member())
    offer = coupon_issued(member)
    await notifier.deliver(registered(member, consents={"email": True, "sms": False}), offer)
    statuses = await notifier.statuses(member, "coupon.issued")
    assert statuses == {
        "inbox": ("queued", None),
        "email": ("queued", None),
        "sms": ("suppressed", "no_consent"),
        "wechat": ("suppressed", "no_consent"),
        "push": ("suppressed", "no_consent"),
    }
    suppressed = [
        e for e in await notifier.notifications(member, "suppressed") if e["event_id"] == offer.id
    ]
    assert sorted(e["channel"] for e in suppressed) == ["push", "sms", "wechat"]
    assert {e["reason"] for e in suppressed} == {"no_consent"}
    await notifier.run_job("dispatch", T0)
    (email,) = [m for m in providers["email"][0].to(member) if m.event_type == "coupon.issued"]
    assert "¥10.00" in email.body and "¥50.00" in email.body
    assert providers["sms"][0].to(member) == []


async def test_consent_given_later_through_member_updated_and_the_preferences_api(
    notifier: Harness,
):
    notifier.use({c: [ScriptedProvider(f"{c}-primary")] for c in ("email", "sms")})
    member = notifier.members.add(new_member(), wechat=None, push=None)
    await notifier.deliver(registered(member, consents={}))
    updated = event(
        "member.updated",
        MemberUpdated(
            member_id=member, changed=["consents"], consents={"sms": True}, occurred_at=T0
        ),
        member,
    )
    await notifier.deliver(updated)
    response = await notifier.client.put(
        f"/v1/members/{member}/preferences", json={"channels": {"email": {"marketing": True}}}
    )
    assert response.status_code == 200, response.text
    assert response.json()["channels"]["sms"] == {"marketing": True}
    await notifier.deliver(coupon_issued(member))
    statuses = await notifier.statuses(member, "coupon.issued")
    assert statuses["sms"] == ("queued", None) and statuses["email"] == ("queued", None)
    # withdrawn before the dispatcher got to it: checked again when sending
    response = await notifier.client.put(
        f"/v1/members/{member}/preferences", json={"channels": {"sms": {"marketing": False}}}
    )
    assert response.status_code == 200
    await notifier.run_job("dispatch", T0)
    statuses = await notifier.statuses(member, "coupon.issued")
    assert statuses["sms"] == ("suppressed", "no_consent")
    assert statuses["email"] == ("sent", None)


async def test_quiet_hours_defer_marketing_until_the_window_ends(notifier: Harness):
    providers = notifier.use({"sms": [ScriptedProvider("sms-primary")]})
    member = notifier.members.add(new_member(), email=None, wechat=None, push=None)
    await notifier.deliver(registered(member, consents={"sms": True}, at=NIGHT), at=NIGHT)
    found = await notifier.deliveries(member)
    welcome = found[("member.registered", "sms")]
    assert (welcome["status"], welcome["reason"]) == ("deferred", "quiet_hours")
    assert datetime.fromisoformat(welcome["deferred_until"]) == NEXT_MORNING
    assert found[("member.registered", "inbox")]["status"] == "queued"  # the inbox is silent

    await notifier.run_job("dispatch", NIGHT + timedelta(minutes=5))
    assert (await notifier.statuses(member, "member.registered"))["sms"][0] == "deferred"
    counts = await notifier.run_job("release-deferred", NEXT_MORNING - timedelta(minutes=1))
    assert (await notifier.statuses(member, "member.registered"))["sms"][0] == "deferred"
    counts = await notifier.run_job("release-deferred", NEXT_MORNING)
    assert counts["released"] >= 1
    assert (await notifier.statuses(member, "member.registered"))["sms"] == ("queued", None)
    await notifier.run_job("dispatch", NEXT_MORNING)
    assert (await notifier.statuses(member, "member.registered"))["sms"] == ("sent", None)
    (sms,) = providers["sms"][0].to(member)
    assert "REF12345" in sms.body


async def test_quiet_hours_follow_the_members_own_window_and_time_zone(notifier: Harness):
    notifier.use({"email": [ScriptedProvider("email-primary")]})
    member = notifier.members.add(new_member(), phone=None, wechat=None, push=None)
    await notifier.deliver(
        registered(member, consents={"email": True}, timezone="Europe/Berlin", locale="en")
    )
    response = await notifier.client.put(
        f"/v1/members/{member}/preferences",
        json={"quiet_hours": {"start": "12:00", "end": "14:00"}},
    )
    assert response.json()["quiet_hours"] == {"start": "12:00", "end": "14:00"}
    at = datetime(2026, 3, 2, 11, 30, tzinfo=UTC)  # 12:30 in Berlin
    await notifier.deliver(coupon_issued(member, at), at=at)
    email = (await notifier.deliveries(member))[("coupon.issued", "email")]
    assert email["status"] == "deferred"
    assert datetime.fromisoformat(email["deferred_until"]) == datetime(2026, 3, 2, 13, tzinfo=UTC)
    response = await notifier.client.put(
        f"/v1/members/{member}/preferences", json={"quiet_hours": None}
    )
    assert response.json()["quiet_hours"] is None


async def test_the_frequency_cap_counts_events_once_across_channels(notifier: Harness):
    providers = notifier.use(
        {c: [ScriptedProvider(f"{c}-primary")] for c in ("email", "sms", "wechat", "push")}
    )
    member = notifier.members.add(new_member(), wechat=None, push=None)
    await notifier.deliver(registered(member, consents={"email": True, "sms": True}))
    # the welcome message was the first marketing event of the day; two more offers follow
    offers = [coupon_issued(member, T0 + timedelta(minutes=i)) for i in range(1, 3)]
    await notifier.deliver(*offers)
    await notifier.run_job("dispatch", T0 + timedelta(minutes=5))

    welcome = await notifier.statuses(member, "member.registered")
    assert welcome["email"] == ("sent", None) and welcome["sms"] == ("sent", None)
    by_event: dict[str, dict[str, tuple[str, str | None]]] = {}
    for d in await notifier.delivery_list(member):
        by_event.setdefault(d["event_id"], {})[d["channel"]] = (d["status"], d["reason"])
    assert by_event[offers[0].id]["email"] == ("sent", None)
    assert by_event[offers[0].id]["sms"] == ("sent", None)  # the same event: counted once
    assert by_event[offers[1].id]["email"] == ("suppressed", "frequency_cap")
    assert by_event[offers[1].id]["sms"] == ("suppressed", "frequency_cap")
    assert by_event[offers[1].id]["inbox"] == ("sent", None)  # the inbox is not capped
    assert len(providers["email"][0].to(member)) == 2
    capped = [
        e
        for e in await notifier.notifications(member, "suppressed")
        if e["reason"] == "frequency_cap"
    ]
    assert len(capped) == 2

    # a new local day opens the cap again (00:00 Shanghai = 16:00 UTC)
    tomorrow = datetime(2026, 3, 3, 2, 0, tzinfo=UTC)  # 10:00 the next day in Shanghai
    later = coupon_issued(member, tomorrow)
    await notifier.deliver(later, at=tomorrow)
    await notifier.run_job("dispatch", tomorrow)
    statuses = {
        d["channel"]: d["status"]
        for d in await notifier.delivery_list(member)
        if d["event_id"] == later.id
    }
    assert statuses["email"] == "sent"


async def test_a_failed_send_is_retried_with_backoff_then_succeeds(notifier: Harness):
    flaky = ScriptedProvider("sms-primary", failures=1)
    notifier.use({"sms": [flaky]})
    member = notifier.members.add(new_member(), email=None, wechat=None, push=None)
    await notifier.deliver(shipped(member))

    await notifier.run_job("dispatch", T0)
    sms = (await notifier.deliveries(member))[("order.shipped", "sms")]
    assert (sms["status"], sms["attempts"], sms["provider"]) == ("queued", 1, "sms-primary")
    assert sms["reason"].startswith("provider_error")
    await notifier.run_job("dispatch", T0 + timedelta(milliseconds=500))  # backoff not over
    assert flaky.tries == 1
    await notifier.run_job("dispatch", T0 + timedelta(seconds=1))
    sms = (await notifier.deliveries(member))[("order.shipped", "sms")]
    assert (sms["status"], sms["attempts"], sms["provider"]) == ("sent", 2, "sms-primary")
    assert sms["reason"] is None
    assert len(flaky.to(member)) == 1


async def test_a_provider_out_of_retries_hands_over_to_the_next(notifier: Harness):
    primary = ScriptedProvider("sms-primary", failures=10**6)
    fallback = ScriptedProvider("sms-fallback")
    notifier.use({"sms": [primary, fallback]})
    member = notifier.members.add(new_member(), email=None, wechat=None, push=None)
    await notifier.deliver(shipped(member))

    await notifier.run_job("dispatch", T0)
    await notifier.run_job("dispatch", T0 + timedelta(seconds=1))
    sms = (await notifier.deliveries(member))[("order.shipped", "sms")]
    assert (sms["status"], sms["attempts"], sms["provider"]) == ("sent", 3, "sms-fallback")
    assert primary.tries == 2 and len(fallback.to(member)) == 1
    (event_sent,) = [
        e for e in await notifier.notifications(member, "sent") if e["channel"] == "sms"
    ]
    assert event_sent["provider"] == "sms-fallback" and event_sent["attempts"] == 3


async def test_a_delivery_fails_when_every_provider_gives_up(notifier: Harness):
    primary = ScriptedProvider("sms-primary", failures=10**6)
    fallback = ScriptedProvider("sms-fallback", failures=10**6, permanent=True)
    notifier.use({"sms": [primary, fallback]})
    member = notifier.members.add(new_member(), email=None, wechat=None, push=None)
    await notifier.deliver(shipped(member))
    await notifier.run_job("dispatch", T0)
    await notifier.run_job("dispatch", T0 + timedelta(seconds=1))
    sms = (await notifier.deliveries(member))[("order.shipped", "sms")]
    assert (sms["status"], sms["attempts"], sms["provider"]) == ("failed", 3, "sms-fallback")
    assert fallback.tries == 1  # a permanent error is not retried
    (failed,) = await notifier.notifications(member, "failed")
    assert failed["reason"].startswith("provider_error") and failed["channel"] == "sms"


async def test_contact_data_problems(notifier: Harness):
    notifier.use({"sms": [ScriptedProvider("sms-primary")]})
    unknown = new_member()  # the member service does not know them
    await notifier.deliver(shipped(unknown))
    await notifier.run_job("dispatch", T0)
    assert (await notifier.statuses(unknown, "order.shipped"))["sms"] == (
        "suppressed",
        "unknown_member",
    )

    member = notifier.members.add(new_member(), email=None, wechat=None, push=None)
    notifier.members.down = True
    try:
        await notifier.deliver(shipped(member))
        await notifier.run_job("dispatch", T0)
        sms = (await notifier.deliveries(member))[("order.shipped", "sms")]
        assert (sms["status"], sms["reason"], sms["attempts"]) == (
            "queued",
            "member_service_unavailable",
            0,
        )
    finally:
        notifier.members.down = False
    await notifier.run_job("dispatch", T0 + timedelta(seconds=30))
    assert (await notifier.statuses(member, "order.shipped"))["sms"] == ("sent", None)


async def test_erased_members_get_nothing_and_their_messages_are_scrubbed(notifier: Harness):
    notifier.use({"sms": [ScriptedProvider("sms-primary")]})
    member = notifier.members.add(new_member(), email=None, wechat=None, push=None)
    await notifier.deliver(registered(member, consents={"sms": True}, at=NIGHT), at=NIGHT)
    await notifier.run_job("dispatch", NIGHT)
    assert len(await notifier.inbox(member)) == 1
    await notifier.deliver(placed(member, new_member("o"), NIGHT), at=NIGHT)
    assert (await notifier.statuses(member, "member.registered"))["sms"][0] == "deferred"

    erased = event(
        "member.erased", MemberErased(member_id=member, occurred_at=NIGHT), member, NIGHT
    )
    await notifier.deliver(erased, at=NIGHT)
    assert (await notifier.statuses(member, "member.registered"))["sms"] == (
        "suppressed",
        "member_erased",
    )
    assert await notifier.inbox(member) == []
    reminders = await notifier.sql(
        "SELECT status FROM payment_reminders WHERE member_id = :m", m=member
    )
    assert [r.status for r in reminders] == ["cancelled"]
    before = len(await notifier.deliveries(member))
    await notifier.deliver(shipped(member, NIGHT), at=NIGHT)
    assert len(await notifier.deliveries(member)) == before
    preferences = (await notifier.client.get(f"/v1/members/{member}/preferences")).json()
    assert preferences["erased"] is True and preferences["channels"]["sms"]["marketing"] is False


async def test_payment_reminder_for_an_order_unpaid_after_30_minutes(notifier: Harness):
    providers = notifier.use({"sms": [ScriptedProvider("sms-primary")]})
    member = notifier.members.add(new_member(), email=None, wechat=None, push=None)
    unpaid, settled = new_member("o"), new_member("o")
    await notifier.deliver(placed(member, unpaid), placed(member, settled))
    await notifier.deliver(paid(member, settled, T0 + timedelta(minutes=10)))

    await notifier.run_job("payment-reminders", T0 + timedelta(minutes=29))
    assert await notifier.statuses(member, "order.payment_reminder") == {}
    counts = await notifier.run_job("payment-reminders", T0 + timedelta(minutes=31))
    assert counts["reminded"] >= 1
    assert (await notifier.statuses(member, "order.payment_reminder"))["sms"] == ("queued", None)
    await notifier.run_job("dispatch", T0 + timedelta(minutes=31))
    (sms,) = providers["sms"][0].to(member)
    assert f"EXT-{unpaid}" in sms.body and "¥129.00" in sms.body
    # again: nothing more
    await notifier.run_job("payment-reminders", T0 + timedelta(minutes=40))
    assert (
        len(
            [
                d
                for d in (await notifier.deliveries(member)).values()
                if d["event_type"] == "order.payment_reminder"
            ]
        )
        == 5
    )


async def test_expiry_reminders_and_winback(notifier: Harness):
    providers = notifier.use(
        {c: [ScriptedProvider(f"{c}-primary")] for c in ("email", "sms", "wechat", "push")}
    )
    member = notifier.members.add(new_member(), locale="en")
    await notifier.deliver(registered(member, consents={"email": True}, locale="en"))
    expires = T0 + timedelta(days=30)
    points = event(
        "points.expiring_soon",
        PointsExpiringSoon(
            member_id=member,
            available_after=500,
            pending_after=0,
            occurred_at=T0,
            points=300,
            expires_at=expires,
            lots=[ExpiringLot(lot_id="L1", points=300, expires_at=expires)],
        ),
        member,
    )
    coupon = event(
        "coupon.expiring_soon",
        CouponExpiringSoon(
            coupon_code="CPN-9",
            template_code="NEW10",
            member_id=member,
            valid_from=T0,
            valid_until=T0 + timedelta(days=3),
            occurred_at=T0,
        ),
        member,
    )
    lapsed = event(
        "member.lifecycle_changed",
        MemberLifecycleChanged(
            member_id=member, old_stage="cooling", new_stage="easy_winback", as_of=T0
        ),
        member,
    )
    await notifier.deliver(points, lapsed, coupon)
    assert set((await notifier.statuses(member, "points.expiring_soon")).values()) == {
        ("queued", None)
    }
    coupon_statuses = await notifier.statuses(member, "coupon.expiring_soon")
    assert coupon_statuses["sms"] == ("suppressed", "no_consent")
    assert (await notifier.statuses(member, "member.winback"))["email"] == ("queued", None)
    await notifier.run_job("dispatch", T0)
    subjects = sorted(m.subject for m in providers["email"][0].to(member))
    assert subjects == ["Points expiring soon", "We miss you", "Welcome to the club"]
    # the coupon reminder was the third marketing message of the day: over the cap
    assert (await notifier.statuses(member, "coupon.expiring_soon"))["email"] == (
        "suppressed",
        "frequency_cap",
    )
    (sms,) = providers["sms"][0].to(member)
    assert sms.body == (
        "[Loyalty] 300 of your points start to expire on 2026-04-01. Use them before they go."
    )


async def test_an_offer_that_arrives_before_the_sign_up_waits_for_the_consents(
    notifier: Harness,
):
    """Topics are not ordered against each other: a coupon.issued may reach the notifier before
    the member.registered that carries the consents. Consent is then decided when sending, from
    the member service, instead of being refused for good."""
    providers = notifier.use(
        {c: [ScriptedProvider(f"{c}-primary")] for c in ("email", "sms", "wechat", "push")}
    )
    member = notifier.members.add(new_member(), consents={"email": True})
    offer = coupon_issued(member)
    await notifier.deliver(offer)  # no member.registered yet
    statuses = await notifier.statuses(member, "coupon.issued")
    assert statuses["email"] == ("queued", None) and statuses["sms"] == ("queued", None)
    await notifier.run_job("dispatch", T0)
    statuses = await notifier.statuses(member, "coupon.issued")
    assert statuses["email"][0] == "sent"
    assert statuses["sms"] == ("suppressed", "no_consent")
    assert (
        len([m for m in providers["email"][0].to(member) if m.event_type == "coupon.issued"]) == 1
    )


async def test_a_template_failing_on_a_members_data_fails_the_delivery_without_quoting_it(
    notifier: Harness, caplog
):
    """The template renders with the sample data when saved (the sample member is silver) and
    fails at send time on the member's name; the failure says what and where, never the name."""
    import structlog

    providers = notifier.use({"sms": [ScriptedProvider("sms-primary")]})
    name = "Ada Lovelace-13800138000"
    member = notifier.members.add(new_member(), name=name, email=None, wechat=None, push=None)
    url = "/v1/templates/order.shipped/sms/zh-CN"
    body = '订单已发出\n{% if member.tier == "bronze" %}{{ member.name | localtime }}{% endif %}'
    put = await notifier.client.put(url, json={"body": body})
    assert put.status_code == 200, put.text
    try:
        with structlog.testing.capture_logs() as logs, caplog.at_level("DEBUG"):
            await notifier.deliver(shipped(member))
            await notifier.run_job("dispatch", T0)
    finally:
        await notifier.client.delete(url)
    sms = (await notifier.deliveries(member))[("order.shipped", "sms")]
    assert sms["status"] == "failed"
    assert sms["reason"] == "template_error: ValueError at line 2"
    assert providers["sms"][0].to(member) == []
    (failed,) = await notifier.notifications(member, "failed")
    assert failed["reason"] == sms["reason"]
    stored = await notifier.sql("SELECT reason FROM deliveries WHERE member_id = :m", m=member)
    published = await notifier.sql("SELECT value FROM outbox WHERE key = :m", m=member)
    for said in (
        *[r.reason or "" for r in stored],
        *[bytes(r.value).decode() for r in published],
        repr(logs),
        caplog.text,
    ):
        assert "Ada" not in said and "13800138000" not in said


async def test_a_stored_template_over_the_limits_fails_its_delivery_not_the_service(
    notifier: Harness,
):
    """A template saved before the limits existed (written straight into the table) fails the
    deliveries that use it; the dispatcher goes on with the others."""
    import time

    providers = notifier.use({"sms": [ScriptedProvider("sms-primary")]})
    member = notifier.members.add(new_member(), email=None, wechat=None, push=None)
    bomb = (
        "{% macro m(n) %}{% if n %}{{ m(n - 1) }}{{ m(n - 1) }}{% endif %}{% endmacro %}{{ m(45) }}"
    )
    async with notifier.runtime.transaction() as conn:
        await conn.execute(
            text(
                "INSERT INTO templates (event_type, channel, locale, subject, body, updated_at) "
                "VALUES ('order.shipped', 'sms', 'zh-CN', NULL, :b, :now)"
            ),
            {"b": bomb, "now": T0},
        )
    notifier.notifier.templates.invalidate()
    try:
        await notifier.deliver(shipped(member))
        started = time.monotonic()
        counts = await notifier.run_job("dispatch", T0)
        assert time.monotonic() - started < 5
    finally:
        await notifier.client.delete("/v1/templates/order.shipped/sms/zh-CN")
    statuses = await notifier.statuses(member, "order.shipped")
    assert statuses["sms"][0] == "failed"
    assert statuses["sms"][1].startswith("template_error: RenderLimitExceeded")
    assert statuses["inbox"] == ("sent", None)  # the built-in inbox template is fine
    assert counts["failed"] >= 1 and counts["sent"] >= 1
    assert providers["sms"][0].to(member) == []


async def test_erasure_forgets_the_stored_answers_to_idempotency_keys(notifier: Harness):
    """Marking an inbox message read with an Idempotency-Key stores the answer (title and body)
    for replays; the member's erasure deletes it in the same transaction (docs/http.md)."""
    notifier.use({})
    member = notifier.members.add(new_member(), email=None, phone=None, wechat=None, push=None)
    await notifier.deliver(shipped(member))
    await notifier.run_job("dispatch", T0)
    (message,) = await notifier.inbox(member)
    path = f"/v1/members/{member}/inbox/{message['message_id']}/read"
    read = await notifier.client.post(path, headers={"Idempotency-Key": f"read-{member}"})
    assert read.status_code == 200, read.text
    again = await notifier.client.post(path, headers={"Idempotency-Key": f"read-{member}"})
    assert again.headers.get("idempotent-replayed") == "true"

    def holding(rows: list) -> list:
        texts = [message["body"].encode(), (message["title"] or message["body"]).encode()]
        return [r for r in rows if any(t in bytes(r.response_body or b"") for t in texts)]

    everything = "SELECT key, path, response_body FROM idempotency_keys"
    assert holding(await notifier.sql(everything))  # the answer holds the message's text

    erased = event("member.erased", MemberErased(member_id=member, occurred_at=T0), member)
    await notifier.deliver(erased)
    rows = await notifier.sql(everything)
    assert holding(rows) == []
    assert [r.key for r in rows if member in r.path] == []
    after = await notifier.client.post(path, headers={"Idempotency-Key": f"read-{member}"})
    assert after.status_code == 404  # a new request: the message went with the inbox
