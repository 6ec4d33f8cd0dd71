"""Bulk issue as a background job: members from a list or from the segmenter's paged API
(a fake segmenter behind httpx.MockTransport), progress, resumption, once per member per job."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import loyalty_coupon.bootstrap
import pytest_asyncio
from loyalty_coupon.config import CouponSettings
from loyalty_coupon.service_layer.bulk import run_bulk_job
from loyalty_shared.testing import start_service
from sqlalchemy import text


class FakeSegmenter:
    """`GET /v1/segments/{code}/members?limit&cursor` over a list; can fail a page once."""

    def __init__(self) -> None:
        self.segments: dict[str, list[str]] = {}
        self.fail_cursors: set[str] = set()
        self.requests: list[httpx.Request] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        parts = request.url.path.split("/")  # /v1/segments/{code}/members
        members = self.segments.get(parts[3])
        if members is None:
            return httpx.Response(404, json={"code": "not_found", "detail": "no segment"})
        cursor = request.url.params.get("cursor") or "0"
        if cursor in self.fail_cursors:
            self.fail_cursors.discard(cursor)
            return httpx.Response(503, json={"code": "service_unavailable"})
        start, limit = int(cursor), int(request.url.params["limit"])
        page = members[start : start + limit]
        more = start + limit < len(members)
        items = [{"member_id": m, "lifecycle_stage": "easy_winback"} for m in page]
        return httpx.Response(
            200, json={"items": items, "next_cursor": str(start + limit) if more else None}
        )


@pytest_asyncio.fixture(scope="module")
async def segmenter() -> FakeSegmenter:
    return FakeSegmenter()


@pytest_asyncio.fixture(scope="module")
async def coupon(databases, clock, segmenter):
    service = await start_service(
        loyalty_coupon.bootstrap.definition(
            settings=CouponSettings(bulk_chunk_size=2, segmenter_api_key="seg-key"),
            segmenter_transport=httpx.MockTransport(segmenter.handle),
        ),
        database_url=await databases.fresh("coupon_bulk"),
        bootstrap="127.0.0.1:9",
        background=False,
        clock=clock,
    )
    yield service
    await service.stop()


async def wait_for_job(coupon, job_id: str, *statuses: str) -> dict:
    for _ in range(200):
        job = (await coupon.client.get(f"/v1/jobs/{job_id}")).json()
        if job["status"] in statuses:
            return job
        await asyncio.sleep(0.02)
    raise AssertionError(f"job stayed {job}")


async def test_bulk_issue_to_a_list(coupon, kit):
    t = await kit.template(coupon, per_member_limit=5)
    c = await kit.campaign(coupon, [t["code"]], {"type": "manual"})
    members = [kit.unique("b") for _ in range(5)]
    response = await coupon.client.post(
        f"/v1/campaigns/{c['code']}/issue", json={"member_ids": [*members, members[0]]}
    )
    assert response.status_code == 202, response.text
    job = await wait_for_job(coupon, response.json()["job_id"], "completed")
    assert (job["total"], job["processed"], job["members_issued"], job["coupons_issued"]) == (
        5,
        5,
        5,
        5,
    )
    for m in members:
        (mine,) = await kit.wallet(coupon, m)
        assert mine["issued_via"] == "bulk_issue" and mine["campaign_code"] == c["code"]
    issued = await kit.events_of(coupon, members[0], "coupon.issued")
    assert issued[0]["data"]["job_id"] == job["job_id"]

    # Run the finished job from the start again (as after a lost progress write): the grant
    # key `job:<id>` keeps every member at one coupon from this job.
    async with coupon.runtime.transaction() as conn:
        await conn.execute(
            text("UPDATE bulk_jobs SET status = 'running', position = 0 WHERE job_id = :j"),
            {"j": job["job_id"]},
        )
    assert await run_bulk_job(coupon.runtime, job["job_id"]) == "completed"
    again = (await coupon.client.get(f"/v1/jobs/{job['job_id']}")).json()
    assert again["duplicates"] == 5 and again["coupons_issued"] == 5
    for m in members:
        assert len(await kit.wallet(coupon, m)) == 1

    # Another job is another grant: the member gets a second coupon (limit 5).
    second = await coupon.client.post(
        f"/v1/campaigns/{c['code']}/issue", json={"member_ids": members[:1]}
    )
    await wait_for_job(coupon, second.json()["job_id"], "completed")
    assert len(await kit.wallet(coupon, members[0])) == 2


async def test_bulk_issue_to_a_segment_resumes_after_the_segmenter_fails(coupon, kit, segmenter):
    t = await kit.template(coupon)
    c = await kit.campaign(
        coupon, [t["code"]], {"type": "segment.entered", "segment_code": "winback"}
    )
    members = [kit.unique("s") for _ in range(5)]
    segmenter.segments["winback"] = members
    segmenter.fail_cursors = {"2"}  # the second page fails once
    response = await coupon.client.post(
        f"/v1/campaigns/{c['code']}/issue", json={"segment_code": "winback"}
    )
    job_id = response.json()["job_id"]
    await asyncio.sleep(0)
    for _ in range(200):
        job = (await coupon.client.get(f"/v1/jobs/{job_id}")).json()
        if job["attempts"] == 1:
            break
        await asyncio.sleep(0.02)
    assert job["status"] == "running" and job["processed"] == 2 and job["pages_done"] == 1
    assert "segmenter unavailable" in job["last_error"]
    assert [len(await kit.wallet(coupon, m)) for m in members] == [1, 1, 0, 0, 0]

    counts = await kit.run_job(coupon, "bulk-issue", kit.T0)  # what the scheduler runs
    assert counts["jobs"] == 1 and counts["jobs_completed"] == 1
    job = (await coupon.client.get(f"/v1/jobs/{job_id}")).json()
    assert job["status"] == "completed" and job["processed"] == 5 and job["pages_done"] == 3
    assert job["last_error"] is None
    assert [len(await kit.wallet(coupon, m)) for m in members] == [1] * 5
    sent = segmenter.requests[-1]
    assert sent.headers["authorization"] == "Bearer seg-key"
    assert sent.url.params["limit"] == "2"


async def test_birthday_campaign_gives_once_a_year(coupon, kit, clock):
    t = await kit.template(coupon, per_member_limit=10)
    c = await kit.campaign(coupon, [t["code"]], {"type": "birthday"})
    member = kit.unique("bd")

    async def issue() -> dict:
        r = await coupon.client.post(
            f"/v1/campaigns/{c['code']}/issue", json={"member_ids": [member]}
        )
        assert r.status_code == 202
        return await wait_for_job(coupon, r.json()["job_id"], "completed")

    assert (await issue())["members_issued"] == 1
    assert (await issue())["duplicates"] == 1  # the marketer ran today's list twice
    clock.advance(timedelta(days=366))
    try:
        assert (await issue())["members_issued"] == 1
    finally:
        clock.advance(-timedelta(days=366))
    assert len(await kit.wallet(coupon, member)) == 2


async def test_bulk_issue_refusals(coupon, kit, segmenter):
    t = await kit.template(coupon)
    c = await kit.campaign(coupon, [t["code"]], {"type": "manual"})
    both = await coupon.client.post(
        f"/v1/campaigns/{c['code']}/issue", json={"member_ids": ["a"], "segment_code": "x"}
    )
    assert both.status_code == 422 and both.json()["code"] == "validation_error"
    missing = await coupon.client.post("/v1/campaigns/NOPE/issue", json={"member_ids": ["a"]})
    assert missing.status_code == 404
    unknown = await coupon.client.post(
        f"/v1/campaigns/{c['code']}/issue", json={"segment_code": "no-such-segment"}
    )
    job = await wait_for_job(coupon, unknown.json()["job_id"], "failed")
    assert "refused" in job["last_error"]
    await coupon.client.patch(f"/v1/campaigns/{c['code']}", json={"status": "paused"})
    paused = await coupon.client.post(
        f"/v1/campaigns/{c['code']}/issue", json={"member_ids": ["a"]}
    )
    assert paused.status_code == 422 and paused.json()["code"] == "campaign_not_running"
    assert (await coupon.client.get("/v1/jobs/nope")).status_code == 404
