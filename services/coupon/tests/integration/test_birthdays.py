"""The `birthday` job against the real member service served in-process: members signed up
with birthdays get a birthday campaign's coupons on their day (in Asia/Shanghai), once a year
however often the job runs, resumably when the member service is away."""

from __future__ import annotations

import itertools
from datetime import datetime

import httpx
import loyalty_coupon.bootstrap
import loyalty_member.bootstrap
import pytest_asyncio
from loyalty_coupon.config import CouponSettings
from loyalty_coupon.service_layer.birthdays import birthday_job_id
from loyalty_shared.testing import READ_ONLY_KEY, RunningService, start_service

_phones = itertools.count(13700000001)


class MemberLink(httpx.AsyncBaseTransport):
    """The way to the in-process member app, which a test can cut or make refuse."""

    def __init__(self) -> None:
        self.inner: httpx.AsyncBaseTransport | None = None
        self.down = False
        self.refuse = False
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert self.inner is not None
        self.requests.append(request)
        if self.down:
            raise httpx.ConnectError("member is down", request=request)
        if self.refuse:
            return httpx.Response(403, json={"code": "forbidden", "detail": "no members:read"})
        return await self.inner.handle_async_request(request)


@pytest_asyncio.fixture(scope="module")
async def link() -> MemberLink:
    return MemberLink()


@pytest_asyncio.fixture(scope="module")
async def member(databases, clock, link):
    service = await start_service(
        loyalty_member.bootstrap.definition(),
        database_url=await databases.fresh("coupon_member"),
        bootstrap="127.0.0.1:9",
        background=False,
        clock=clock,
    )
    link.inner = httpx.ASGITransport(app=service.app)
    yield service
    await service.stop()


@pytest_asyncio.fixture(scope="module")
async def coupon(databases, clock, link, member):
    service = await start_service(
        loyalty_coupon.bootstrap.definition(
            # Pages of 2 to go through several; the reader key holds members:read only.
            settings=CouponSettings(bulk_chunk_size=2, member_api_key=READ_ONLY_KEY),
            member_transport=link,
        ),
        database_url=await databases.fresh("coupon_birthdays"),
        bootstrap="127.0.0.1:9",
        background=False,
        clock=clock,
    )
    yield service
    await service.stop()


@pytest_asyncio.fixture(autouse=True)
async def _clock_and_link_restored(clock, link, kit):
    yield
    clock.set(kit.T0)
    link.down = link.refuse = False


async def sign_up(member: RunningService, **fields) -> str:
    response = await member.client.post("/v1/members", json={"phone": str(next(_phones)), **fields})
    assert response.status_code == 201, response.text
    return response.json()["member_id"]  # type: ignore[no-any-return]


async def run_birthday(coupon, kit, clock, at: str) -> dict:
    """The job as the scheduler would run it at `at` (the clock reads it too)."""
    as_of = datetime.fromisoformat(at)
    clock.set(as_of)
    return await kit.run_job(coupon, "birthday", as_of)  # type: ignore[no-any-return]


async def birthday_campaign(coupon, kit, **fields) -> str:
    t = await kit.template(coupon, kind="gift", value=0, gift_sku="CAKE-6IN", per_member_limit=10)
    return (await kit.campaign(coupon, [t["code"]], {"type": "birthday"}, **fields))["code"]  # type: ignore[no-any-return]


async def counts_of_wallets(coupon, kit, *members: str) -> list[int]:
    return [len(await kit.wallet(coupon, m)) for m in members]


async def test_birthday_coupons_on_the_day_once_a_year(coupon, member, kit, clock, link):
    code = await birthday_campaign(coupon, kit)
    mei = await sign_up(member, birthday="1990-05-10", name="Mei")
    paris = await sign_up(member, birthday="1988-05-10", timezone="Europe/Paris")
    lin = await sign_up(member, birthday="2001-05-10")
    tomorrow = await sign_up(member, birthday="1990-05-11")
    no_birthday = await sign_up(member)
    erased = await sign_up(member, birthday="1990-05-10")
    assert (await member.client.delete(f"/v1/members/{erased}")).status_code == 204

    # 00:30 in Shanghai on 10 May is still 9 May in UTC (and in Paris): the Shanghai day counts.
    counts = await run_birthday(coupon, kit, clock, "2026-05-10T00:30:00+08:00")
    assert counts["day"] == "2026-05-10" and counts["campaigns"] == 1
    assert (counts["jobs_started"], counts["jobs_completed"]) == (1, 1)
    assert (counts["members_processed"], counts["members_issued"], counts["coupons_issued"]) == (
        3,
        3,
        3,
    )
    assert await counts_of_wallets(coupon, kit, mei, paris, lin, tomorrow, no_birthday, erased) == [
        1,
        1,
        1,
        0,
        0,
        0,
    ]
    (gift,) = await kit.wallet(coupon, paris)
    assert gift["campaign_code"] == code and gift["issued_via"] == "bulk_issue"
    assert gift["kind"] == "gift" and gift["gift_sku"] == "CAKE-6IN"

    job_id = birthday_job_id(code, datetime.fromisoformat("2026-05-10").date())
    job = (await coupon.client.get(f"/v1/jobs/{job_id}")).json()
    assert job["source"] == "birthdays" and job["birthdays_on"] == "2026-05-10"
    assert job["segment_code"] is None and job["status"] == "completed"
    assert (job["processed"], job["members_issued"], job["pages_done"]) == (3, 3, 2)
    (issued,) = await kit.events_of(coupon, mei, "coupon.issued")
    assert issued["data"]["job_id"] == job_id
    sent = link.requests[-1]
    assert sent.url.path == "/v1/members:birthdays"
    assert sent.url.params["on"] == "05-10" and sent.url.params["year"] == "2026"
    assert sent.headers["authorization"] == f"Bearer {READ_ONLY_KEY}"

    # Again the same day: the day's job is done, nothing more.
    again = await run_birthday(coupon, kit, clock, "2026-05-10T21:00:00+08:00")
    assert (again["jobs_started"], again["jobs_completed"], again["members_issued"]) == (0, 1, 0)
    assert await counts_of_wallets(coupon, kit, mei, paris, lin) == [1, 1, 1]

    # Another day of the same year, for a member whose birthday was changed to it: this
    # year's birthday was given already.
    moved = await member.client.patch(f"/v1/members/{mei}", json={"birthday": "1990-08-01"})
    assert moved.status_code == 200, moved.text
    august = await run_birthday(coupon, kit, clock, "2026-08-01T09:00:00+08:00")
    assert (august["jobs_started"], august["members_processed"]) == (1, 1)
    assert (august["members_issued"], august["duplicates"]) == (0, 1)
    assert await counts_of_wallets(coupon, kit, mei) == [1]

    # Next year: a new birthday, a new coupon.
    next_year = await run_birthday(coupon, kit, clock, "2027-05-10T09:00:00+08:00")
    assert (next_year["jobs_started"], next_year["members_issued"]) == (1, 2)
    assert await counts_of_wallets(coupon, kit, mei, paris, lin, tomorrow) == [1, 2, 2, 0]
    await run_birthday(coupon, kit, clock, "2027-08-01T09:00:00+08:00")
    assert await counts_of_wallets(coupon, kit, mei) == [2]


async def test_29_february_birthdays_come_on_28_february_in_other_years(coupon, member, kit, clock):
    await birthday_campaign(coupon, kit)
    leap = await sign_up(member, birthday="2000-02-29")
    counts = await run_birthday(coupon, kit, clock, "2027-02-28T10:00:00+08:00")
    assert (counts["members_processed"], counts["members_issued"]) == (1, 1)
    assert await counts_of_wallets(coupon, kit, leap) == [1]
    # 2028 has a 29 February: not on the 28th, on the 29th.
    await run_birthday(coupon, kit, clock, "2028-02-28T10:00:00+08:00")
    assert await counts_of_wallets(coupon, kit, leap) == [1]
    await run_birthday(coupon, kit, clock, "2028-02-29T10:00:00+08:00")
    assert await counts_of_wallets(coupon, kit, leap) == [2]


async def test_only_running_birthday_campaigns_take_part(coupon, member, kit, clock):
    running = await birthday_campaign(coupon, kit)
    paused = await birthday_campaign(coupon, kit)
    await coupon.client.patch(f"/v1/campaigns/{paused}", json={"status": "paused"})
    await birthday_campaign(coupon, kit, ends_at="2026-06-01T00:00:00+08:00")  # over by then
    await birthday_campaign(coupon, kit, starts_at="2026-07-01T00:00:00+08:00")  # not yet
    t = await kit.template(coupon)
    await kit.campaign(coupon, [t["code"]], {"type": "manual"})
    someone = await sign_up(member, birthday="1970-06-15")
    counts = await run_birthday(coupon, kit, clock, "2026-06-15T08:00:00+08:00")
    assert (counts["campaigns"], counts["jobs_started"], counts["members_issued"]) == (1, 1, 1)
    (only,) = await kit.wallet(coupon, someone)
    assert only["campaign_code"] == running


async def test_the_days_job_waits_for_the_member_service_and_resumes(
    coupon, member, kit, clock, link
):
    code = await birthday_campaign(coupon, kit)
    members = [await sign_up(member, birthday="1995-09-20") for _ in range(3)]
    link.down = True
    counts = await run_birthday(coupon, kit, clock, "2026-09-20T08:00:00+08:00")
    assert (counts["jobs_started"], counts["jobs_waiting"], counts["members_issued"]) == (1, 1, 0)
    job_id = birthday_job_id(code, datetime.fromisoformat("2026-09-20").date())
    job = (await coupon.client.get(f"/v1/jobs/{job_id}")).json()
    # Unfinished, to be carried on (`queued` still: no page of it came through yet).
    assert job["status"] in ("queued", "running") and job["attempts"] == 1
    assert "member service unavailable" in job["last_error"]

    link.down = False
    resumed = await kit.run_job(coupon, "bulk-issue", clock.now())  # what the scheduler runs
    assert resumed["jobs_completed"] == 1
    job = (await coupon.client.get(f"/v1/jobs/{job_id}")).json()
    assert job["status"] == "completed" and job["last_error"] is None
    assert await counts_of_wallets(coupon, kit, *members) == [1, 1, 1]


async def test_a_refused_day_is_taken_up_again_by_the_next_run(coupon, member, kit, clock, link):
    code = await birthday_campaign(coupon, kit)
    someone = await sign_up(member, birthday="1993-11-03")
    link.refuse = True  # e.g. a key without members:read
    counts = await run_birthday(coupon, kit, clock, "2026-11-03T08:00:00+08:00")
    assert counts["jobs_failed"] == 1
    job_id = birthday_job_id(code, datetime.fromisoformat("2026-11-03").date())
    job = (await coupon.client.get(f"/v1/jobs/{job_id}")).json()
    assert job["status"] == "failed" and "member service refused" in job["last_error"]

    link.refuse = False  # the key was fixed; the next hourly run takes the day up again
    later = await run_birthday(coupon, kit, clock, "2026-11-03T09:00:00+08:00")
    assert (later["jobs_started"], later["jobs_reopened"], later["jobs_completed"]) == (0, 1, 1)
    assert later["members_issued"] == 1
    assert await counts_of_wallets(coupon, kit, someone) == [1]
