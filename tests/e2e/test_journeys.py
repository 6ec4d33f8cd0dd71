"""The retailer's journeys, end to end: the platform started once as `make run` starts it (five
services, the embedded PostgreSQL and broker, a fresh data directory) and driven only over HTTP
with the dev key, as a POS terminal, a web shop or a marketer's console would.

Time: the services run on the real clock; business times are backdated (`occurred_at`) and the
nightly jobs are run with `as_of` (`POST /v1/admin/jobs/{job}/run`) to move time forward.

Events are counted through HTTP too: the notifier consumes every topic but its own, and its
`/metrics` count each fresh event per type (`loyalty_events_processed_total`), so the difference
between two readings is the number of events the platform produced in between.

Members live in a time zone where it is early afternoon when the module runs (an `Etc/GMT±N`
zone), so that the default quiet hours (22:00-08:00) never defer a message by accident; journey 5
sets quiet hours around the current time on purpose.
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from .platform import API_KEY, Platform, wait_for

pytestmark = pytest.mark.slow

DAY = timedelta(days=1)
SETTLE_SECONDS = 1.5
METRIC = re.compile(r'^loyalty_events_processed_total\{service="notifier",type="([^"]+)"\} (\S+)$')
OPEN_DELIVERY = ("queued",)


# --------------------------------------------------------------------------- the HTTP client


class Api:
    """The five services' public APIs with the dev key."""

    def __init__(self, platform: Platform) -> None:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        self.clients = {
            name: httpx.Client(base_url=platform.base_url(name), headers=headers, timeout=30)
            for name in ("member", "points", "coupon", "notifier", "segmenter")
        }

    def close(self) -> None:
        for client in self.clients.values():
            client.close()

    def request(
        self, service: str, method: str, path: str, expect: int | tuple[int, ...] = 200, **kw: Any
    ) -> Any:
        response = self.clients[service].request(method, path, **kw)
        allowed = (expect,) if isinstance(expect, int) else expect
        assert response.status_code in allowed, (
            f"{method} {service}{path} -> {response.status_code}: {response.text}"
        )
        return response.json() if response.content else None

    def get(self, service: str, path: str, **kw: Any) -> Any:
        return self.request(service, "GET", path, **kw)

    def post(self, service: str, path: str, body: Any, expect: Any = (200, 201, 202)) -> Any:
        return self.request(service, "POST", path, expect=expect, json=body)

    def items(self, service: str, path: str, **params: Any) -> list[dict[str, Any]]:
        """Every item of a list endpoint, page after page."""
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            query = {**params, "limit": 500, **({"cursor": cursor} if cursor else {})}
            page = self.get(service, path, params=query)
            out.extend(page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                return out

    def job(self, service: str, job: str, as_of: datetime) -> dict[str, Any]:
        answer = self.post(service, f"/v1/admin/jobs/{job}/run", {"as_of": iso(as_of)}, 200)
        return answer["counts"]

    # -- what a member has

    def account(self, member_id: str) -> dict[str, Any]:
        return self.get("points", f"/v1/accounts/{member_id}")

    def ledger(self, member_id: str) -> list[dict[str, Any]]:
        return self.items("points", f"/v1/accounts/{member_id}/ledger")

    def wallet(self, member_id: str, **params: Any) -> list[dict[str, Any]]:
        return self.items("coupon", f"/v1/members/{member_id}/coupons", **params)

    def deliveries(self, member_id: str) -> list[dict[str, Any]]:
        return self.items("notifier", "/v1/deliveries", member_id=member_id)

    def profile(self, member_id: str) -> dict[str, Any] | None:
        response = self.clients["segmenter"].get(f"/v1/profiles/{member_id}")
        return response.json() if response.status_code == 200 else None

    # -- events, counted by the notifier's consumer

    def events(self) -> Counter[str]:
        text = self.clients["notifier"].get("/metrics").text
        counts: Counter[str] = Counter()
        for line in text.splitlines():
            match = METRIC.match(line)
            if match:
                counts[match.group(1)] = int(float(match.group(2)))
        return counts


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def daytime_zone(now: datetime) -> str:
    """An IANA zone where it is 13:xx now (Etc/GMT-5 is UTC+5)."""
    offset = (13 - now.astimezone(UTC).hour) % 24
    if offset > 14:
        offset -= 24
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"


def member_day_factor(moment: datetime, tz: str) -> int:
    """Member day (the 20th, in the member's time zone) doubles purchase points."""
    return 2 if moment.astimezone(ZoneInfo(tz)).day == 20 else 1


def off_member_day(moment: datetime, tz: str) -> datetime:
    """The same time, moved a day back if it falls on member day (the 20th, local)."""
    return moment - DAY if moment.astimezone(ZoneInfo(tz)).day == 20 else moment


class Events:
    """Events produced since a mark, by type."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.base = api.events()

    def since(self) -> Counter[str]:
        now = self.api.events()
        return Counter({t: n - self.base.get(t, 0) for t, n in now.items() if n > self.base[t]})

    def expect(self, expected: dict[str, int], timeout: float = 45) -> Counter[str]:
        """Wait until at least `expected` arrived, give stragglers a moment, then demand exactly
        `expected` for the types it names."""
        try:
            wait_for(
                lambda: all(self.since()[t] >= n for t, n in expected.items()),
                f"events {expected}",
                timeout,
            )
        except AssertionError as error:
            raise AssertionError(f"{error}; seen {dict(self.since())}") from None
        time.sleep(SETTLE_SECONDS)
        seen = self.since()
        assert {t: seen[t] for t in expected} == expected, dict(seen)
        return seen


def quiet(api: Api, timeout: float = 45) -> None:
    """Wait until no event has arrived for a while: what a step set off has played out."""
    last = api.events()
    stable_since = time.monotonic()
    deadline = stable_since + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = api.events()
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= SETTLE_SECONDS:
            return
    raise AssertionError("the platform did not settle")


def settled_deliveries(api: Api, member_id: str, count: int) -> list[dict[str, Any]]:
    """The member's deliveries once `count` exist and none is still queued."""

    def check() -> list[dict[str, Any]] | None:
        rows = api.deliveries(member_id)
        if len(rows) >= count and not any(r["status"] in OPEN_DELIVERY for r in rows):
            return rows
        return None

    rows = wait_for(check, f"{count} settled deliveries of {member_id}")
    assert len(rows) == count, summary(rows)
    return rows


def summary(rows: list[dict[str, Any]]) -> list[tuple[str, str, str, str | None]]:
    return sorted((r["event_type"], r["channel"], r["status"], r["reason"]) for r in rows)


def marketing_sent(rows: list[dict[str, Any]]) -> int:
    """Marketing events that went out on a capped channel (every channel but the inbox)."""
    return len(
        {
            r["event_id"]
            for r in rows
            if r["category"] == "marketing" and r["channel"] != "inbox" and r["status"] == "sent"
        }
    )


def by_channel(rows: list[dict[str, Any]], event_type: str) -> dict[str, tuple[str, str | None]]:
    out = {}
    for r in rows:
        if r["event_type"] == event_type:
            assert r["channel"] not in out, f"two {event_type} deliveries on {r['channel']}"
            out[r["channel"]] = (r["status"], r["reason"])
    return out


# --------------------------------------------------------------------------- the platform


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    data_dir: Path = tmp_path_factory.mktemp("journeys") / "run"
    running = Platform.fresh(data_dir)
    running.start()
    try:
        yield running
    finally:
        running.interrupt()


@pytest.fixture(scope="module")
def api(platform: Platform) -> Iterator[Api]:
    client = Api(platform)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def retailer(api: Api) -> dict[str, Any]:
    """What a marketer sets up before the journeys, through the public APIs: coupon templates,
    the welcome, first-order and win-back campaigns, and the win-back segment."""
    tag = f"{random.randrange(16**6):06X}"  # unique codes, should the platform be reused
    codes = {
        name: f"{name}-{tag}"
        for name in ("NEW-20OFF", "FREESHIP", "SNACKS-15", "BACK-30", "WELCOME", "FIRST-ORDER")
    }
    codes["WINBACK"] = f"WINBACK-{tag}"
    codes["segment"] = f"easy-winback-{tag.lower()}"
    templates = [
        {"code": codes["NEW-20OFF"], "name": "20 yuan off 100", "kind": "amount_off",
         "value": 2000, "min_spend_minor": 10000, "valid_days": 30},
        {"code": codes["FREESHIP"], "name": "Free shipping", "kind": "free_shipping",
         "value": 0, "valid_days": 14},
        {"code": codes["SNACKS-15"], "name": "15% off snacks", "kind": "percent_off",
         "value": 15, "max_discount_minor": 3000, "categories": ["snacks"], "valid_days": 14,
         "per_member_limit": 5},
        {"code": codes["BACK-30"], "name": "We miss you", "kind": "amount_off", "value": 3000,
         "min_spend_minor": 15000, "valid_days": 14, "per_member_limit": 3},
    ]  # fmt: skip
    for template in templates:
        api.post("coupon", "/v1/coupon-templates", template, 201)
    api.post(
        "segmenter",
        "/v1/segments",
        {
            "code": codes["segment"],
            "name": "Easy win-back",
            "rule": {"field": "lifecycle_stage", "op": "eq", "value": "easy_winback"},
        },
        201,
    )
    campaigns = [
        {"code": codes["WELCOME"], "template_codes": [codes["NEW-20OFF"], codes["FREESHIP"]],
         "trigger": {"type": "member.registered"}},
        {"code": codes["FIRST-ORDER"], "template_codes": [codes["SNACKS-15"]],
         "trigger": {"type": "first_order"}},
        {"code": codes["WINBACK"], "template_codes": [codes["BACK-30"]],
         "trigger": {"type": "segment.entered", "segment_code": codes["segment"]}},
    ]  # fmt: skip
    for campaign in campaigns:
        api.post("coupon", "/v1/campaigns", campaign, 201)
    ladder = api.get("member", "/v1/tiers")
    assert [(t["code"], t["threshold"], t["points_multiplier"]) for t in ladder["tiers"]] == [
        ("bronze", 0, 1.0),
        ("silver", 100000, 1.2),
        ("gold", 500000, 1.5),
    ]
    return codes


_phones: set[str] = set()


def phone() -> str:
    while True:
        number = "139" + "".join(random.choices("0123456789", k=8))
        if number not in _phones:
            _phones.add(number)
            return number


def sign_up(api: Api, **fields: Any) -> dict[str, Any]:
    """A member signs up at the till with the sms (and email) marketing consent, and what the
    sign-up sets off has played out (welcome coupons, signup points, welcome messages)."""
    body = {
        "phone": phone(),
        "timezone": daytime_zone(datetime.now(UTC)),
        "consents": {"sms": True, "email": True},
        **fields,
    }
    member = api.post("member", "/v1/members", body, 201)
    wait_for(lambda: api.account(member["member_id"])["available"] >= 100, "the signup bonus")
    quiet(api)
    return member


def order(
    api: Api,
    member_id: str,
    paid_minor: int,
    occurred_at: datetime,
    *,
    total_minor: int | None = None,
    channel: str = "pos",
    coupon_codes: list[str] | None = None,
    lines: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    body = {
        "channel": channel,
        "external_id": f"{channel.upper()}-{random.randrange(10**12):012d}",
        "store_id": "store-sh-001" if channel == "pos" else None,
        "member_id": member_id,
        "occurred_at": iso(occurred_at),
        "status": "paid",
        "currency": "CNY",
        "total_minor": total_minor if total_minor is not None else paid_minor,
        "paid_minor": paid_minor,
        "lines": lines or [],
        "coupon_codes": coupon_codes or [],
    }
    placed = api.post("member", "/v1/orders", body, 202)
    assert placed["status"] == "paid" and placed["member_id"] == member_id
    return placed


def earns(ledger: list[dict[str, Any]], order_id: str) -> list[dict[str, Any]]:
    return [
        e for e in ledger if e["kind"] == "earn" and (e["source"] or {}).get("order_id") == order_id
    ]


# --------------------------------------------------------------------------- the journeys


def test_1_sign_up_with_consent(api: Api, retailer: dict[str, Any]) -> None:
    """Sign-up with consent → welcome coupons in the wallet, 100 points, welcome message."""
    events = Events(api)
    tz = daytime_zone(datetime.now(UTC))
    member = api.post(
        "member",
        "/v1/members",
        {
            "phone": phone(),
            "email": "mei@example.com",
            "timezone": tz,
            "channel": "pos",
            "store_id": "store-sh-001",
            "consents": {"sms": True, "email": True},
        },
        201,
    )
    member_id = member["member_id"]
    assert member["tier"] == "bronze" and member["phone"].startswith("+86")

    events.expect({"member.registered": 1, "points.credited": 1, "coupon.issued": 2})

    account = api.account(member_id)
    assert (account["available"], account["pending"], account["lifetime_earned"]) == (100, 0, 100)
    [entry] = api.ledger(member_id)
    assert (entry["kind"], entry["points"], entry["rule"]) == ("earn", 100, "signup")
    assert entry["source"]["type"] == "member.registered"

    wallet = api.wallet(member_id, status="issued")
    assert sorted(c["template_code"] for c in wallet) == sorted(
        [retailer["NEW-20OFF"], retailer["FREESHIP"]]
    )
    assert {c["campaign_code"] for c in wallet} == {retailer["WELCOME"]}

    preferences = api.get("notifier", f"/v1/members/{member_id}/preferences")
    assert preferences["channels"]["sms"]["marketing"] is True
    assert preferences["channels"]["wechat"]["marketing"] is False

    # 4 events with a message (welcome, points credited, two coupons) x 5 channels.
    rows = settled_deliveries(api, member_id, 20)
    welcome = by_channel(rows, "member.registered")
    assert welcome["inbox"] == ("sent", None), summary(rows)
    assert welcome["wechat"] == welcome["push"] == ("suppressed", "no_consent"), summary(rows)
    assert by_channel(rows, "points.credited") == {
        "inbox": ("sent", None),
        "sms": ("sent", None),
        "email": ("sent", None),
        "wechat": ("suppressed", "no_address"),
        "push": ("suppressed", "no_address"),
    }, summary(rows)
    inbox = api.items("notifier", f"/v1/members/{member_id}/inbox")
    assert Counter(m["event_type"] for m in inbox) == Counter(
        {"member.registered": 1, "points.credited": 1, "coupon.issued": 2}
    )

    profile = wait_for(lambda: api.profile(member_id), "the member's profile")
    assert profile["lifecycle_stage"] == "prospect" and profile["orders_count"] == 0

    # The welcome and the two coupons are marketing: in the inbox all three; by sms and email
    # the frequency cap (2 marketing messages a local day) lets two of them out and caps the
    # third, whichever arrives last (members and coupons are separate topics: either order).
    # A coupon consumed before the sign-up is decided at dispatch with the member service's
    # consents, never refused for want of them.
    coupon_rows = [r for r in rows if r["event_type"] == "coupon.issued"]
    assert len({r["event_id"] for r in coupon_rows}) == 2
    assert [r["status"] for r in coupon_rows if r["channel"] == "inbox"] == ["sent", "sent"]
    marketing = [r for r in rows if r["event_type"] in ("member.registered", "coupon.issued")]
    for channel in ("sms", "email"):
        outcomes = Counter((r["status"], r["reason"]) for r in marketing if r["channel"] == channel)
        assert outcomes == Counter({("sent", None): 2, ("suppressed", "frequency_cap"): 1}), (
            channel,
            summary(rows),
        )
    assert Counter(
        (r["channel"], r["status"], r["reason"])
        for r in coupon_rows
        if r["channel"] in ("wechat", "push")
    ) == Counter(
        {("wechat", "suppressed", "no_consent"): 2, ("push", "suppressed", "no_consent"): 2}
    ), summary(rows)


def test_2_first_order_then_release(api: Api, retailer: dict[str, Any]) -> None:
    """First order paid → pending points at the tier's multiplier, the first-order coupon,
    stage `new`; the release job a week later makes the points available."""
    member = sign_up(api)
    member_id, tz = member["member_id"], member["timezone"]
    events = Events(api)
    before = len(api.deliveries(member_id))

    occurred = off_member_day(datetime.now(UTC) - timedelta(hours=1), tz)
    paid = order(
        api,
        member_id,
        12345,
        occurred,
        total_minor=13000,
        lines=[{"sku": "SNK-0042", "category": "snacks", "quantity": 10, "unit_price_minor": 1300}],
    )
    assert paid["member_tier"] == "bronze"
    events.expect(
        {
            "order.paid": 1,
            "points.credited": 1,
            "coupon.issued": 1,
            "member.lifecycle_changed": 1,
            "member.tier_changed": 0,
        }
    )

    account = api.account(member_id)
    assert (account["available"], account["pending"]) == (100, 123)  # floor(12345/100) x 1.0
    [earn] = earns(api.ledger(member_id), paid["order_id"])
    assert (earn["points"], earn["rule"]) == (123, "purchase")
    assert parse(earn["available_at"]) == occurred + 7 * DAY

    [first_order_coupon] = [
        c for c in api.wallet(member_id) if c["campaign_code"] == retailer["FIRST-ORDER"]
    ]
    assert first_order_coupon["template_code"] == retailer["SNACKS-15"]
    assert first_order_coupon["status"] == "issued"

    profile = api.profile(member_id)
    assert profile is not None
    assert (profile["lifecycle_stage"], profile["orders_count"], profile["spend_minor"]) == (
        "new",
        1,
        12345,
    )
    assert profile["preference_tags"] == ["snacks"]

    # Points credited (transactional) on inbox and sms (no email address); the coupon message
    # is marketing: by sms only if today's cap (2) is not used up by the sign-up's messages.
    rows = settled_deliveries(api, member_id, before + 10)
    new_rows = rows[: len(rows) - before]  # newest first
    credited = by_channel(new_rows, "points.credited")
    assert credited == {
        "inbox": ("sent", None),
        "sms": ("sent", None),
        "email": ("suppressed", "no_address"),
        "wechat": ("suppressed", "no_address"),
        "push": ("suppressed", "no_address"),
    }, summary(rows)
    capped = marketing_sent(rows[len(rows) - before :]) >= 2
    assert by_channel(new_rows, "coupon.issued") == {
        "inbox": ("sent", None),
        "sms": ("suppressed", "frequency_cap") if capped else ("sent", None),
        "email": ("suppressed", "no_address"),
        "wechat": ("suppressed", "no_consent"),
        "push": ("suppressed", "no_consent"),
    }, summary(rows)

    # A day before the week is over nothing moves; a week after the order the points do.
    events = Events(api)
    api.job("points", "release-pending", occurred + 7 * DAY - timedelta(minutes=1))
    assert api.account(member_id)["pending"] == 123
    api.job("points", "release-pending", occurred + 7 * DAY + timedelta(seconds=1))
    account = api.account(member_id)
    assert (account["available"], account["pending"], account["lifetime_earned"]) == (223, 0, 223)
    events.expect({"points.released": 1})
    release = [e for e in api.ledger(member_id) if e["kind"] == "release"]
    assert [e["points"] for e in release] == [123]


def test_3_coupon_on_second_order_then_refunds(api: Api, retailer: dict[str, Any]) -> None:
    """A welcome coupon redeemed on the second order; a partial then a full refund take the
    points back to what the net amount earns, and release the coupon."""
    member = sign_up(api)
    member_id, tz = member["member_id"], member["timezone"]
    now = datetime.now(UTC)
    first = order(api, member_id, 5000, off_member_day(now - 3 * DAY, tz))
    wait_for(lambda: api.account(member_id)["pending"] == 50, "the first order's points")
    quiet(api)

    [coupon] = [c for c in api.wallet(member_id) if c["template_code"] == retailer["NEW-20OFF"]]
    code = coupon["coupon_code"]
    check = api.post(
        "coupon",
        "/v1/validations",
        {"member_id": member_id, "total_minor": 20000, "coupon_codes": [code]},
        200,
    )
    assert check["items"] == [
        {**check["items"][0], "coupon_code": code, "valid": True, "discount_minor": 2000}
    ]

    # Paid now (the coupon is valid from the sign-up on): the shop names the coupon in the
    # order and the coupon service redeems it for that order.
    events = Events(api)
    paid_at = datetime.now(UTC)
    factor = member_day_factor(paid_at, tz)
    second = order(
        api,
        member_id,
        18000,
        paid_at,
        total_minor=20000,
        channel="online",
        coupon_codes=[code],
    )
    events.expect({"order.paid": 1, "points.credited": 1, "coupon.redeemed": 1, "coupon.issued": 0})
    redeemed = api.get("coupon", f"/v1/coupons/{code}")
    assert (redeemed["status"], redeemed["order_id"]) == ("redeemed", second["order_id"])
    assert api.account(member_id)["pending"] == 50 + 180 * factor

    # Partial refund: the order keeps floor(12000 / 100) = 120 of its 180 points.
    events = Events(api)
    refund = api.post(
        "member",
        f"/v1/orders/{second['order_id']}/refunds",
        {"external_id": "RF-1", "amount_minor": 6000},
        202,
    )
    assert refund["refunded_total_minor"] == 6000
    events.expect({"order.refunded": 1, "points.reversed": 1, "coupon.released": 0})
    assert api.account(member_id)["pending"] == 50 + 120 * factor
    assert api.get("coupon", f"/v1/coupons/{code}")["status"] == "redeemed"

    # Full refund: nothing left to earn, and the coupon comes back to the wallet.
    events = Events(api)
    api.post(
        "member",
        f"/v1/orders/{second['order_id']}/refunds",
        {"external_id": "RF-2", "amount_minor": 12000},
        202,
    )
    events.expect({"order.refunded": 1, "points.reversed": 1, "coupon.released": 1})
    account = api.account(member_id)
    assert (account["available"], account["pending"], account["lifetime_earned"]) == (100, 50, 150)
    reversals = [
        e["points"]
        for e in api.ledger(member_id)
        if e["kind"] == "reverse" and (e["source"] or {}).get("order_id") == second["order_id"]
    ]
    assert sorted(reversals) == [-120 * factor, -60 * factor]
    assert api.get("coupon", f"/v1/coupons/{code}")["status"] == "issued"

    # More than was paid cannot be refunded, and changes nothing.
    problem = api.post(
        "member",
        f"/v1/orders/{second['order_id']}/refunds",
        {"external_id": "RF-3", "amount_minor": 1},
        422,
    )
    assert problem["code"] == "refund_exceeds_paid"
    profile = wait_for(
        lambda: (p := api.profile(member_id)) and p["orders_count"] == 1 and p, "the profile"
    )
    assert profile["spend_minor"] == 5000 and profile["lifecycle_stage"] == "new"
    assert first["order_id"] != second["order_id"]


def test_4_check_in_streak(api: Api, retailer: dict[str, Any]) -> None:
    """Seven check-ins on seven days in a row: 5 points each, 20 more on the seventh."""
    member = sign_up(api)
    member_id = member["member_id"]
    events = Events(api)
    now = datetime.now(UTC)
    streaks = []
    for days_ago in range(6, -1, -1):
        answer = api.post(
            "member",
            f"/v1/members/{member_id}/check-ins",
            {"occurred_at": iso(now - days_ago * DAY)},
            201,
        )
        streaks.append(answer["streak_days"])
    assert streaks == [1, 2, 3, 4, 5, 6, 7]
    again = api.post("member", f"/v1/members/{member_id}/check-ins", {}, 409)
    assert again["code"] == "already_checked_in"

    seen = events.expect({"member.checked_in": 7})
    wait_for(lambda: api.account(member_id)["available"] == 100 + 7 * 5 + 20, "the streak bonus")
    checkin_points = sorted(
        e["points"] for e in api.ledger(member_id) if e["kind"] == "earn" and e["rule"] != "signup"
    )
    assert sum(checkin_points) == 55, checkin_points
    assert checkin_points in ([5, 5, 5, 5, 5, 5, 25], [5, 5, 5, 5, 5, 5, 5, 20])
    assert seen["points.credited"] == len(checkin_points)
    listing = api.get("member", f"/v1/members/{member_id}/check-ins")
    assert listing["streak_days"] == 7 and listing["checked_in_today"] is True


def test_5_win_back(api: Api, retailer: dict[str, Any]) -> None:
    """Time passes: the nightly recompute moves the member to `easy_winback`, the win-back
    segment takes them in, the win-back campaign gives a coupon, and the marketing messages
    wait out the member's quiet hours, then go out."""
    member = sign_up(api, consents={})
    member_id, tz = member["member_id"], member["timezone"]
    now = datetime.now(UTC)
    # The member bought two months ago, and not since: `cooling` (last order 46-90 days ago).
    # (The other journeys' members bought within the last days: the recompute below, 95 days
    # after this order, leaves them `new`.)
    last_order = off_member_day(now - 60 * DAY, tz)
    order(api, member_id, 8800, last_order)
    wait_for(
        lambda: (p := api.profile(member_id)) and p["lifecycle_stage"] == "cooling",
        "stage cooling",
    )
    quiet(api)

    # The member opts in to sms, and asks for quiet hours that hold the current local time.
    api.request("member", "PATCH", f"/v1/members/{member_id}", json={"consents": {"sms": True}})
    wait_for(
        lambda: api.get("notifier", f"/v1/members/{member_id}/preferences")["channels"]["sms"][
            "marketing"
        ],
        "the sms consent at the notifier",
    )
    local = now.astimezone(ZoneInfo(tz))
    start, end = local - timedelta(hours=1), local + timedelta(hours=2)
    window = {"start": start.strftime("%H:00"), "end": end.strftime("%H:00")}
    api.request(
        "notifier",
        "PUT",
        f"/v1/members/{member_id}/preferences",
        json={"quiet_hours": window},
    )
    quiet(api)
    before = {r["delivery_id"] for r in api.deliveries(member_id)}

    # A month later: more than 90 days without an order.
    events = Events(api)
    as_of = last_order + 95 * DAY
    counts = api.job("segmenter", "recompute", as_of)
    assert counts["stage_changes"] >= 1 and counts["segment_entered"] >= 1, counts
    events.expect({"member.lifecycle_changed": 1, "segment.entered": 1, "coupon.issued": 1})
    profile = api.profile(member_id)
    assert profile is not None
    assert profile["lifecycle_stage"] == "easy_winback", profile
    assert retailer["segment"] in profile["segments"]
    members = api.items("segmenter", f"/v1/segments/{retailer['segment']}/members")
    assert member_id in {m["member_id"] for m in members}
    [winback_coupon] = [
        c for c in api.wallet(member_id) if c["campaign_code"] == retailer["WINBACK"]
    ]
    assert (winback_coupon["template_code"], winback_coupon["status"]) == (
        retailer["BACK-30"],
        "issued",
    )

    # The win-back message and the coupon message: in the inbox at once, sms deferred.
    def new_rows() -> list[dict[str, Any]] | None:
        rows = [r for r in api.deliveries(member_id) if r["delivery_id"] not in before]
        settled = len(rows) == 10 and not any(r["status"] == "queued" for r in rows)
        return rows if settled else None

    rows = wait_for(new_rows, "the win-back deliveries")
    for message_type in ("member.winback", "coupon.issued"):
        assert by_channel(rows, message_type) == {
            "inbox": ("sent", None),
            "sms": ("deferred", "quiet_hours"),
            "email": ("suppressed", "no_consent"),
            "wechat": ("suppressed", "no_consent"),
            "push": ("suppressed", "no_consent"),
        }, summary(rows)
    deferred = [r for r in rows if r["status"] == "deferred"]
    until = {parse(r["deferred_until"]) for r in deferred}
    assert len(until) == 1, deferred
    [quiet_end] = until
    assert quiet_end == end.replace(minute=0, second=0, microsecond=0)

    # The night passes: the release job queues them, the dispatcher sends them.
    assert api.job("notifier", "release-deferred", quiet_end - timedelta(minutes=1)) == {
        "released": 0
    }
    assert api.job("notifier", "release-deferred", quiet_end)["released"] == 2
    api.job("notifier", "dispatch", quiet_end + timedelta(seconds=1))
    sent = {
        r["event_type"]: (r["status"], r["reason"])
        for r in api.deliveries(member_id)
        if r["delivery_id"] in {d["delivery_id"] for d in deferred}
    }
    assert sent == {"member.winback": ("sent", None), "coupon.issued": ("sent", None)}


def test_6_tier_upgrade(api: Api, retailer: dict[str, Any]) -> None:
    """Enough spend lifts the member to silver: `member.tier_changed`, the tier message, and
    the next order earns 1.2 points per yuan; a year later the review moves them back down."""
    member = sign_up(api)
    member_id, tz = member["member_id"], member["timezone"]
    now = datetime.now(UTC)
    events = Events(api)
    big = order(api, member_id, 120000, off_member_day(now - 2 * DAY, tz))
    assert big["member_tier"] == "bronze"
    events.expect(
        {
            "order.paid": 1,
            "points.credited": 1,
            "member.tier_changed": 1,
            "member.card_issued": 1,
            "coupon.issued": 1,
        }
    )
    tier = api.get("member", f"/v1/members/{member_id}/tier")
    assert (tier["tier"], tier["points_multiplier"]) == ("silver", 1.2)
    # The order that lifted the member earns at the old tier: 1200 (checked at the end).
    [lifting] = earns(api.ledger(member_id), big["order_id"])
    assert lifting["points"] in (1200, 1440), lifting
    assert api.get("member", f"/v1/members/{member_id}")["tier"] == "silver"
    wait_for(lambda: (api.profile(member_id) or {}).get("tier") == "silver", "tier in profile")

    wait_for(
        lambda: (
            by_channel(
                [r for r in api.deliveries(member_id) if r["event_type"] == "member.tier_changed"],
                "member.tier_changed",
            ).get("sms")
            == ("sent", None)
        ),
        "the tier message, sent by sms",
    )
    rows = [r for r in api.deliveries(member_id) if r["event_type"] == "member.tier_changed"]
    assert by_channel(rows, "member.tier_changed") == {
        "inbox": ("sent", None),
        "sms": ("sent", None),
        "email": ("suppressed", "no_address"),
        "wechat": ("suppressed", "no_address"),
        "push": ("suppressed", "no_address"),
    }, summary(rows)
    assert len({r["event_id"] for r in rows}) == 1

    events = Events(api)
    next_order = order(api, member_id, 10000, off_member_day(now - DAY, tz))
    assert next_order["member_tier"] == "silver"
    events.expect({"order.paid": 1, "points.credited": 1, "member.tier_changed": 0})
    [earn] = earns(api.ledger(member_id), next_order["order_id"])
    earned = earn["points"]  # contract: 100 x 1.2 = 120; checked at the end
    assert earned == 120, earn  # 100 x 1.2: the tier once, its tier card adds nothing
    assert api.account(member_id)["pending"] == lifting["points"] + earned

    # A year on, the spend has left the rolling window: the review moves the member down.
    events = Events(api)
    counts = api.job("member", "tier-review", now + 366 * DAY)
    assert counts["downgraded"] >= 1, counts
    events.expect({"member.tier_changed": 1})
    assert api.get("member", f"/v1/members/{member_id}/tier")["tier"] == "bronze"

    assert lifting["points"] == 1200  # the lifting order earns at the old tier
    assert (lifting["points"], earned) == (1200, 120)


def test_7_points_expire_oldest_lot_first(api: Api, retailer: dict[str, Any]) -> None:
    """Points expire 365 days after they were earned, the oldest lot first; a redemption takes
    from the lot that expires first, and a notice warns 30 days ahead.

    The two orders are older than anything the other journeys bought, so the jobs run at
    their lots' expiry touch this member only (the sign-up lots all expire a year from now)."""
    member = sign_up(api)
    member_id, tz = member["member_id"], member["timezone"]
    now = datetime.now(UTC)
    old = order(api, member_id, 20000, off_member_day(now - 300 * DAY, tz))
    recent = order(api, member_id, 30000, off_member_day(now - 80 * DAY, tz))
    wait_for(
        lambda: api.account(member_id)["available"] + api.account(member_id)["pending"] == 600,
        "the orders' points",
    )
    quiet(api)
    api.job("points", "release-pending", now)  # both weeks are long over
    account = api.account(member_id)
    assert (account["available"], account["pending"]) == (600, 0)

    ledger = api.ledger(member_id)
    [old_lot] = earns(ledger, old["order_id"])
    [recent_lot] = earns(ledger, recent["order_id"])
    [signup_lot] = [e for e in ledger if e["rule"] == "signup"]
    old_expiry, recent_expiry = parse(old_lot["expires_at"]), parse(recent_lot["expires_at"])
    assert old_expiry == parse(old["occurred_at"]) + 365 * DAY
    assert recent_expiry == parse(recent["occurred_at"]) + 365 * DAY
    assert parse(signup_lot["expires_at"]) > now + 364 * DAY

    # A redemption takes from the lot that expires first.
    redemption = api.post(
        "points",
        "/v1/redemptions",
        {"member_id": member_id, "points": 50, "reason": "tea set"},
        201,
    )
    assert redemption["available_after"] == 550
    expiring = api.account(member_id)["expiring"]
    assert [e["points"] for e in expiring] == [150, 300, 100], expiring

    # 30 days before the oldest lot expires, the member is told (a transactional message).
    events = Events(api)
    api.job("points", "expiry-notice", old_expiry - 29 * DAY)
    events.expect({"points.expiring_soon": 1})
    notices = wait_for(
        lambda: [
            r
            for r in api.deliveries(member_id)
            if r["event_type"] == "points.expiring_soon" and r["status"] != "queued"
        ],
        "the expiry notice",
    )
    assert {(r["channel"], r["status"]) for r in notices} >= {("inbox", "sent"), ("sms", "sent")}

    # Each lot expires at its own time, the oldest first, with what is left of it.
    for expiry, expired, left in [(old_expiry, 150, 400), (recent_expiry, 300, 100)]:
        events = Events(api)
        api.job("points", "expire", expiry - timedelta(seconds=1))
        assert api.account(member_id)["available"] == left + expired
        api.job("points", "expire", expiry + timedelta(seconds=1))
        assert api.account(member_id)["available"] == left
        events.expect({"points.expired": 1})
    expiries = [e for e in api.ledger(member_id) if e["kind"] == "expire"]
    assert sorted((e["lot_id"], e["points"]) for e in expiries) == sorted(
        [(old_lot["lot_id"], -150), (recent_lot["lot_id"], -300)]
    )
    account = api.account(member_id)
    assert (account["available"], account["lifetime_earned"], account["lifetime_redeemed"]) == (
        100,
        600,
        50,
    )


# --------------------------------------------------------------------------- personal data


def every_record(bootstrap: str) -> list[tuple[str, bytes]]:
    """(topic, key + value) of every record on every topic of the broker, read from the start
    of each partition until the broker has nothing more for a while."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def read() -> list[tuple[str, bytes]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = [
                TopicPartition(topic, p)
                for topic in await consumer.topics()
                for p in consumer.partitions_for_topic(topic) or ()
            ]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            out: list[tuple[str, bytes]] = []
            quiet_polls = 0
            while quiet_polls < 5:
                batches = await consumer.getmany(timeout_ms=500, max_records=5000)
                got = [r for records in batches.values() for r in records]
                quiet_polls = 0 if got else quiet_polls + 1
                out += [(r.topic, (r.key or b"") + b" " + (r.value or b"")) for r in got]
            return out
        finally:
            await consumer.stop()

    return asyncio.run(read())


def test_8_no_personal_data_in_events_or_logs(platform: Platform, api: Api) -> None:
    """No phone or email of the journeys appears in any event on any topic (dead-letter topics
    included) nor in any line the platform logged: events name members by id, logs by ids."""
    assert len(_phones) >= 5, "the journeys signed members up with these phones"
    personal = {"mei@example.com"} | _phones | {"+86" + number for number in _phones}
    records = every_record(f"127.0.0.1:{platform.kafka_port}")
    topics = Counter(topic for topic, _ in records)
    assert topics["loyalty.members"] >= 5 and topics["loyalty.orders"] >= 5, topics
    leaks = sorted(
        {(topic, value) for topic, raw in records for value in personal if value.encode() in raw}
    )
    assert not leaks, f"personal data in events: {leaks[:5]}"

    log = "".join(platform.output)
    assert log.count("\n") > 50, "the platform's log lines were captured"
    logged = sorted(value for value in personal if value in log)
    assert not logged, f"personal data in the logs: {logged}"
