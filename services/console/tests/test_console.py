"""The console against the five real services (in this process): sign-in and scopes, CSRF,
Member 360 and its actions, the checkout desk, segments, campaigns, dashboard, messages,
languages; bad input answers inline and changes nothing; no page answers 500."""

from __future__ import annotations

import asyncio
import re

from loyalty_shared.testing import READ_ONLY_KEY

from .conftest import Browser, new_member


async def test_health_and_readiness(browser: Browser):
    assert (await browser.get("/healthz")).json() == {"status": "ok"}
    ready = await browser.get("/readyz")
    assert ready.status_code == 200
    assert set(ready.json()["checks"].values()) == {"ok"}


async def test_pages_need_a_sign_in(browser: Browser):
    response = await browser.client.get("/members/anyone")
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2Fmembers%2Fanyone"
    problem = await browser.client.get("/api/jobs/x")
    assert problem.status_code == 401
    assert problem.headers["content-type"].startswith("application/problem+json")


async def test_sign_in_sets_a_strict_http_only_cookie_and_sign_out_clears_it(browser: Browser):
    await browser.get("/login")
    fields = browser.form_fields("/login")
    response = await browser.client.post("/login", data={**fields, "api_key": "test-key"})
    assert response.status_code == 303 and response.headers["location"] == "/members"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Secure" not in cookie  # plain HTTP here; over TLS the cookie is Secure
    assert "test-key" not in cookie  # the key stays on the server
    page = await browser.get("/members")
    assert (page.status_code == 200 and "Sign out" in page.text) or "退出" in page.text
    out = await browser.submit("/logout", {}, follow=False)
    assert out.status_code == 303 and 'console_session=""' in out.headers["set-cookie"]
    assert (await browser.client.get("/members")).status_code == 303


async def test_an_unknown_key_is_refused_inline(browser: Browser):
    await browser.get("/login")
    response = await browser.submit("/login", {"api_key": "nobody-knows-me"})
    assert response.status_code == 401
    assert 'role="alert"' in response.text and 'aria-invalid="true"' in response.text


async def test_a_form_without_its_csrf_token_is_refused(signed_in: Browser, platform):
    member = await new_member(platform)
    response = await signed_in.client.post(
        f"/members/{member['member_id']}/adjust", data={"points": "50", "reason": "x"}
    )
    assert response.status_code == 403
    account = await platform.services["points"].client.get(f"/v1/accounts/{member['member_id']}")
    assert account.json()["available"] == 100  # the signup bonus only: nothing was adjusted
    login = await signed_in.client.post("/login", data={"api_key": "test-key", "csrf": "forged"})
    assert login.status_code == 403


async def test_what_the_key_does_not_allow_is_not_offered(browser: Browser, platform):
    member = await new_member(platform)
    response = await browser.sign_in(READ_ONLY_KEY)
    assert response.status_code == 200
    page = await browser.get(f"/members/{member['member_id']}")
    assert page.status_code == 200
    assert "/adjust" not in page.text and "/erase" not in page.text
    assert 'href="/checkout"' not in page.text
    account = await browser.get("/account")
    assert "members:read" in account.text
    desk = await browser.client.get(f"/checkout/{member['member_id']}")
    assert desk.status_code == 403
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
    refused = await browser.client.post(
        f"/members/{member['member_id']}/adjust",
        data={"csrf": csrf, "points": "5", "reason": "x"},
    )
    assert refused.status_code == 403


async def test_lookup_by_phone_card_and_email(signed_in: Browser, platform):
    member = await new_member(platform, email="mei.lookup@example.com", name="Mei")
    for query in (member["phone"][3:], member["card_no"], "MEI.lookup@example.com"):
        response = await signed_in.get(f"/members?q={query}")
        assert response.status_code == 200
        assert member["member_id"] in response.text and "Mei" in response.text
    missing = await signed_in.get("/members?q=13011112222")
    assert missing.status_code == 200 and "13011112222" in missing.text
    bad = await signed_in.get("/members?q=not-a-phone")
    assert bad.status_code == 422 and 'role="alert"' in bad.text


async def test_member_360_shows_the_ledger_with_rule_and_reason(signed_in: Browser, platform):
    member = await new_member(platform)
    page = await signed_in.get(f"/members/{member['member_id']}")
    assert page.status_code == 200
    assert "signup bonus" in page.text and "<code>signup</code>" in page.text
    assert "member.registered" in page.text


async def test_adjust_points_shows_the_new_balance_and_its_ledger_line(
    signed_in: Browser, platform
):
    member = await new_member(platform)
    url = f"/members/{member['member_id']}"
    await signed_in.get(url)
    response = await signed_in.submit(
        f"{url}/adjust", {"points": "250", "reason": "goodwill: late delivery"}
    )
    assert response.status_code == 200
    assert re.search(r'data-testid="available">350<', response.text)
    assert "goodwill: late delivery" in response.text and "+250" in response.text


async def test_adjust_points_without_a_reason_is_refused_inline(signed_in: Browser, platform):
    member = await new_member(platform)
    url = f"/members/{member['member_id']}"
    await signed_in.get(url)
    response = await signed_in.submit(f"{url}/adjust", {"points": "50", "reason": ""})
    assert response.status_code == 422
    assert 'id="err-reason"' in response.text
    assert re.search(r'data-testid="available">100<', response.text)
    bad = await signed_in.submit(f"{url}/adjust", {"points": "lots", "reason": "x"})
    assert bad.status_code == 422 and 'id="err-points"' in bad.text
    overdraw = await signed_in.submit(f"{url}/adjust", {"points": "-5000", "reason": "typo"})
    assert overdraw.status_code == 422 and 'class="form-error"' in overdraw.text


async def _coupon_for(platform, member_id: str, code: str) -> str:
    coupon = platform.services["coupon"].client
    await coupon.post(
        "/v1/coupon-templates",
        json={
            "code": code,
            "name": f"{code} 10 off",
            "kind": "amount_off",
            "value": 1000,
            "min_spend_minor": 5000,
            "valid_days": 30,
        },
    )
    await coupon.post(
        "/v1/campaigns",
        json={"code": code, "template_codes": [code], "trigger": {"type": "manual"}},
    )
    job = (
        await coupon.post(f"/v1/campaigns/{code}/issue", json={"member_ids": [member_id]})
    ).json()
    for _ in range(50):
        if (await coupon.get(f"/v1/jobs/{job['job_id']}")).json()["status"] == "completed":
            break
        await asyncio.sleep(0.05)
    wallet = (await coupon.get(f"/v1/members/{member_id}/coupons")).json()["items"]
    return next(c["coupon_code"] for c in wallet if c["template_code"] == code)


async def test_a_coupon_is_redeemed_once_and_a_second_time_refused(signed_in: Browser, platform):
    member = await new_member(platform)
    code = await _coupon_for(platform, member["member_id"], "DESK-10")
    desk = f"/checkout/{member['member_id']}"
    page = await signed_in.get(desk)
    assert page.status_code == 200 and code in page.text

    checked = await signed_in.submit(f"{desk}/validate", {"coupon_codes": code, "total": "30"})
    assert checked.status_code == 200 and "below_min_spend" in checked.text

    form = signed_in.form_fields(f"{desk}/redeem-coupon")
    data = {**form, "coupon_code": code, "order_id": "TILL-1-0001", "total": "88.00"}
    first = await signed_in.client.post(f"{desk}/redeem-coupon", data=data)
    assert first.status_code == 200 and 'data-testid="coupon-redeemed"' in first.text
    # A double click sends the same form (same Idempotency-Key) again: the first answer, once.
    again = await signed_in.client.post(f"{desk}/redeem-coupon", data=data)
    assert again.status_code == 200 and "nothing was done twice" in again.text.replace(
        "未重复执行", "nothing was done twice"
    )

    signed_in.page = first.text  # a new form, a new key: a second redemption is refused
    second = await signed_in.submit(
        f"{desk}/redeem-coupon", {"coupon_code": code, "order_id": "TILL-1-0002"}
    )
    assert second.status_code == 409 and 'class="form-error"' in second.text
    wallet = await platform.services["coupon"].client.get(f"/v1/coupons/{code}")
    assert wallet.json()["order_id"] == "TILL-1-0001"


async def test_points_redemption_and_top_up_at_the_desk(signed_in: Browser, platform):
    member = await new_member(platform)
    desk = f"/checkout/{member['member_id']}"
    await signed_in.get(desk)
    paid = await signed_in.submit(f"{desk}/redeem-points", {"points": "40", "order_id": "T-77"})
    assert paid.status_code == 200 and "60" in paid.text
    too_much = await signed_in.submit(
        f"{desk}/redeem-points", {"points": "999", "order_id": "T-78"}
    )
    assert too_much.status_code == 422 and 'class="form-error"' in too_much.text
    form = signed_in.form_fields(f"{desk}/top-up", too_much.text)
    top = await signed_in.client.post(f"{desk}/top-up", data={**form, "amount": "100"})
    assert top.status_code == 200
    twice = await signed_in.client.post(f"{desk}/top-up", data={**form, "amount": "100"})
    assert twice.status_code == 200
    balance = await platform.services["points"].client.get(
        f"/v1/stored-value/{member['member_id']}"
    )
    assert balance.json()["balance_minor"] == 11000  # 100 yuan + the 10 yuan bonus, once
    signed_in.page = twice.text
    bad = await signed_in.submit(f"{desk}/top-up", {"amount": "12.345"})
    assert bad.status_code == 422 and 'id="err-amount"' in bad.text


async def test_segment_builder_counts_saves_lists_and_exports(signed_in: Browser, platform):
    await new_member(platform)
    page = await signed_in.get("/segments/new")
    assert page.status_code == 200 and "data-rule-builder" in page.text
    rule = '{"field": "registered", "op": "eq", "value": true}'
    preview = await signed_in.submit(
        "/segments/save", {"rule": rule, "do": "preview", "code": "", "name": ""}
    )
    assert preview.status_code == 200
    count = int(re.search(r'data-testid="preview-count">(\d+)<', preview.text).group(1))
    assert count >= 1
    await signed_in.get("/segments/new")
    bad = await signed_in.submit(
        "/segments/save",
        {
            "code": "bad-rule",
            "name": "Bad",
            "rule": '{"field": "nope", "op": "eq", "value": 1}',
            "do": "save",
        },
    )
    assert bad.status_code == 422 and 'id="err-rule"' in bad.text
    assert (
        await platform.services["segmenter"].client.get("/v1/segments/bad-rule")
    ).status_code == 404
    await signed_in.get("/segments/new")
    not_json = await signed_in.submit(
        "/segments/save", {"code": "x", "name": "X", "rule": "{", "do": "save"}
    )
    assert not_json.status_code == 422
    await signed_in.get("/segments/new")
    saved = await signed_in.submit(
        "/segments/save", {"code": "everyone", "name": "Everyone", "rule": rule, "do": "save"}
    )
    assert saved.status_code == 200
    assert int(re.search(r'data-testid="members-count">(\d+)<', saved.text).group(1)) >= 1
    csv = await signed_in.client.get("/segments/everyone/members.csv")
    assert csv.status_code == 200 and csv.text.startswith("member_id,entered_at")
    assert len(csv.text.strip().splitlines()) >= 2

    csrf = re.search(r'name="csrf-token" content="([^"]+)"', saved.text).group(1)
    live = await signed_in.client.post(
        "/api/segments/preview",
        json={"rule": {"field": "nope", "op": "eq", "value": 1}},
        headers={"X-CSRF-Token": csrf},
    )
    assert live.status_code == 422 and live.json()["code"] == "validation_error"
    ok = await signed_in.client.post(
        "/api/segments/preview",
        json={"rule": {"field": "registered", "op": "eq", "value": True}},
        headers={"X-CSRF-Token": csrf},
    )
    assert ok.status_code == 200 and ok.json()["count"] >= 1
    no_token = await signed_in.client.post("/api/segments/preview", json={"rule": {}})
    assert no_token.status_code == 403


async def test_campaign_forms_and_bulk_issue(signed_in: Browser, platform):
    member = await new_member(platform)
    await signed_in.get("/campaigns")
    bad = await signed_in.submit(
        "/campaigns/templates", {"code": "", "name": "x", "kind": "amount_off", "value": "5"}
    )
    assert bad.status_code == 422 and 'id="err-code"' in bad.text
    made = await signed_in.submit(
        "/campaigns/templates",
        {"code": "BULK-5", "name": "5 off", "kind": "amount_off", "value": "5", "min_spend": "20"},
    )
    assert made.status_code == 200 and "BULK-5" in made.text
    campaign = await signed_in.submit(
        "/campaigns/new",
        {
            "code": "BULK-TEST",
            "template_codes": "BULK-5",
            "trigger": "manual",
            "holdout_percent": "0",
        },
    )
    assert campaign.status_code == 200 and "BULK-TEST" in campaign.text
    await signed_in.get("/campaigns/BULK-TEST")
    neither = await signed_in.submit(
        "/campaigns/BULK-TEST/issue", {"segment_code": "", "member_ids": ""}
    )
    assert neither.status_code == 422
    job = await signed_in.submit(
        "/campaigns/BULK-TEST/issue", {"segment_code": "", "member_ids": member["member_id"]}
    )
    assert job.status_code == 200 and "data-job=" in job.text
    job_id = re.search(r'data-job="([^"]+)"', job.text).group(1)
    for _ in range(50):
        state = (await signed_in.client.get(f"/api/jobs/{job_id}")).json()
        if state["status"] == "completed":
            break
        await asyncio.sleep(0.05)
    assert state["members_issued"] == 1


async def test_dashboard_draws_the_measures_as_svg(signed_in: Browser, platform):
    member = await new_member(platform)
    await platform.services["member"].client.post(
        "/v1/orders",
        json={
            "channel": "pos",
            "external_id": f"DASH-{member['member_id']}",
            "member_id": member["member_id"],
            "status": "paid",
            "currency": "CNY",
            "total_minor": 5000,
            "paid_minor": 5000,
            "lines": [],
        },
    )
    await platform.pump()
    page = await signed_in.get("/dashboard")
    assert page.status_code == 200
    assert page.text.count("<svg") >= 5
    assert "kozea.github.io" not in page.text  # no chart script from a CDN
    odd = await signed_in.get("/dashboard?start=nonsense&end=2026-01-01")
    assert odd.status_code == 200


async def test_message_template_preview_and_refused_save(signed_in: Browser):
    url = "/messages/templates/coupon.issued/sms/zh-CN"
    page = await signed_in.get(url)
    assert page.status_code == 200 and "coupon_code" in page.text
    preview = await signed_in.submit(
        url, {"body": "Hi {{ member.name }}: {{ event.coupon_code }}", "do": "preview"}
    )
    assert preview.status_code == 200 and "CPN-7H2K-9QX4" in preview.text
    broken = await signed_in.submit(url, {"body": "{{ event.nope ", "do": "preview"})
    assert broken.status_code == 422
    refused = await signed_in.submit(url, {"body": "{{ event.nope }}", "do": "save"})
    assert (
        refused.status_code == 422 and "invalid_template" not in refused.text
    ) or 'class="form-error"' in refused.text
    log = await signed_in.get("/messages/deliveries?status=sent")
    assert log.status_code == 200


async def test_language_is_chosen_and_remembered(signed_in: Browser):
    page = await signed_in.get("/members")
    assert '<html lang="zh-CN">' in page.text and "查找会员" in page.text
    response = await signed_in.submit("/locale", {"locale": "en", "next": "/members"})
    assert '<html lang="en">' in response.text and "Find a member" in response.text
    again = await signed_in.get("/segments")
    assert '<html lang="en">' in again.text
    back = await signed_in.submit("/locale", {"locale": "zh-CN", "next": "//evil.example"})
    assert back.status_code == 200 and '<html lang="zh-CN">' in back.text


async def test_erase_needs_the_typed_word(signed_in: Browser, platform):
    member = await new_member(platform, name="To Erase")
    url = f"/members/{member['member_id']}"
    await signed_in.get(url)
    refused = await signed_in.submit(f"{url}/erase", {"confirm": "erase"})
    assert refused.status_code == 422 and 'id="err-confirm"' in refused.text
    assert (
        await platform.services["member"].client.get(url.replace("/members", "/v1/members"))
    ).json()["name"] == "To Erase"
    done = await signed_in.submit(f"{url}/erase", {"confirm": "ERASE"})
    assert done.status_code == 200
    assert (
        await platform.services["member"].client.get(url.replace("/members", "/v1/members"))
    ).json()["erased_at"]


async def test_no_page_answers_500(signed_in: Browser, platform):
    member = await new_member(platform)
    mid = member["member_id"]
    for url in [
        "/",
        "/members",
        f"/members/{mid}",
        "/members/unknown-member",
        f"/members/{mid}?ledger_cursor=zzz",
        "/checkout",
        f"/checkout/{mid}",
        "/checkout/unknown",
        "/segments",
        "/segments/new",
        "/segments/none-such",
        "/segments/none-such/members.csv",
        "/campaigns",
        "/campaigns/NONE",
        "/campaigns/NONE/jobs/x",
        "/dashboard",
        "/messages",
        "/messages/deliveries?status=bogus",
        "/messages/templates/no.such/sms/xx",
        "/nowhere",
        "/account",
    ]:
        response = await signed_in.client.get(url)
        assert response.status_code < 500, (url, response.status_code, response.text[:300])
    # Garbage in forms: inline errors, never a 500.
    await signed_in.get(f"/checkout/{mid}")
    for action, data in [
        (f"/checkout/{mid}/validate", {"coupon_codes": "", "total": "x"}),
        (f"/checkout/{mid}/redeem-coupon", {"coupon_code": "NOPE", "order_id": "o"}),
        (f"/checkout/{mid}/redeem-points", {"points": "-3", "order_id": "o"}),
        (f"/checkout/{mid}/top-up", {"amount": "1e999"}),
    ]:
        page = signed_in.page
        response = await signed_in.submit(action, data)
        assert 400 <= response.status_code < 500, (action, response.status_code)
        signed_in.page = page
