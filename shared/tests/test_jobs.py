"""Jobs: run on demand as if the clock read `as_of`, one run at a time across replicas, and
periodically by the scheduler."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import loyalty_coupon
import pytest_asyncio
from loyalty_shared.clock import FixedClock
from loyalty_shared.db import migrations_dir
from loyalty_shared.jobs import Job, scheduler
from loyalty_shared.service import Runtime, ServiceDefinition
from loyalty_shared.testing import DatabaseFactory, start_service

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


class Recorder:
    def __init__(self) -> None:
        self.runs: list[datetime] = []
        self.running = 0
        self.overlaps = 0
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, runtime: Runtime, as_of: datetime) -> dict[str, int]:
        self.running += 1
        if self.running > 1:
            self.overlaps += 1
        try:
            await self.release.wait()
            self.runs.append(as_of)
            return {"rows_touched": len(self.runs)}
        finally:
            self.running -= 1


def definition(recorder: Recorder, every: timedelta = timedelta(hours=1)) -> ServiceDefinition:
    return ServiceDefinition(
        name="jobtest",
        title="job test",
        migrations=migrations_dir(loyalty_coupon.__file__),
        jobs=[Job("tally", recorder, every=every, description="counts its runs")],
    )


@pytest_asyncio.fixture
async def database(databases: DatabaseFactory) -> str:
    return await databases.fresh("jobs")


async def test_run_on_demand_with_as_of(database: str, kafka_bootstrap: str):
    recorder = Recorder()
    service = await start_service(
        definition(recorder),
        database_url=database,
        bootstrap=kafka_bootstrap,
        background=False,
        clock=FixedClock(NOW),
    )
    try:
        listed = (await service.client.get("/v1/admin/jobs")).json()
        assert listed["items"][0] == {
            "job": "tally",
            "every_seconds": 3600,
            "description": "counts its runs",
        }
        # then the platform's own, which every service runs
        assert [j["job"] for j in listed["items"][1:]] == [
            "purge-idempotency-keys",
            "purge-processed-events",
        ]
        response = await service.client.post(
            "/v1/admin/jobs/tally/run", json={"as_of": "2027-01-20T00:00:00+08:00"}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["counts"] == {"rows_touched": 1}
        assert recorder.runs == [datetime(2027, 1, 19, 16, 0, tzinfo=UTC)]
        # Without as_of the job runs at the service clock's time.
        response = await service.client.post("/v1/admin/jobs/tally/run", json={})
        assert response.status_code == 200
        assert recorder.runs[-1] == NOW
    finally:
        await service.stop()


async def test_a_job_runs_on_one_replica_at_a_time(database: str, kafka_bootstrap: str):
    recorder = Recorder()
    replicas = [
        await start_service(
            definition(recorder), database_url=database, bootstrap=kafka_bootstrap, background=False
        )
        for _ in range(2)
    ]
    try:
        recorder.release.clear()
        first = asyncio.create_task(replicas[0].client.post("/v1/admin/jobs/tally/run", json={}))
        while recorder.running == 0:
            await asyncio.sleep(0.01)
        second = await replicas[1].client.post("/v1/admin/jobs/tally/run", json={})
        assert second.status_code == 409
        assert second.json()["code"] == "job_running"
        recorder.release.set()
        assert (await first).status_code == 200
        assert len(recorder.runs) == 1
        # Once the first run is over the lock is free again.
        assert (
            await replicas[1].client.post("/v1/admin/jobs/tally/run", json={})
        ).status_code == 200
    finally:
        for replica in replicas:
            await replica.stop()


async def test_the_scheduler_runs_jobs_periodically_without_overlap(
    database: str, kafka_bootstrap: str
):
    recorder = Recorder()
    replicas = [
        await start_service(
            definition(recorder, every=timedelta(milliseconds=100)),
            database_url=database,
            bootstrap=kafka_bootstrap,
            background=False,
        )
        for _ in range(2)
    ]
    tasks = [asyncio.create_task(scheduler(r.runtime)) for r in replicas]
    try:
        async with asyncio.timeout(20):
            while len(recorder.runs) < 3:
                await asyncio.sleep(0.05)
        assert recorder.overlaps == 0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for replica in replicas:
            await replica.stop()


async def test_an_unknown_job_is_404(database: str, kafka_bootstrap: str):
    service = await start_service(
        definition(Recorder()), database_url=database, bootstrap=kafka_bootstrap, background=False
    )
    try:
        response = await service.client.post("/v1/admin/jobs/nope/run", json={})
        assert response.status_code == 404
        assert response.json()["jobs"] == [
            "tally",
            "purge-idempotency-keys",
            "purge-processed-events",
        ]
    finally:
        await service.stop()


async def test_workers_run_with_the_service_and_stop_with_it(database: str, kafka_bootstrap: str):
    ticks: list[int] = []
    stopped = asyncio.Event()

    async def heartbeat(runtime: Runtime) -> None:
        try:
            while True:
                ticks.append(1)
                await asyncio.sleep(0.01)
        finally:
            stopped.set()

    definition_ = definition(Recorder())
    definition_.workers = [heartbeat]
    service = await start_service(definition_, database_url=database, bootstrap=kafka_bootstrap)
    try:
        async with asyncio.timeout(10):
            while len(ticks) < 3:
                await asyncio.sleep(0.01)
    finally:
        await service.stop()
    assert stopped.is_set()
    count = len(ticks)
    await asyncio.sleep(0.05)
    assert len(ticks) == count


async def test_a_job_that_meets_a_deadlock_is_run_again(database: str, kafka_bootstrap: str):
    from sqlalchemy.exc import DBAPIError

    class Deadlock(Exception):
        sqlstate = "40P01"

    attempts: list[datetime] = []

    async def flaky(runtime: Runtime, as_of: datetime) -> dict[str, int]:
        attempts.append(as_of)
        if len(attempts) == 1:
            raise DBAPIError("UPDATE profiles ...", {}, Deadlock("deadlock detected"))
        return {"rows_touched": 1}

    definition_ = ServiceDefinition(
        name="jobtest",
        title="job test",
        migrations=migrations_dir(loyalty_coupon.__file__),
        jobs=[Job("flaky", flaky)],
    )
    service = await start_service(
        definition_, database_url=database, bootstrap=kafka_bootstrap, background=False
    )
    try:
        response = await service.client.post("/v1/admin/jobs/flaky/run", json={})
        assert response.status_code == 200, response.text
        assert response.json()["counts"] == {"rows_touched": 1}
        assert len(attempts) == 2
    finally:
        await service.stop()
