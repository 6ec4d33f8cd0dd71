"""Check-ins, survey answers and complaint tickets over HTTP, on a real database.

One service (without its Kafka tasks) on one fresh database for the module, with a fixed clock
each test sets; every test signs up members of its own.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import UTC, datetime, timedelta

import loyalty_member.bootstrap
import pytest_asyncio
from loyalty_shared.clock import FixedClock
from loyalty_shared.testing import (
    READ_ONLY_AUTH,
    DatabaseFactory,
    RunningService,
    outbox_events,
    start_service,
)
from sqlalchemy import text

_phones = itertools.count(13500000001)
CLOCK = FixedClock(datetime(2026, 11, 27, 2, 0, tzinfo=UTC))  # Friday 10:00 in Shanghai


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@pytest_asyncio.fixture(scope="module")
async def member(databases: DatabaseFactory):
    service = await start_service(
        loyalty_member.bootstrap.definition(),
        database_url=await databases.fresh("feedback_member"),
        bootstrap="127.0.0.1:9",  # background=False: the broker is never contacted
        background=False,
        clock=CLOCK,
    )
    yield service
    await service.stop()


async def sign_up(member: RunningService, **fields) -> str:
    response = await member.client.post("/v1/members", json={"phone": str(next(_phones)), **fields})
    assert response.status_code == 201, response.text
    return str(response.json()["member_id"])


async def scalar(member: RunningService, sql: str, **params):
    async with member.runtime.engine.connect() as conn:
        return await conn.scalar(text(sql), params)


async def events(member: RunningService, member_id: str, event_type: str) -> list[dict]:
    return await outbox_events(member.runtime, key=member_id, event_type=event_type)


def problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code, body
    return body


async def check_in(member: RunningService, member_id: str, occurred_at: datetime | None = None):
    body = {} if occurred_at is None else {"occurred_at": iso(occurred_at)}
    return await member.client.post(f"/v1/members/{member_id}/check-ins", json=body)


# ---------------------------------------------------------------------------------------------
# Check-ins
# ---------------------------------------------------------------------------------------------


async def test_check_in_records_the_local_day_and_emits_one_event(member):
    CLOCK.set(at(2026, 11, 30, 16, 30))  # 00:30 on Dec 1 in Shanghai
    member_id = await sign_up(member)
    response = await member.client.post(f"/v1/members/{member_id}/check-ins")  # no body
    assert response.status_code == 201, response.text
    assert response.json() == {
        "member_id": member_id,
        "date": "2026-12-01",
        "streak_days": 1,
        "timezone": "Asia/Shanghai",
        "occurred_at": "2026-11-30T16:30:00Z",
    }
    [event] = await events(member, member_id, "member.checked_in")
    assert event["subject"] == member_id
    assert event["time"] == "2026-11-30T16:30:00Z"
    assert event["data"] == {
        "member_id": member_id,
        "date": "2026-12-01",
        "streak_days": 1,
        "timezone": "Asia/Shanghai",
        "occurred_at": "2026-11-30T16:30:00Z",
    }

    CLOCK.set(at(2026, 12, 1, 15, 59))  # 23:59 the same local day
    again = problem(await check_in(member, member_id), 409, "already_checked_in")
    assert again["date"] == "2026-12-01"
    assert len(await events(member, member_id, "member.checked_in")) == 1

    CLOCK.set(at(2026, 12, 1, 16, 0))  # midnight: the next local day
    assert (await check_in(member, member_id)).json()["streak_days"] == 2


async def test_a_missed_day_resets_the_streak(member):
    member_id = await sign_up(member)
    CLOCK.set(at(2026, 12, 10, 2, 0))
    streaks = []
    for moment in (at(2026, 12, 7, 1), at(2026, 12, 8, 1), at(2026, 12, 9, 1), CLOCK.now()):
        response = await check_in(member, member_id, moment)
        assert response.status_code == 201, response.text
        streaks.append(response.json()["streak_days"])
    CLOCK.set(at(2026, 12, 12, 2, 0))  # the 11th was missed
    streaks.append((await check_in(member, member_id)).json()["streak_days"])
    assert streaks == [1, 2, 3, 4, 1]
    data = [e["data"] for e in await events(member, member_id, "member.checked_in")]
    assert [d["streak_days"] for d in data] == streaks


async def test_the_members_own_timezone_decides_the_day(member):
    member_id = await sign_up(member, timezone="America/New_York")
    CLOCK.set(at(2026, 12, 2, 3, 0))  # 22:00 on Dec 1 in New York, Dec 2 in Shanghai
    response = await check_in(member, member_id)
    assert response.json()["date"] == "2026-12-01"
    assert response.json()["timezone"] == "America/New_York"
    CLOCK.set(at(2026, 12, 2, 4, 59))  # 23:59 in New York
    problem(await check_in(member, member_id), 409, "already_checked_in")
    CLOCK.set(at(2026, 12, 2, 5, 0))
    assert (await check_in(member, member_id)).json()["date"] == "2026-12-02"


async def test_backdated_check_ins_are_honoured_but_not_from_the_future(member):
    member_id = await sign_up(member)
    CLOCK.set(at(2026, 12, 5, 2, 0))
    for days in (4, 2):  # Dec 1, Dec 3 (Dec 2 missing)
        assert (await check_in(member, member_id, CLOCK.now() - timedelta(days=days))).json()[
            "streak_days"
        ] == 1
    filled = await check_in(member, member_id, at(2026, 12, 2, 2, 0))  # imported later
    assert filled.json() == {**filled.json(), "date": "2026-12-02", "streak_days": 2}
    # Dec 3 keeps the streak it was recorded and announced with
    assert (
        await scalar(
            member,
            "SELECT streak_days FROM checkins WHERE member_id = :m AND local_date = '2026-12-03'",
            m=member_id,
        )
        == 1
    )
    assert (await check_in(member, member_id, at(2026, 12, 4, 2))).json()["streak_days"] == 4

    before = await scalar(member, "SELECT count(*) FROM outbox")
    too_far = problem(
        await check_in(member, member_id, CLOCK.now() + timedelta(minutes=5, seconds=1)),
        422,
        "validation_error",
    )
    assert too_far["errors"][0]["loc"] == ["body", "occurred_at"]
    for body in ({"occurred_at": "2026-12-05T10:00:00"}, {"occurred_at": "soon"}, {"at": "x"}):
        response = await member.client.post(f"/v1/members/{member_id}/check-ins", json=body)
        problem(response, 422, "validation_error")
    assert await scalar(member, "SELECT count(*) FROM outbox") == before
    # within the five minutes of clock skew it is accepted (Dec 5 has no check-in yet)
    ahead = await check_in(member, member_id, CLOCK.now() + timedelta(minutes=5))
    assert ahead.status_code == 201 and ahead.json()["streak_days"] == 5


async def test_unknown_or_erased_members_cannot_check_in(member):
    CLOCK.set(at(2026, 12, 5, 2, 0))
    problem(await check_in(member, "01NOSUCHMEMBER000000000000"), 404, "not_found")
    member_id = await sign_up(member)
    assert (await check_in(member, member_id)).status_code == 201
    assert (await member.client.delete(f"/v1/members/{member_id}")).status_code == 204
    CLOCK.set(at(2026, 12, 6, 2, 0))
    problem(await check_in(member, member_id), 404, "not_found")
    # the history stays under the member_id (check-ins are not personal data)
    listed = await member.client.get(f"/v1/members/{member_id}/check-ins")
    assert [item["date"] for item in listed.json()["items"]] == ["2026-12-05"]
    problem(await member.client.get("/v1/members/nobody/check-ins"), 404, "not_found")


async def test_the_same_idempotency_key_checks_in_once(member):
    CLOCK.set(at(2026, 12, 8, 2, 0))
    member_id = await sign_up(member)
    url = f"/v1/members/{member_id}/check-ins"
    headers = {"Idempotency-Key": f"pos-17-{member_id}"}
    first = await member.client.post(url, json={}, headers=headers)
    second = await member.client.post(url, json={}, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert second.headers.get("idempotent-replayed") == "true"
    count = "SELECT count(*) FROM checkins WHERE member_id = :m"
    assert await scalar(member, count, m=member_id) == 1
    assert len(await events(member, member_id, "member.checked_in")) == 1
    other = await member.client.post(
        url, json={"occurred_at": "2026-12-01T02:00:00Z"}, headers=headers
    )
    problem(other, 422, "idempotency_key_reused")
    assert len(await events(member, member_id, "member.checked_in")) == 1


async def test_concurrent_check_ins_give_exactly_one_201(member):
    CLOCK.set(at(2026, 12, 9, 2, 0))
    member_id = await sign_up(member)
    responses = await asyncio.gather(*(check_in(member, member_id) for _ in range(8)))
    assert sorted(r.status_code for r in responses) == [201] + [409] * 7
    for response in responses:
        if response.status_code == 409:
            assert response.json()["code"] == "already_checked_in"
    count = "SELECT count(*) FROM checkins WHERE member_id = :m"
    assert await scalar(member, count, m=member_id) == 1
    assert len(await events(member, member_id, "member.checked_in")) == 1


async def test_list_check_ins_newest_first_with_the_current_streak(member):
    member_id = await sign_up(member)
    CLOCK.set(at(2026, 12, 20, 2, 0))
    for day in (14, 16, 17, 18, 19):
        assert (await check_in(member, member_id, at(2026, 12, day, 2))).status_code == 201
    url = f"/v1/members/{member_id}/check-ins"
    page = (await member.client.get(url, params={"limit": 2}, headers=READ_ONLY_AUTH)).json()
    assert [i["date"] for i in page["items"]] == ["2026-12-19", "2026-12-18"]
    assert page["streak_days"] == 4  # not yet today, but yesterday keeps it alive
    assert page["today"] == "2026-12-20" and page["checked_in_today"] is False
    rest = (await member.client.get(url, params={"limit": 2, "cursor": page["next_cursor"]})).json()
    assert [i["date"] for i in rest["items"]] == ["2026-12-17", "2026-12-16"]
    last = (await member.client.get(url, params={"limit": 2, "cursor": rest["next_cursor"]})).json()
    assert [i["date"] for i in last["items"]] == ["2026-12-14"] and last["next_cursor"] is None

    await check_in(member, member_id)
    page = (await member.client.get(url)).json()
    assert page["streak_days"] == 5 and page["checked_in_today"] is True
    CLOCK.set(at(2026, 12, 22, 2, 0))  # the 21st was missed
    assert (await member.client.get(url)).json()["streak_days"] == 0
    problem(await member.client.get(url, params={"cursor": "nope"}), 422, "validation_error")
    problem(await member.client.get(url, params={"limit": 501}), 422, "validation_error")


async def test_check_ins_need_events_write_and_reading_needs_members_read(member):
    member_id = await sign_up(member)
    url = f"/v1/members/{member_id}/check-ins"
    problem(await member.client.post(url, json={}, headers=READ_ONLY_AUTH), 403, "forbidden")
    problem(await member.client.get(url, headers={"Authorization": ""}), 401, "unauthorized")
    assert (await member.client.get(url, headers=READ_ONLY_AUTH)).status_code == 200


# ---------------------------------------------------------------------------------------------
# Surveys
# ---------------------------------------------------------------------------------------------


async def add_order(member: RunningService, member_id: str | None) -> str:
    order_id = f"ORD{next(_phones)}"
    async with member.runtime.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO orders (order_id, channel, external_id, member_id, status, currency,"
                " total_minor, paid_minor, lines, coupon_codes, occurred_at, created_at,"
                " updated_at) VALUES (:o, 'pos', :o, :m, 'paid', 'CNY', 1000, 1000, '[]', '[]',"
                " now(), now(), now())"
            ),
            {"o": order_id, "m": member_id},
        )
    return order_id


async def test_survey_answers_keep_the_comment_out_of_the_event(member):
    CLOCK.set(at(2026, 12, 1, 3, 0))
    member_id = await sign_up(member)
    url = f"/v1/members/{member_id}/surveys"
    comment = "The cashier at the east entrance was wonderful"
    both = await member.client.post(url, json={"score": 5, "recommend": 9, "comment": comment})
    assert both.status_code == 201, both.text
    assert both.json()["recommend_level"] == "very_likely"
    assert both.json()["comment"] == comment
    only_score = await member.client.post(url, json={"score": 2})
    only_recommend = await member.client.post(url, json={"recommend": 6})
    assert only_score.status_code == only_recommend.status_code == 201
    assert only_recommend.json()["recommend_level"] == "unlikely"

    answered = await events(member, member_id, "member.survey_answered")
    assert [(e["data"].get("score"), e["data"].get("recommend")) for e in answered] == [
        (5, 9),
        (2, None),
        (None, 6),
    ]
    assert answered[0]["data"]["has_comment"] is True
    assert answered[1]["data"]["has_comment"] is False
    assert "comment" not in answered[0]["data"]
    assert "wonderful" not in json.dumps(answered)

    listed = (await member.client.get(url, headers=READ_ONLY_AUTH)).json()
    assert [i["survey_id"] for i in listed["items"]] == [
        only_recommend.json()["survey_id"],
        only_score.json()["survey_id"],
        both.json()["survey_id"],
    ]


async def test_survey_answers_are_validated(member):
    CLOCK.set(at(2026, 12, 1, 3, 0))
    member_id = await sign_up(member)
    url = f"/v1/members/{member_id}/surveys"
    for body in (
        {},
        {"comment": "no answer"},
        {"score": 0},
        {"score": 6},
        {"score": True},
        {"score": "4"},
        {"recommend": 11},
        {"recommend": -1},
        {"score": 3, "mood": "fine"},
        {"score": 3, "comment": "x" * 2001},
        {"score": 3, "occurred_at": iso(CLOCK.now() + timedelta(minutes=6))},
    ):
        problem(await member.client.post(url, json=body), 422, "validation_error")
    problem(
        await member.client.post("/v1/members/nobody/surveys", json={"score": 3}), 404, "not_found"
    )
    problem(
        await member.client.post(url, json={"score": 3}, headers=READ_ONLY_AUTH), 403, "forbidden"
    )
    assert await events(member, member_id, "member.survey_answered") == []


async def test_one_survey_answer_per_order(member):
    CLOCK.set(at(2026, 12, 1, 3, 0))
    member_id = await sign_up(member)
    someone_else = await sign_up(member)
    url = f"/v1/members/{member_id}/surveys"
    own = await add_order(member, member_id)
    foreign = await add_order(member, someone_else)
    problem(
        await member.client.post(url, json={"score": 4, "order_id": foreign}), 422, "unknown_order"
    )
    problem(
        await member.client.post(url, json={"score": 4, "order_id": "nope"}), 422, "unknown_order"
    )
    first = await member.client.post(url, json={"score": 4, "order_id": own})
    assert first.status_code == 201
    again = await member.client.post(url, json={"score": 1, "order_id": own})
    problem(again, 409, "survey_already_answered")
    [event] = await events(member, member_id, "member.survey_answered")
    assert event["data"]["order_id"] == own


# ---------------------------------------------------------------------------------------------
# Complaints
# ---------------------------------------------------------------------------------------------


async def open_ticket(member: RunningService, member_id: str, **fields) -> dict:
    body = {
        "member_id": member_id,
        "subject": "Wrong size delivered",
        "description": "I ordered a medium and got a small; my address is 5 Secret Lane",
        **fields,
    }
    response = await member.client.post("/v1/complaints", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def move(member: RunningService, ticket_id: str, status: str, **fields):
    return await member.client.post(
        f"/v1/complaints/{ticket_id}/status", json={"status": status, **fields}
    )


async def test_a_complaint_is_due_one_working_day_later_and_its_text_stays_here(member):
    CLOCK.set(at(2026, 11, 27, 7, 0))  # Friday 15:00 in Shanghai
    member_id = await sign_up(member)
    order_id = await add_order(member, member_id)
    ticket = await open_ticket(
        member, member_id, order_id=order_id, channel="phone", category="delivery"
    )
    assert ticket["status"] == "received"
    assert ticket["received_at"] == "2026-11-27T07:00:00Z"
    assert ticket["response_due_at"] == "2026-11-30T07:00:00Z"  # Monday 15:00 in Shanghai
    assert ticket["overdue"] is False and ticket["responded_at"] is None
    assert ticket["next_statuses"] == ["acknowledged", "investigating", "resolved", "closed"]
    assert [(h["from_status"], h["to_status"]) for h in ticket["history"]] == [(None, "received")]

    [event] = await events(member, member_id, "member.complaint_opened")
    assert event["data"] == {
        "member_id": member_id,
        "ticket_id": ticket["ticket_id"],
        "category": "delivery",
        "channel": "phone",
        "order_id": order_id,
        "timezone": "Asia/Shanghai",
        "response_due_at": "2026-11-30T07:00:00Z",
        "occurred_at": "2026-11-27T07:00:00Z",
    }
    outbox = json.dumps(await outbox_events(member.runtime, key=member_id))
    assert "Secret Lane" not in outbox and "Wrong size" not in outbox

    fetched = await member.client.get(f"/v1/complaints/{ticket['ticket_id']}")
    assert fetched.json() == ticket


async def test_complaint_stages_only_move_forward_and_closed_is_final(member):
    CLOCK.set(at(2026, 11, 30, 1, 0))  # Monday 09:00 in Shanghai
    member_id = await sign_up(member)
    ticket_id = (await open_ticket(member, member_id))["ticket_id"]

    CLOCK.set(at(2026, 11, 30, 3, 0))
    acknowledged = await move(member, ticket_id, "acknowledged", note="called the member back")
    assert acknowledged.status_code == 200, acknowledged.text
    assert acknowledged.json()["responded_at"] == "2026-11-30T03:00:00Z"
    assert acknowledged.json()["responded_in_time"] is True

    back = problem(await move(member, ticket_id, "received"), 409, "invalid_status_transition")
    assert back["current_status"] == "acknowledged" and back["status"] == 409
    problem(await move(member, ticket_id, "acknowledged"), 409, "invalid_status_transition")
    assert (await move(member, ticket_id, "resolved", note="sent a medium")).status_code == 200
    closed = await move(member, ticket_id, "closed")
    assert closed.json()["status"] == "closed" and closed.json()["next_statuses"] == []
    for status in ("resolved", "closed", "received"):
        problem(await move(member, ticket_id, status), 409, "invalid_status_transition")
    problem(await move(member, ticket_id, "reopened"), 422, "validation_error")
    problem(await move(member, "01NOSUCHTICKET000000000000", "closed"), 404, "not_found")

    history = (await member.client.get(f"/v1/complaints/{ticket_id}")).json()["history"]
    assert [(h["from_status"], h["to_status"], h["note"]) for h in history] == [
        (None, "received", None),
        ("received", "acknowledged", "called the member back"),
        ("acknowledged", "resolved", "sent a medium"),
        ("resolved", "closed", None),
    ]
    changes = await events(member, member_id, "member.complaint_status_changed")
    assert [(e["data"]["old_status"], e["data"]["new_status"]) for e in changes] == [
        ("received", "acknowledged"),
        ("acknowledged", "resolved"),
        ("resolved", "closed"),
    ]
    assert [e["data"]["first_response"] for e in changes] == [True, False, False]
    assert changes[0]["data"]["responded_in_time"] is True
    assert "called the member back" not in json.dumps(changes)


async def test_a_complaint_fixed_on_the_spot_skips_stages(member):
    CLOCK.set(at(2026, 11, 30, 1, 0))
    member_id = await sign_up(member)
    ticket_id = (await open_ticket(member, member_id, channel="store"))["ticket_id"]
    resolved = await move(member, ticket_id, "resolved", occurred_at="2026-11-30T01:00:00Z")
    assert resolved.status_code == 200
    assert resolved.json()["next_statuses"] == ["closed"]
    early = await move(member, ticket_id, "closed", occurred_at="2026-11-30T00:59:00Z")
    assert problem(early, 422, "validation_error")["errors"][0]["loc"] == ["body", "occurred_at"]


async def test_concurrent_moves_of_one_ticket_apply_once(member):
    CLOCK.set(at(2026, 11, 30, 1, 0))
    member_id = await sign_up(member)
    ticket_id = (await open_ticket(member, member_id))["ticket_id"]
    responses = await asyncio.gather(*(move(member, ticket_id, "acknowledged") for _ in range(5)))
    assert sorted(r.status_code for r in responses) == [200] + [409] * 4
    assert len(await events(member, member_id, "member.complaint_status_changed")) == 1


async def test_overdue_complaints_are_those_still_received_after_the_deadline(member):
    CLOCK.set(at(2026, 12, 4, 7, 0))  # Friday 15:00 in Shanghai -> due Monday 15:00
    member_id = await sign_up(member)
    late = await open_ticket(member, member_id)
    answered = await open_ticket(member, member_id)
    CLOCK.set(at(2026, 12, 7, 6, 0))  # Monday 14:00
    assert (await move(member, answered["ticket_id"], "acknowledged")).status_code == 200
    params = {"overdue": "true", "member_id": member_id}
    assert (await member.client.get("/v1/complaints", params=params)).json()["items"] == []

    CLOCK.set(at(2026, 12, 7, 7, 0, 1))  # one second past the deadline
    overdue = (await member.client.get("/v1/complaints", params=params)).json()
    assert [t["ticket_id"] for t in overdue["items"]] == [late["ticket_id"]]
    assert overdue["items"][0]["overdue"] is True
    on_time = await member.client.get(
        "/v1/complaints", params={"overdue": "false", "member_id": member_id}
    )
    assert [t["ticket_id"] for t in on_time.json()["items"]] == [answered["ticket_id"]]
    everything = await member.client.get(
        "/v1/complaints", params={"member_id": member_id, "limit": 1}, headers=READ_ONLY_AUTH
    )
    assert [t["ticket_id"] for t in everything.json()["items"]] == [answered["ticket_id"]]
    nxt = await member.client.get(
        "/v1/complaints",
        params={"member_id": member_id, "limit": 1, "cursor": everything.json()["next_cursor"]},
    )
    assert [t["ticket_id"] for t in nxt.json()["items"]] == [late["ticket_id"]]
    by_status = await member.client.get(
        "/v1/complaints", params={"status": "acknowledged", "member_id": member_id}
    )
    assert [t["ticket_id"] for t in by_status.json()["items"]] == [answered["ticket_id"]]
    problem(
        await member.client.get("/v1/complaints", params={"status": "lost"}),
        422,
        "validation_error",
    )

    # answered late: no longer overdue, but it says it was late
    moved = await move(member, late["ticket_id"], "investigating")
    assert moved.json()["overdue"] is False and moved.json()["responded_in_time"] is False
    [first] = [
        e
        for e in await events(member, member_id, "member.complaint_status_changed")
        if e["data"]["ticket_id"] == late["ticket_id"]
    ]
    assert first["data"]["responded_in_time"] is False


async def test_complaints_are_validated(member):
    CLOCK.set(at(2026, 12, 1, 3, 0))
    member_id = await sign_up(member)
    base = {"member_id": member_id, "subject": "Late", "description": "It came late"}
    for body in (
        {**base, "subject": "   "},
        {**base, "description": ""},
        {**base, "subject": "x" * 201},
        {**base, "category": "rude"},
        {**base, "channel": "my phone 138 0013 8000"},  # channel travels: codes only
        {**base, "urgent": True},
        {"subject": "Late", "description": "It came late"},
        {**base, "occurred_at": iso(CLOCK.now() + timedelta(minutes=10))},
    ):
        problem(await member.client.post("/v1/complaints", json=body), 422, "validation_error")
    problem(
        await member.client.post("/v1/complaints", json={**base, "member_id": "nobody"}),
        404,
        "not_found",
    )
    problem(
        await member.client.post("/v1/complaints", json={**base, "order_id": "nope"}),
        422,
        "unknown_order",
    )
    problem(
        await member.client.post("/v1/complaints", json=base, headers=READ_ONLY_AUTH),
        403,
        "forbidden",
    )
    problem(await member.client.get("/v1/complaints/nope"), 404, "not_found")
    assert await events(member, member_id, "member.complaint_opened") == []


async def test_erasure_can_scrub_the_free_text_a_member_left(member):
    from loyalty_member.service_layer.feedback import erase_feedback_text

    CLOCK.set(at(2026, 12, 1, 3, 0))
    member_id = await sign_up(member)
    survey = await member.client.post(
        f"/v1/members/{member_id}/surveys", json={"score": 1, "comment": "call me on 138..."}
    )
    ticket_id = (await open_ticket(member, member_id))["ticket_id"]
    await move(member, ticket_id, "acknowledged", note="spoke to her at home")
    async with member.runtime.transaction() as conn:
        await erase_feedback_text(conn, member_id)
    ticket = (await member.client.get(f"/v1/complaints/{ticket_id}")).json()
    assert (ticket["subject"], ticket["description"]) == ("(erased)", "(erased)")
    assert [h["note"] for h in ticket["history"]] == [None, None]
    assert ticket["status"] == "acknowledged"  # stages and times stay
    [kept] = (await member.client.get(f"/v1/members/{member_id}/surveys")).json()["items"]
    assert kept["survey_id"] == survey.json()["survey_id"]
    assert (kept["score"], kept["comment"]) == (1, None)


async def test_odd_ids_and_empty_bodies_are_answered_not_crashed(member):
    CLOCK.set(at(2026, 12, 1, 3, 0))
    for path in ("/v1/members/%00/check-ins", f"/v1/members/{'x' * 300}/check-ins"):
        assert (await member.client.post(path)).status_code in (404, 422)
        assert (await member.client.get(path)).status_code in (404, 422)
    for path in ("/v1/complaints/%00", f"/v1/complaints/{'x' * 300}"):
        assert (await member.client.get(path)).status_code in (404, 422)
    member_id = await sign_up(member)
    empty_json = await member.client.post(
        f"/v1/members/{member_id}/check-ins",
        content=b"",
        headers={"Content-Type": "application/json"},
    )
    assert empty_json.status_code == 201, empty_json.text
    problem(
        await member.client.get("/v1/complaints", params={"cursor": "abc"}), 422, "validation_error"
    )
