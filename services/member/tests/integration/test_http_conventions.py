"""The HTTP conventions of the contract (§3), checked on the member service (§4).

The service runs in-process without its Kafka tasks on one fresh database for the module;
every test uses phones of its own, so the tests do not depend on each other's order.
"""

from __future__ import annotations

import asyncio
import itertools
import json

import loyalty_member.bootstrap
import pytest
import pytest_asyncio
from loyalty_shared.auth import ApiKeys
from loyalty_shared.testing import (
    AUTH,
    READ_ONLY_AUTH,
    TEST_API_KEYS,
    DatabaseFactory,
    RunningService,
    start_service,
)
from sqlalchemy import text

# A second key with the member scopes: idempotency keys are scoped by the caller's API key.
OTHER_KEY = "other-writer-key"
OTHER_AUTH = {"Authorization": f"Bearer {OTHER_KEY}"}
PROBLEM_FIELDS = {"type", "title", "status", "detail", "code"}
MIB = 1024 * 1024

_numbers = itertools.count(1)


def new_phone() -> str:
    """A mainland mobile number no other test in this module uses (11 digits, no +86)."""
    return f"139{next(_numbers):08d}"


def e164(phone: str) -> str:
    return "+86" + phone


@pytest_asyncio.fixture(scope="module")
async def member(databases: DatabaseFactory):
    service = await start_service(
        loyalty_member.bootstrap.definition(),
        database_url=await databases.fresh("http_member"),
        bootstrap="127.0.0.1:9",  # background=False: the broker is never contacted
        background=False,
    )
    service.app.state.api_keys = ApiKeys(f"{TEST_API_KEYS};{OTHER_KEY}=members:read,members:write")
    yield service
    await service.stop()


@pytest.fixture
def client(member: RunningService):
    return member.client


async def scalar(member: RunningService, sql: str, **params) -> int:
    async with member.runtime.engine.connect() as conn:
        return int(await conn.scalar(text(sql), params))


async def count_members(member: RunningService, phone: str | None = None) -> int:
    if phone is None:
        return await scalar(member, "SELECT count(*) FROM members")
    return await scalar(member, "SELECT count(*) FROM members WHERE phone = :p", p=phone)


async def count_outbox(member: RunningService, member_id: str | None = None) -> int:
    if member_id is None:
        return await scalar(member, "SELECT count(*) FROM outbox")
    return await scalar(member, "SELECT count(*) FROM outbox WHERE key = :k", k=member_id)


async def snapshot(member: RunningService) -> tuple[int, int]:
    return await count_members(member), await count_outbox(member)


def assert_problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert PROBLEM_FIELDS <= body.keys(), body
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].endswith(code)
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def error_locs(body: dict) -> list[list]:
    errors = body["errors"]
    assert errors, body
    for error in errors:
        assert isinstance(error["loc"], list)
        assert isinstance(error["msg"], str) and error["msg"]
    return [error["loc"] for error in errors]


# ---------------------------------------------------------------------------------------------
# Authentication and scopes
# ---------------------------------------------------------------------------------------------


async def test_no_authorization_header_is_401(client, member):
    before = await snapshot(member)
    for method, path, kwargs in [
        ("GET", "/v1/members/anyone", {}),
        ("POST", "/v1/members", {"json": {"phone": new_phone()}}),
        ("POST", "/v1/admin/outbox:replay", {"json": {"since": "2026-01-01T00:00:00Z"}}),
    ]:
        response = await client.request(method, path, headers={"Authorization": ""}, **kwargs)
        assert_problem(response, 401, "unauthorized")
    assert await snapshot(member) == before


@pytest.mark.parametrize(
    "authorization",
    ["Bearer not-a-key", "Bearer test-key-but-longer", "Bearer ", "Basic test-key", "test-key"],
)
async def test_an_unknown_or_malformed_key_is_401(client, member, authorization):
    before = await snapshot(member)
    phone = new_phone()
    response = await client.post(
        "/v1/members", json={"phone": phone}, headers={"Authorization": authorization}
    )
    assert_problem(response, 401, "unauthorized")
    response = await client.get("/v1/members/anyone", headers={"Authorization": authorization})
    assert_problem(response, 401, "unauthorized")
    assert await snapshot(member) == before


async def test_a_key_without_the_scope_is_403(client, member):
    before = await snapshot(member)
    response = await client.post("/v1/members", json={"phone": new_phone()}, headers=READ_ONLY_AUTH)
    body = assert_problem(response, 403, "forbidden")
    assert "members:write" in body["detail"]
    # the same key may read
    response = await client.get("/v1/members/nobody", headers=READ_ONLY_AUTH)
    assert_problem(response, 404, "not_found")
    # and the admin endpoints need `admin`
    response = await client.post("/v1/admin/jobs/nope/run", json={}, headers=READ_ONLY_AUTH)
    assert_problem(response, 403, "forbidden")
    response = await client.post(
        "/v1/admin/outbox:replay",
        json={"since": "2026-01-01T00:00:00Z"},
        headers=OTHER_AUTH,
    )
    assert_problem(response, 403, "forbidden")
    assert await snapshot(member) == before


@pytest.mark.parametrize("path", ["/healthz", "/metrics"])
async def test_health_and_metrics_need_no_key(client, path):
    response = await client.get(path, headers={"Authorization": ""})
    assert response.status_code == 200, response.text
    response = await client.get(path, headers={"Authorization": "Bearer not-a-key"})
    assert response.status_code == 200, response.text


async def test_metrics_are_prometheus_text(client):
    await client.get("/healthz")
    response = await client.get("/metrics", headers={"Authorization": ""})
    assert response.headers["content-type"].startswith("text/plain")
    assert "loyalty_http_request_duration_seconds" in response.text


# ---------------------------------------------------------------------------------------------
# Sign-up and problem documents
# ---------------------------------------------------------------------------------------------


async def test_sign_up_then_read_the_member(client, member):
    phone = new_phone()
    response = await client.post("/v1/members", json={"phone": phone, "name": "Li Lei"})
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["phone"] == e164(phone)
    assert created["tier"] == "bronze"
    assert len(created["card_no"]) == 16
    assert len(created["referral_code"]) == 8

    response = await client.get(f"/v1/members/{created['member_id']}")
    assert response.status_code == 200, response.text
    assert response.json() == created
    assert await count_members(member, e164(phone)) == 1
    assert await count_outbox(member, created["member_id"]) == 1


@pytest.mark.parametrize(
    "content",
    [
        b'{"phone": "13900000000"',  # truncated
        b'{"phone": }',
        b"{'phone': '13900000000'}",  # not JSON quotes
        b"not json at all",
        b'{"phone": "13900000000"} trailing',
        b"\xff\xfe\x00garbage",  # not even UTF-8
    ],
)
async def test_malformed_json_is_a_validation_error_never_a_500(client, member, content):
    before = await snapshot(member)
    response = await client.post(
        "/v1/members", content=content, headers={"Content-Type": "application/json"}
    )
    body = assert_problem(response, 422, "validation_error")
    locs = error_locs(body)
    assert locs[0][0] == "body"
    assert await snapshot(member) == before


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "phone"),
        ({"name": "no phone"}, "phone"),
        ({"phone": 13900000000}, "phone"),
        ({"phone": None}, "phone"),
        ({"phone": ["13900000000"]}, "phone"),
        ({"phone": ""}, "phone"),
        ({"phone": "1" * 33}, "phone"),
        ({"phone": "13900000000", "email": "not-an-email"}, "email"),
        ({"phone": "13900000000", "birthday": "yesterday"}, "birthday"),
        ({"phone": "13900000000", "birthday": 12}, "birthday"),
        ({"phone": "13900000000", "locale": "fr"}, "locale"),
        ({"phone": "13900000000", "timezone": "Mars/Olympus"}, "timezone"),
        ({"phone": "13900000000", "consents": {"email": "sure"}}, "consents"),
        ({"phone": "13900000000", "consents": {"fax": True}}, "consents"),
        ({"phone": "13900000000", "consents": ["email"]}, "consents"),
        ({"phone": "13900000000", "name": "x" * 201}, "name"),
        ({"phone": "13900000000", "store_id": 5}, "store_id"),
        ({"phone": "13900000000", "unknown_field": 1}, "unknown_field"),
    ],
)
async def test_wrong_or_missing_fields_name_the_field(client, member, payload, field):
    before = await snapshot(member)
    response = await client.post("/v1/members", json=payload)
    body = assert_problem(response, 422, "validation_error")
    locs = error_locs(body)
    assert any(loc[:1] == ["body"] and field in loc for loc in locs), locs
    assert field in body["detail"]
    assert await snapshot(member) == before


@pytest.mark.parametrize("payload", [[], "13900000000", 42, None, [{"phone": "13900000000"}]])
async def test_a_body_that_is_not_an_object_is_a_validation_error(client, member, payload):
    before = await snapshot(member)
    response = await client.post("/v1/members", json=payload)
    body = assert_problem(response, 422, "validation_error")
    error_locs(body)
    assert await snapshot(member) == before


async def test_an_empty_body_is_a_validation_error(client, member):
    before = await snapshot(member)
    response = await client.post("/v1/members")
    body = assert_problem(response, 422, "validation_error")
    error_locs(body)
    assert await snapshot(member) == before


@pytest.mark.parametrize(
    ("content_type", "content"),
    [
        ("text/plain", b'{"phone": "13900000000"}'),
        ("application/x-www-form-urlencoded", b"phone=13900000000"),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="phone"\r\n\r\n13900000000\r\n--x--\r\n',
        ),
        ("application/xml", b"<phone>13900000000</phone>"),
        (None, b'{"phone": "13900000000"}'),
    ],
)
async def test_a_body_that_is_not_json_is_415(client, member, content_type, content):
    before = await snapshot(member)
    headers = {"Content-Type": content_type} if content_type else {}
    response = await client.post("/v1/members", content=content, headers=headers)
    assert response.request.headers.get("content-type") == content_type
    assert_problem(response, 415, "unsupported_media_type")
    assert await snapshot(member) == before


async def test_json_with_a_charset_is_accepted(client):
    phone = new_phone()
    response = await client.post(
        "/v1/members",
        content=json.dumps({"phone": phone}).encode(),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 201, response.text


async def test_a_body_over_one_mib_is_413(client, member):
    before = await snapshot(member)
    padding = "x" * MIB
    response = await client.post("/v1/members", json={"phone": new_phone(), "name": padding})
    assert_problem(response, 413, "payload_too_large")
    assert await snapshot(member) == before


async def test_a_streamed_body_over_one_mib_is_413(client, member):
    """No Content-Length (chunked): the limit holds while the body is read."""
    before = await snapshot(member)

    async def chunks():
        yield b'{"phone": "13900000000", "name": "'
        for _ in range(17):
            yield b"x" * 65536
        yield b'"}'

    response = await client.post(
        "/v1/members", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "payload_too_large")
    assert await snapshot(member) == before


async def test_a_body_just_under_one_mib_is_not_413(client, member):
    phone = new_phone()
    payload = {"phone": phone, "store_id": "s1", "channel": "pos"}
    raw = json.dumps(payload).encode()
    # pad with whitespace, which JSON ignores, up to exactly 1 MiB
    raw = raw[:-1] + b" " * (MIB - len(raw)) + b"}"
    assert len(raw) == MIB
    response = await client.post(
        "/v1/members", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 201, response.text
    assert await count_members(member, e164(phone)) == 1


@pytest.mark.parametrize(
    "phone",
    [
        "12345",
        "not a phone",
        "+86",
        "1380013800",
        "12345678901",
        "+999 1234567",
        "     ",
        "abc13800138000",
        "13800138000;1",
        "138 0013 8000 x12",
    ],
)
async def test_an_invalid_phone_is_422_invalid_phone(client, member, phone):
    before = await snapshot(member)
    response = await client.post("/v1/members", json={"phone": phone})
    assert_problem(response, 422, "invalid_phone")
    assert await snapshot(member) == before


async def test_an_unknown_referral_code_is_422_and_changes_nothing(client, member):
    before = await snapshot(member)
    response = await client.post(
        "/v1/members", json={"phone": new_phone(), "referral_code": "NOSUCH22"}
    )
    assert_problem(response, 422, "invalid_referral_code")
    assert await snapshot(member) == before


async def test_a_duplicate_phone_is_409_member_exists(client, member):
    phone = new_phone()
    first = await client.post("/v1/members", json={"phone": phone})
    assert first.status_code == 201, first.text
    member_id = first.json()["member_id"]
    before = await snapshot(member)

    spaced = f"{phone[:3]} {phone[3:7]} {phone[7:]}"
    dashed = f"{phone[:3]}-{phone[3:7]}-{phone[7:]}"
    for written in [phone, spaced, dashed, e164(phone), "+86 " + spaced, "0086" + phone]:
        response = await client.post("/v1/members", json={"phone": written, "name": "again"})
        body = assert_problem(response, 409, "member_exists")
        assert body["member_id"] == member_id, written

    assert await snapshot(member) == before
    assert await count_members(member, e164(phone)) == 1


async def test_a_duplicate_of_a_phone_first_written_with_spaces(client, member):
    digits = new_phone()
    spaced = f"{digits[:3]} {digits[3:7]} {digits[7:]}"
    first = await client.post("/v1/members", json={"phone": spaced})
    assert first.status_code == 201, first.text
    assert first.json()["phone"] == e164(digits)

    response = await client.post("/v1/members", json={"phone": e164(digits)})
    body = assert_problem(response, 409, "member_exists")
    assert body["member_id"] == first.json()["member_id"]


async def test_an_unknown_member_is_404_not_found(client):
    response = await client.get("/v1/members/01JZZZZZZZZZZZZZZZZZZZZZZZ")
    body = assert_problem(response, 404, "not_found")
    assert "01JZZZZZZZZZZZZZZZZZZZZZZZ" in body["detail"]


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/nope"), ("GET", "/nope"), ("POST", "/v1/nope"), ("GET", "/v2/members/x")],
)
async def test_an_unknown_route_is_a_404_problem(client, member, method, path):
    before = await snapshot(member)
    kwargs = {"json": {"phone": new_phone()}} if method == "POST" else {}
    response = await client.request(method, path, **kwargs)
    assert_problem(response, 404, "not_found")
    assert await snapshot(member) == before


async def test_a_wrong_method_is_a_405_problem(client):
    response = await client.put("/v1/members/someone", json={})
    assert_problem(response, 405, "method_not_allowed")


async def test_a_nul_character_is_refused_not_a_server_error(client, member):
    """PostgreSQL cannot store U+0000 in text: that is bad input (4xx), not an outage (503)."""
    before = await snapshot(member)
    for field in ["name", "store_id", "channel", "referral_code", "phone"]:
        payload = {"phone": new_phone(), field: "AB\u0000CD"}
        response = await client.post("/v1/members", json=payload)
        assert 400 <= response.status_code < 500, (field, response.text)
        if field != "phone":
            body = assert_problem(response, 422, "validation_error")
            assert any(field in loc for loc in error_locs(body)), body
    assert await snapshot(member) == before


async def test_a_nul_character_in_a_path_is_refused_not_a_server_error(client):
    response = await client.get("/v1/members/01J%00X")
    body = assert_problem(response, 422, "validation_error")
    error_locs(body)


async def test_bad_input_changes_nothing(client, member):
    """After a volley of refused requests there are as many members and events as before."""
    before = await snapshot(member)
    phone = new_phone()
    refused = [
        client.post("/v1/members", json={"phone": phone}, headers={"Authorization": ""}),
        client.post("/v1/members", json={"phone": phone}, headers=READ_ONLY_AUTH),
        client.post("/v1/members", json={"phone": phone, "email": "bad"}),
        client.post("/v1/members", json={"phone": phone, "timezone": "Nowhere/Nope"}),
        client.post("/v1/members", json={"phone": phone, "referral_code": "ZZZZZZZZ"}),
        client.post("/v1/members", content=b"{", headers={"Content-Type": "application/json"}),
        client.post("/v1/members", content=phone.encode(), headers={"Content-Type": "text/plain"}),
        client.post("/v1/members", json={"phone": "garbage"}),
    ]
    for request in refused:
        response = await request
        assert 400 <= response.status_code < 500, response.text
    assert await snapshot(member) == before
    assert await count_members(member, e164(phone)) == 0


# ---------------------------------------------------------------------------------------------
# Idempotency-Key
# ---------------------------------------------------------------------------------------------


async def test_the_same_key_and_body_answers_the_first_response_again(client, member):
    phone = new_phone()
    payload = {"phone": phone, "name": "Han Meimei", "consents": {"sms": True}}
    headers = {"Idempotency-Key": "signup-" + phone}
    first = await client.post("/v1/members", json=payload, headers=headers)
    assert first.status_code == 201, first.text
    member_id = first.json()["member_id"]

    for _ in range(3):
        again = await client.post("/v1/members", json=payload, headers=headers)
        assert again.status_code == 201, again.text
        assert again.json() == first.json()
        assert again.json()["member_id"] == member_id
        assert again.headers["content-type"] == first.headers["content-type"]

    assert await count_members(member, e164(phone)) == 1
    assert await count_outbox(member, member_id) == 1


async def test_the_same_key_with_another_body_is_422_idempotency_key_reused(client, member):
    phone = new_phone()
    headers = {"Idempotency-Key": "reuse-" + phone}
    first = await client.post("/v1/members", json={"phone": phone}, headers=headers)
    assert first.status_code == 201, first.text
    before = await snapshot(member)

    for other in [{"phone": new_phone()}, {"phone": phone, "name": "changed"}]:
        response = await client.post("/v1/members", json=other, headers=headers)
        assert_problem(response, 422, "idempotency_key_reused")
    assert await snapshot(member) == before
    # the key still answers its own request
    again = await client.post("/v1/members", json={"phone": phone}, headers=headers)
    assert again.status_code == 201
    assert again.json() == first.json()


async def test_idempotency_keys_are_forgotten_after_the_retention(client, member):
    """The platform job `purge-idempotency-keys` (every service, hourly) forgets keys older than
    LOYALTY_IDEMPOTENCY_RETENTION_HOURS (24): then the same key is a new request."""
    old_phone, fresh_phone = new_phone(), new_phone()
    old_key = {"Idempotency-Key": "retention-old-" + old_phone}
    fresh_key = {"Idempotency-Key": "retention-fresh-" + fresh_phone}
    assert (await client.post("/v1/members", json={"phone": old_phone}, headers=old_key)).is_success
    assert (
        await client.post("/v1/members", json={"phone": fresh_phone}, headers=fresh_key)
    ).is_success
    async with member.runtime.transaction() as conn:
        await conn.execute(
            text(
                "UPDATE idempotency_keys SET created_at = created_at - interval '25 hours' "
                "WHERE key = :k"
            ),
            {"k": old_key["Idempotency-Key"]},
        )
    jobs = (await client.get("/v1/admin/jobs")).json()["items"]
    assert "purge-idempotency-keys" in [j["job"] for j in jobs]
    run = await client.post("/v1/admin/jobs/purge-idempotency-keys/run", json={})
    assert run.status_code == 200, run.text
    assert run.json()["counts"]["keys_purged"] >= 1

    # the old key is forgotten: another body under it is a request of its own
    other = new_phone()
    reused = await client.post("/v1/members", json={"phone": other}, headers=old_key)
    assert reused.status_code == 201, reused.text
    # the fresh key still guards its request
    clash = await client.post("/v1/members", json={"phone": new_phone()}, headers=fresh_key)
    assert_problem(clash, 422, "idempotency_key_reused")


async def test_an_idempotency_key_belongs_to_one_api_key(client, member):
    key = {"Idempotency-Key": "shared-" + new_phone()}
    phone_a, phone_b = new_phone(), new_phone()
    first = await client.post("/v1/members", json={"phone": phone_a}, headers={**AUTH, **key})
    assert first.status_code == 201, first.text

    # another API key with the same Idempotency-Key and another body: a request of its own
    other = await client.post("/v1/members", json={"phone": phone_b}, headers={**OTHER_AUTH, **key})
    assert other.status_code == 201, other.text
    assert other.json()["member_id"] != first.json()["member_id"]

    # and with the first caller's body it is not a replay of the first caller's answer
    repeat = await client.post(
        "/v1/members", json={"phone": phone_a}, headers={**OTHER_AUTH, **key}
    )
    body = assert_problem(repeat, 422, "idempotency_key_reused")
    assert "member_id" not in body

    replay = await client.post(
        "/v1/members", json={"phone": phone_b}, headers={**OTHER_AUTH, **key}
    )
    assert replay.status_code == 201
    assert replay.json() == other.json()
    assert await count_members(member, e164(phone_a)) == 1
    assert await count_members(member, e164(phone_b)) == 1


async def test_the_same_api_key_written_differently_is_the_same_caller(client, member):
    """Idempotency keys are scoped by the API key, not by how the header spells it."""
    phone = new_phone()
    key = {"Idempotency-Key": "spelling-" + phone}
    first = await client.post("/v1/members", json={"phone": phone}, headers=key)
    assert first.status_code == 201, first.text
    for authorization in ["bearer test-key", "Bearer  test-key", "BEARER test-key "]:
        again = await client.post(
            "/v1/members", json={"phone": phone}, headers={**key, "Authorization": authorization}
        )
        assert again.status_code == 201, (authorization, again.text)
        assert again.json() == first.json()
    assert await count_members(member, e164(phone)) == 1


async def test_concurrent_requests_with_one_key_create_one_member(client, member):
    phone = new_phone()
    headers = {"Idempotency-Key": "race-" + phone}
    responses = await asyncio.gather(
        *(client.post("/v1/members", json={"phone": phone}, headers=headers) for _ in range(8))
    )
    created = [r for r in responses if r.status_code == 201]
    assert created, [r.text for r in responses]
    assert len({r.json()["member_id"] for r in created}) == 1
    for response in responses:
        if response.status_code != 201:
            assert_problem(response, 409, "idempotency_key_in_progress")
    assert await count_members(member, e164(phone)) == 1
    assert await count_outbox(member, created[0].json()["member_id"]) == 1
    # once the first has answered, every retry gets its answer
    again = await client.post("/v1/members", json={"phone": phone}, headers=headers)
    assert again.status_code == 201
    assert again.json() == created[0].json()


async def test_concurrent_sign_ups_of_one_phone_create_one_member(client, member):
    phone = new_phone()
    responses = await asyncio.gather(
        *(client.post("/v1/members", json={"phone": phone}) for _ in range(8))
    )
    created = [r for r in responses if r.status_code == 201]
    assert len(created) == 1, [r.text for r in responses]
    member_id = created[0].json()["member_id"]
    for response in responses:
        if response.status_code != 201:
            body = assert_problem(response, 409, "member_exists")
            assert body["member_id"] == member_id
    assert await count_members(member, e164(phone)) == 1
    assert await count_outbox(member, member_id) == 1


async def test_without_a_key_a_repeated_phone_is_409(client, member):
    phone = new_phone()
    first = await client.post("/v1/members", json={"phone": phone})
    assert first.status_code == 201, first.text
    second = await client.post("/v1/members", json={"phone": phone})
    body = assert_problem(second, 409, "member_exists")
    assert body["member_id"] == first.json()["member_id"]
    assert await count_members(member, e164(phone)) == 1
    assert await count_outbox(member, first.json()["member_id"]) == 1


async def test_a_refused_request_is_replayed_as_refused(client, member):
    headers = {"Idempotency-Key": "bad-phone-" + new_phone()}
    first = await client.post("/v1/members", json={"phone": "12345"}, headers=headers)
    assert_problem(first, 422, "invalid_phone")
    again = await client.post("/v1/members", json={"phone": "12345"}, headers=headers)
    assert_problem(again, 422, "invalid_phone")
    assert again.json() == first.json()


async def test_a_new_key_for_an_existing_phone_is_409(client, member):
    phone = new_phone()
    first = await client.post(
        "/v1/members", json={"phone": phone}, headers={"Idempotency-Key": "a-" + phone}
    )
    assert first.status_code == 201, first.text
    second = await client.post(
        "/v1/members", json={"phone": phone}, headers={"Idempotency-Key": "b-" + phone}
    )
    body = assert_problem(second, 409, "member_exists")
    assert body["member_id"] == first.json()["member_id"]


async def test_an_overlong_idempotency_key_is_refused(client, member):
    before = await snapshot(member)
    response = await client.post(
        "/v1/members", json={"phone": new_phone()}, headers={"Idempotency-Key": "k" * 256}
    )
    assert_problem(response, 422, "validation_error")
    assert await snapshot(member) == before


# ---------------------------------------------------------------------------------------------
# Admin endpoints
# ---------------------------------------------------------------------------------------------


async def test_running_an_unknown_job_is_404(client):
    response = await client.post("/v1/admin/jobs/nope/run", json={})
    body = assert_problem(response, 404, "not_found")
    assert "nope" in body["detail"]
    response = await client.post(
        "/v1/admin/jobs/nope/run", json={"as_of": "2026-06-01T00:00:00+08:00"}
    )
    assert_problem(response, 404, "not_found")


async def test_the_admin_job_list(client):
    response = await client.get("/v1/admin/jobs")
    assert response.status_code == 200, response.text
    assert isinstance(response.json()["items"], list)


async def test_outbox_replay_counts_the_events_it_schedules(client, member):
    phone = new_phone()
    created = await client.post("/v1/members", json={"phone": phone})
    assert created.status_code == 201, created.text

    response = await client.post("/v1/admin/outbox:replay", json={"since": "2026-01-01T00:00:00Z"})
    assert response.status_code == 200, response.text
    assert response.json() == {"scheduled": 0}  # nothing was published: nothing to publish again

    # as if the relay had published every event
    async with member.runtime.engine.begin() as conn:
        await conn.execute(text("UPDATE outbox SET sent_at = now() WHERE sent_at IS NULL"))
    total = await count_outbox(member)
    assert total >= 1

    response = await client.post("/v1/admin/outbox:replay", json={"since": "2000-01-01T00:00:00Z"})
    assert response.status_code == 200, response.text
    assert response.json() == {"scheduled": total}
    assert await scalar(member, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == total

    # since a time after every event: none
    response = await client.post(
        "/v1/admin/outbox:replay", json={"since": "2999-01-01T00:00:00+08:00"}
    )
    assert response.json() == {"scheduled": 0}


@pytest.mark.parametrize(
    "payload",
    [
        {"since": "2026-01-01T00:00:00"},  # no offset
        {"since": "2026-01-01"},
        {"since": "yesterday"},
        {"since": None},
        {},
    ],
)
async def test_outbox_replay_needs_a_time_with_an_offset(client, member, payload):
    before = await scalar(member, "SELECT count(*) FROM outbox WHERE sent_at IS NULL")
    response = await client.post("/v1/admin/outbox:replay", json=payload)
    body = assert_problem(response, 422, "validation_error")
    assert any("since" in loc for loc in error_locs(body)), body
    assert await scalar(member, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == before


async def test_a_job_run_needs_a_time_with_an_offset(client):
    response = await client.post("/v1/admin/jobs/nope/run", json={"as_of": "2026-01-01T00:00:00"})
    body = assert_problem(response, 422, "validation_error")
    assert any("as_of" in loc for loc in error_locs(body)), body


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"x" * (MIB + 10), "application/json"),
        (b"phone=1", "application/x-www-form-urlencoded"),
    ],
)
async def test_without_a_key_nothing_else_is_judged(client, member, content, content_type):
    """A caller without a valid key learns only that: 401 before the body is looked at."""
    before = await snapshot(member)
    response = await client.post(
        "/v1/members", content=content, headers={"Authorization": "", "Content-Type": content_type}
    )
    assert_problem(response, 401, "unauthorized")
    assert await snapshot(member) == before


async def test_deeply_nested_json_is_refused_before_parsing(client, member):
    before = await snapshot(member)
    deep = b'{"phone": "13900000000", "consents": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = await client.post(
        "/v1/members", content=deep, headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 422, "validation_error")
    assert "nests deeper" in response.json()["detail"]
    assert await snapshot(member) == before
    # Brackets inside strings do not count.
    fine = await client.post("/v1/members", json={"phone": new_phone(), "name": "[" * 100})
    assert fine.status_code == 201
