"""Templates, the wallet, validation and single-use redemption over PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
from datetime import timedelta

import httpx


async def test_invalid_templates_are_refused_with_their_fields(coupon):
    cases = [
        ({"kind": "amount_off", "value": -5, "valid_days": 30}, ["body", "value"]),
        ({"kind": "percent_off", "value": 120, "valid_days": 30}, ["body", "value"]),
        (
            {
                "kind": "amount_off",
                "value": 100,
                "starts_at": "2026-05-01T00:00:00+08:00",
                "ends_at": "2026-04-01T00:00:00+08:00",
            },
            ["body", "ends_at"],
        ),
        ({"kind": "amount_off", "value": 100}, ["body", "ends_at"]),
        ({"kind": "gift", "valid_days": 3}, ["body", "gift_sku"]),
        ({"kind": "coupon", "value": 1, "valid_days": 3}, ["body", "kind"]),
    ]
    for fields, loc in cases:
        body = {"code": "BAD", "name": "bad", **fields}
        response = await coupon.client.post("/v1/coupon-templates", json=body)
        assert response.status_code == 422, (fields, response.text)
        problem = response.json()
        assert problem["code"] == "validation_error"
        assert loc in [e["loc"] for e in problem["errors"]], problem
    missing = await coupon.client.get("/v1/coupon-templates/BAD")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


async def test_a_template_code_is_taken_once(coupon, kit):
    t = await kit.template(coupon)
    again = await coupon.client.post(
        "/v1/coupon-templates",
        json={"code": t["code"], "name": "x", "kind": "amount_off", "value": 1, "valid_days": 1},
    )
    assert again.status_code == 409 and again.json()["code"] == "template_exists"
    assert (await coupon.client.get(f"/v1/coupon-templates/{t['code']}")).json() == t


async def test_welcome_pack_wallet_and_validation(coupon, kit):
    amount = await kit.template(coupon, value=2000, min_spend_minor=10000)
    percent = await kit.template(
        coupon, kind="percent_off", value=20, max_discount_minor=1500, categories=["snacks"]
    )
    await kit.campaign(coupon, [amount["code"], percent["code"]], {"type": "member.registered"})
    member = kit.unique("m")
    await kit.deliver(coupon, kit.registered(member))

    coupons = await kit.wallet(coupon, member)
    assert sorted(c["template_code"] for c in coupons) == sorted([amount["code"], percent["code"]])
    assert all(c["status"] == "issued" and c["coupon_code"].startswith("CPN-") for c in coupons)
    assert await kit.wallet(coupon, member, "redeemed") == []
    by_template = {c["template_code"]: c["coupon_code"] for c in coupons}
    issued = await kit.events_of(coupon, member, "coupon.issued")
    assert sorted(e["data"]["coupon_code"] for e in issued) == sorted(by_template.values())

    cart = {
        "member_id": member,
        "total_minor": 9000,
        "lines": [
            {"sku": "S1", "category": "snacks", "quantity": 4, "unit_price_minor": 2000},
            {"sku": "B1", "category": "beverages", "quantity": 1, "unit_price_minor": 1000},
        ],
        "coupon_codes": [
            by_template[amount["code"]],
            by_template[percent["code"]],
            "CPN-NONE-0000",
        ],
    }
    response = await coupon.client.post("/v1/validations", json=cart)
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert items[0]["valid"] is False and items[0]["reason"] == "below_min_spend"
    assert items[1] == {
        "coupon_code": by_template[percent["code"]],
        "valid": True,
        "discount_minor": 1500,  # 20 % of the 8000 of snacks, capped at 1500
        "kind": "percent_off",
    }
    assert items[2]["reason"] == "not_found"
    other = await coupon.client.post("/v1/validations", json={**cart, "member_id": "someone"})
    assert [i["reason"] for i in other.json()["items"][:2]] == ["not_owned", "not_owned"]


async def test_redemption_errors_of_the_contract(coupon, kit, clock):
    t = await kit.template(coupon, valid_days=10)
    c = await kit.campaign(coupon, [t["code"]], {"type": "member.registered"})
    member = kit.unique("m")
    await kit.deliver(coupon, kit.registered(member))
    (mine,) = await kit.wallet(coupon, member)
    code = mine["coupon_code"]
    assert mine["campaign_code"] == c["code"]

    not_owned = await coupon.client.post(
        "/v1/redemptions", json={"coupon_code": code, "member_id": "thief", "order_id": "o1"}
    )
    assert not_owned.status_code == 422 and not_owned.json()["code"] == "coupon_not_owned"
    unknown = await coupon.client.post(
        "/v1/redemptions",
        json={"coupon_code": "CPN-XXXX-XXXX", "member_id": member, "order_id": "o"},
    )
    assert unknown.status_code == 404

    body = {"coupon_code": code, "member_id": member, "order_id": kit.unique("o")}
    first = await coupon.client.post(
        "/v1/redemptions", json=body, headers={"Idempotency-Key": "k1"}
    )
    assert first.status_code == 201, first.text
    replay = await coupon.client.post(
        "/v1/redemptions", json=body, headers={"Idempotency-Key": "k1"}
    )
    assert replay.status_code == 201 and replay.json() == first.json()
    second = await coupon.client.post(
        "/v1/redemptions", json=body, headers={"Idempotency-Key": "k2"}
    )
    assert second.status_code == 409
    assert second.json()["code"] == "coupon_already_redeemed"
    assert second.json()["order_id"] == body["order_id"]
    assert len(await kit.events_of(coupon, member, "coupon.redeemed")) == 1
    assert [c["status"] for c in await kit.wallet(coupon, member, "redeemed")] == ["redeemed"]

    # Another coupon, past its end: expired, in the wallet and at the checkout.
    await kit.deliver(coupon, kit.registered(kit.unique("m")))  # unrelated member
    later = kit.unique("m")
    await kit.deliver(coupon, kit.registered(later))
    (old,) = await kit.wallet(coupon, later)
    clock.advance(timedelta(days=10))
    try:
        expired = await coupon.client.post(
            "/v1/redemptions",
            json={"coupon_code": old["coupon_code"], "member_id": later, "order_id": "o9"},
        )
        assert expired.status_code == 422 and expired.json()["code"] == "coupon_expired"
        assert [c["status"] for c in await kit.wallet(coupon, later, "expired")] == ["expired"]
        assert await kit.wallet(coupon, later, "issued") == []
    finally:
        clock.advance(-timedelta(days=10))


async def test_minimum_spend_at_redemption(coupon, kit):
    t = await kit.template(coupon, value=500, min_spend_minor=5000)
    await kit.campaign(coupon, [t["code"]], {"type": "member.registered"})
    member = kit.unique("m")
    await kit.deliver(coupon, kit.registered(member))
    (c,) = await kit.wallet(coupon, member)
    body = {"coupon_code": c["coupon_code"], "member_id": member, "order_id": "o-min"}
    low = await coupon.client.post("/v1/redemptions", json={**body, "total_minor": 4999})
    assert low.status_code == 422 and low.json()["code"] == "coupon_min_spend_not_met"
    ok = await coupon.client.post("/v1/redemptions", json={**body, "total_minor": 5000})
    assert ok.status_code == 201 and ok.json()["discount_minor"] == 500


async def test_a_hundred_concurrent_redemptions_one_success(coupon, kit):
    t = await kit.template(coupon)
    await kit.campaign(coupon, [t["code"]], {"type": "member.registered"})
    member = kit.unique("m")
    await kit.deliver(coupon, kit.registered(member))
    (c,) = await kit.wallet(coupon, member)

    async def redeem(i: int) -> httpx.Response:
        return await coupon.client.post(
            "/v1/redemptions",
            json={"coupon_code": c["coupon_code"], "member_id": member, "order_id": f"race-{i}"},
        )

    responses = await asyncio.gather(*(redeem(i) for i in range(100)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 99
    assert {r.json()["code"] for r in responses if r.status_code == 409} == {
        "coupon_already_redeemed"
    }
    assert len(await kit.events_of(coupon, member, "coupon.redeemed")) == 1
    rows = await kit.scalar(
        coupon, "SELECT count(*) FROM coupon_redemptions WHERE coupon_code = :c", c=c["coupon_code"]
    )
    assert rows == 1


async def test_stock_never_goes_below_zero_under_concurrent_issue(coupon, kit):
    t = await kit.template(coupon, stock=10)
    await kit.campaign(coupon, [t["code"]], {"type": "member.registered"})
    members = [kit.unique("m") for _ in range(30)]
    # 30 consumer batches at once, each in its own transaction, all after the same stock.
    await asyncio.gather(*(kit.deliver(coupon, kit.registered(m)) for m in members))
    issued = await kit.scalar(
        coupon, "SELECT count(*) FROM coupons WHERE template_code = :t", t=t["code"]
    )
    assert issued == 10
    after = (await coupon.client.get(f"/v1/coupon-templates/{t['code']}")).json()
    assert after["issued_count"] == 10 and after["stock_left"] == 0
    refused = await kit.scalar(
        coupon,
        "SELECT count(*) FROM campaign_grants WHERE outcome = 'not_issued' AND reasons = ARRAY[:r]",
        r=f"{t['code']}:out_of_stock",
    )
    assert refused == 20


async def test_scopes(coupon):
    from loyalty_shared.testing import READ_ONLY_AUTH

    response = await coupon.client.post(
        "/v1/coupon-templates",
        json={"code": "X", "name": "x", "kind": "amount_off", "value": 1, "valid_days": 1},
        headers=READ_ONLY_AUTH,
    )
    assert response.status_code == 403
    read = await coupon.client.get("/v1/members/m/coupons", headers=READ_ONLY_AUTH)
    assert read.status_code == 200 and read.json() == {"items": [], "next_cursor": None}


async def test_the_wallet_pages_newest_first(coupon, kit, clock):
    t = await kit.template(coupon, per_member_limit=3)
    c = await kit.campaign(coupon, [t["code"]], {"type": "manual"})
    member = kit.unique("m")
    codes = []
    for _ in range(3):
        clock.advance(timedelta(minutes=1))
        response = await coupon.client.post(
            f"/v1/campaigns/{c['code']}/issue", json={"member_ids": [member]}
        )
        for _ in range(100):
            job = (await coupon.client.get(f"/v1/jobs/{response.json()['job_id']}")).json()
            if job["status"] == "completed":
                break
            await asyncio.sleep(0.02)
        codes.append((await kit.wallet(coupon, member))[0]["coupon_code"])
    clock.advance(-timedelta(minutes=3))
    first = (await coupon.client.get(f"/v1/members/{member}/coupons", params={"limit": 2})).json()
    assert [x["coupon_code"] for x in first["items"]] == codes[::-1][:2]
    rest = (
        await coupon.client.get(
            f"/v1/members/{member}/coupons", params={"limit": 2, "cursor": first["next_cursor"]}
        )
    ).json()
    assert [x["coupon_code"] for x in rest["items"]] == [codes[0]]
    assert rest["next_cursor"] is None
    bad = await coupon.client.get(f"/v1/members/{member}/coupons", params={"cursor": "zzz"})
    assert bad.status_code == 422 and bad.json()["code"] == "validation_error"
    # base64 of "at|code", the wallet's old cursor, is not one it hands out now
    old = base64.urlsafe_b64encode(f"2026-01-01T00:00:00+00:00|{codes[0]}".encode()).decode()
    bad = await coupon.client.get(f"/v1/members/{member}/coupons", params={"cursor": old})
    assert bad.status_code == 422 and bad.json()["errors"][0]["loc"] == ["query", "cursor"]


async def test_templates_and_campaigns_page_and_refuse_cursors_they_did_not_hand_out(coupon, kit):
    """Contract §3: a cursor the service did not hand out is a 422, never a first page."""
    for _ in range(3):
        t = await kit.template(coupon)
        await kit.campaign(coupon, [t["code"]], {"type": "manual"})
    for url in ("/v1/coupon-templates", "/v1/campaigns"):
        everything = (await coupon.client.get(url, params={"limit": 500})).json()["items"]
        seen, cursor = [], None
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = await coupon.client.get(url, params=params)
            assert page.status_code == 200, page.text
            seen += page.json()["items"]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
        assert [i["code"] for i in seen] == [i["code"] for i in everything]
        assert len(seen) >= 3
        first = (await coupon.client.get(url, params={"limit": 1})).json()
        # a code (these lists once read any string as "after this code"), garbage, an edit
        for foreign in (everything[0]["code"], "zzz", "%%%", first["next_cursor"][:-2]):
            bad = await coupon.client.get(url, params={"cursor": foreign})
            assert bad.status_code == 422, (url, foreign, bad.text)
            assert bad.json()["code"] == "validation_error"
            assert [e["loc"] for e in bad.json()["errors"]] == [["query", "cursor"]]


HOSTILE_TEXTS = ["'; DROP TABLE coupon_templates; --", "🎉🧧 新人礼券", "שלום مرحبا", 'a"\\`$1%s']


async def test_template_names_are_stored_verbatim(coupon, kit):
    for n, name in enumerate(HOSTILE_TEXTS):
        code = f"VERBATIM{n}"
        created = await coupon.client.post(
            "/v1/coupon-templates",
            json={"code": code, "name": name, "kind": "amount_off", "value": 1, "valid_days": 1},
        )
        assert created.status_code == 201, created.text
        assert created.json()["name"] == name
        assert (await coupon.client.get(f"/v1/coupon-templates/{code}")).json()["name"] == name
    nul = await coupon.client.post(
        "/v1/coupon-templates",
        json={"code": "NUL", "name": "a\x00b", "kind": "amount_off", "value": 1, "valid_days": 1},
    )
    assert nul.status_code == 422 and nul.json()["code"] == "validation_error"
    assert (await coupon.client.get("/v1/coupon-templates/NUL")).status_code == 404


async def test_redeeming_an_unknown_coupon_is_a_documented_404(coupon):
    """Found by schemathesis: the 404 was not in the operation's OpenAPI responses."""
    response = await coupon.client.post(
        "/v1/redemptions", json={"coupon_code": "NOPE", "member_id": "m", "order_id": "o"}
    )
    assert response.status_code == 404 and response.json()["code"] == "not_found"
    declared = coupon.app.openapi()["paths"]["/v1/redemptions"]["post"]["responses"]
    assert "404" in declared
