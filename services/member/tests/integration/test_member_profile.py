"""Members after sign-up: lookup, changes, channel identities, erasure, referral qualification."""

from __future__ import annotations

import itertools

import loyalty_member.bootstrap
import pytest_asyncio
from loyalty_member.service_layer.referrals import qualify_referral
from loyalty_shared.paging import decode_cursor
from loyalty_shared.testing import DatabaseFactory, RunningService, outbox_events, start_service

_phones = itertools.count(13600000001)


def new_phone() -> str:
    return str(next(_phones))


@pytest_asyncio.fixture(scope="module")
async def member(databases: DatabaseFactory):
    service = await start_service(
        loyalty_member.bootstrap.definition(),
        database_url=await databases.fresh("profile_member"),
        bootstrap="127.0.0.1:9",
        background=False,
    )
    yield service
    await service.stop()


async def sign_up(member: RunningService, **fields) -> dict:
    response = await member.client.post("/v1/members", json={"phone": new_phone(), **fields})
    assert response.status_code == 201, response.text
    return response.json()


async def test_lookup_by_phone_card_number_or_email(member):
    created = await sign_up(member, email="Mei.Lin@example.com")
    phone_digits = created["phone"].removeprefix("+86")
    for query in (
        {"phone": phone_digits},
        {"phone": created["phone"]},
        {"card_no": created["card_no"]},
        {"email": "mei.lin@EXAMPLE.com"},
    ):
        found = (await member.client.get("/v1/members", params=query)).json()
        assert [m["member_id"] for m in found["items"]] == [created["member_id"]], query
        assert found["next_cursor"] is None
    nobody = (await member.client.get("/v1/members", params={"phone": "13999999999"})).json()
    assert nobody["items"] == []


async def test_lookup_needs_exactly_one_key(member):
    for params in ({}, {"phone": "13600000001", "email": "a@b.cn"}):
        response = await member.client.get("/v1/members", params=params)
        assert response.status_code == 422
        assert response.json()["code"] == "validation_error"
    bad = await member.client.get("/v1/members", params={"phone": "not-a-phone"})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_phone"


async def test_patch_changes_only_what_is_sent_and_says_what_changed(member):
    created = await sign_up(member, name="王芳", consents={"email": True})
    member_id = created["member_id"]
    response = await member.client.patch(
        f"/v1/members/{member_id}",
        json={"name": "王芳芳", "locale": "en", "consents": {"sms": True}},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["name"] == "王芳芳" and body["locale"] == "en"
    assert body["consents"] == {"email": True, "sms": True}
    assert body["phone"] == created["phone"] and body["timezone"] == created["timezone"]

    updates = await outbox_events(member.runtime, key=member_id, event_type="member.updated")
    assert len(updates) == 1
    data = updates[0]["data"]
    assert data["changed"] == ["consents", "locale", "name"]
    assert data["locale"] == "en" and data["consents"] == {"email": True, "sms": True}
    assert "王芳芳" not in str(updates[0])  # personal values never travel in events

    # The same change again changes nothing and emits nothing.
    again = await member.client.patch(f"/v1/members/{member_id}", json={"name": "王芳芳"})
    assert again.status_code == 200
    assert len(await outbox_events(member.runtime, key=member_id, event_type="member.updated")) == 1


async def test_patch_phone_is_normalised_and_unique(member):
    first = await sign_up(member)
    second = await sign_up(member)
    taken = await member.client.patch(
        f"/v1/members/{second['member_id']}", json={"phone": first["phone"]}
    )
    assert taken.status_code == 409
    assert taken.json()["code"] == "member_exists"
    assert taken.json()["member_id"] == first["member_id"]
    fresh = new_phone()
    moved = await member.client.patch(
        f"/v1/members/{second['member_id']}",
        json={"phone": f"{fresh[:3]} {fresh[3:7]} {fresh[7:]}"},
    )
    assert moved.status_code == 200 and moved.json()["phone"] == "+86" + fresh
    for bad in (
        {"phone": None},
        {"phone": "12"},
        {"timezone": "Mars/Base"},
        {"member_id": "x"},
        {"consents": {"fax": True}},
    ):
        response = await member.client.patch(f"/v1/members/{second['member_id']}", json=bad)
        assert response.status_code == 422, bad
    missing = await member.client.patch("/v1/members/nope", json={"name": "x"})
    assert missing.status_code == 404


async def test_erasure_scrubs_personal_data_and_keeps_the_member_id(member):
    created = await sign_up(
        member,
        email="erase.me@example.com",
        name="李雷",
        birthday="1990-05-20",
        consents={"sms": True},
    )
    member_id = created["member_id"]
    added = await member.client.post(
        f"/v1/members/{member_id}/identities",
        json={"kind": "wechat_openid", "value": "o6_bmjrPTlm6"},
    )
    assert added.status_code == 201

    response = await member.client.delete(f"/v1/members/{member_id}")
    assert response.status_code == 204
    body = (await member.client.get(f"/v1/members/{member_id}")).json()
    assert body["member_id"] == member_id and body["erased_at"] is not None
    assert [body[k] for k in ("phone", "email", "name", "birthday")] == [None] * 4
    assert body["consents"] == {}
    assert (await member.client.get(f"/v1/members/{member_id}/identities")).json()["items"] == []
    found = await member.client.get("/v1/members", params={"card_no": created["card_no"]})
    assert found.json()["items"] == []

    # Erasing again is harmless: no second event. The phone is free for a new sign-up.
    assert (await member.client.delete(f"/v1/members/{member_id}")).status_code == 204
    erased = await outbox_events(member.runtime, key=member_id, event_type="member.erased")
    assert len(erased) == 1 and erased[0]["data"]["member_id"] == member_id
    again = await member.client.post("/v1/members", json={"phone": created["phone"]})
    assert again.status_code == 201 and again.json()["member_id"] != member_id

    changed = await member.client.patch(f"/v1/members/{member_id}", json={"name": "x"})
    assert changed.status_code == 409 and changed.json()["code"] == "member_erased"
    assert (await member.client.delete("/v1/members/nope")).status_code == 404


async def test_identities_are_recorded_once_and_never_sent_in_events(member):
    created = await sign_up(member)
    member_id = created["member_id"]
    body = {"kind": "push_token", "value": "fcm:abc123"}
    first = await member.client.post(f"/v1/members/{member_id}/identities", json=body)
    second = await member.client.post(f"/v1/members/{member_id}/identities", json=body)
    assert (first.status_code, second.status_code) == (201, 200)
    listed = (await member.client.get(f"/v1/members/{member_id}/identities")).json()["items"]
    assert [(i["kind"], i["value"]) for i in listed] == [("push_token", "fcm:abc123")]
    bad = await member.client.post(
        f"/v1/members/{member_id}/identities", json={"kind": "fax", "value": "1"}
    )
    assert bad.status_code == 422
    unknown = await member.client.post("/v1/members/nope/identities", json=body)
    assert unknown.status_code == 404
    assert not any("fcm:abc123" in str(e) for e in await outbox_events(member.runtime))


async def test_a_referral_qualifies_once_on_the_first_paid_order(member):
    referrer = await sign_up(member)
    referred = await sign_up(member, referral_code=referrer["referral_code"].lower())
    assert referred["referred_by"] == referrer["member_id"]
    loner = await sign_up(member)
    runtime = member.runtime
    now = runtime.clock.now()
    async with runtime.transaction() as conn:
        assert (
            await qualify_referral(
                conn, member_id=referred["member_id"], order_id="o1", occurred_at=now
            )
            == referrer["member_id"]
        )
    async with runtime.transaction() as conn:
        assert (
            await qualify_referral(
                conn, member_id=referred["member_id"], order_id="o2", occurred_at=now
            )
            is None
        )
        assert (
            await qualify_referral(
                conn, member_id=loner["member_id"], order_id="o3", occurred_at=now
            )
            is None
        )
    events = await outbox_events(runtime, event_type="member.referral_qualified")
    assert len(events) == 1
    assert events[0]["subject"] == referrer["member_id"]
    assert events[0]["data"]["referred_member_id"] == referred["member_id"]
    assert events[0]["data"]["order_id"] == "o1"


async def test_an_email_shared_by_members_pages_like_any_list(member):
    shared = "family@example.com"
    ids = sorted([(await sign_up(member, email=shared))["member_id"] for _ in range(3)])
    first = (await member.client.get("/v1/members", params={"email": shared, "limit": 2})).json()
    assert [m["member_id"] for m in first["items"]] == ids[:2]
    assert decode_cursor(first["next_cursor"], 1) == (ids[1],)  # after the page's last member
    bare = await member.client.get("/v1/members", params={"email": shared, "cursor": ids[1]})
    assert bare.status_code == 422 and bare.json()["errors"][0]["loc"] == ["query", "cursor"]
    rest = (
        await member.client.get(
            "/v1/members", params={"email": shared, "limit": 2, "cursor": first["next_cursor"]}
        )
    ).json()
    assert [m["member_id"] for m in rest["items"]] == ids[2:] and rest["next_cursor"] is None
    too_many = await member.client.get("/v1/members", params={"email": shared, "limit": 501})
    assert too_many.status_code == 422


async def test_two_members_given_one_phone_at_once_is_a_409_not_a_500(member, capfd):
    """Two changes race for one phone: the loser's UPDATE meets the unique index after the
    winner's commit. It answers 409 `member_exists` naming the winner, and no log line carries
    the phone (a failing statement's parameters once went into the traceback)."""
    import asyncio

    from loyalty_member.domain.members import normalise_phone
    from sqlalchemy import text

    winner = await sign_up(member, phone=new_phone())
    loser = await sign_up(member, phone=new_phone())
    contested = new_phone()
    e164 = normalise_phone(contested)
    async with member.runtime.engine.connect() as conn:
        # the winner's change, not yet committed: the loser's check finds no owner, then its
        # UPDATE waits on the unique index until the winner commits
        await conn.execute(
            text("UPDATE members SET phone = :p WHERE member_id = :m"),
            {"p": e164, "m": winner["member_id"]},
        )
        patch = asyncio.create_task(
            member.client.patch(f"/v1/members/{loser['member_id']}", json={"phone": contested})
        )
        await asyncio.sleep(0.5)
        await conn.commit()
    response = await patch
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "member_exists"
    assert response.json()["member_id"] == winner["member_id"]
    logged = "".join(capfd.readouterr())
    assert contested not in logged
