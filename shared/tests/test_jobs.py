"""Jobs: run on demand as if the clock read `as_of`, one run at a time across replicas, and
periodically by the scheduler."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import loyalty_coupon
import pytest
import pytest_asyncio
from loyalty_shared import jobs
from loyalty_shared.clock import FixedClock
from loyalty_shared.db import create_engine, migrations_dir
from loyalty_shared.jobs import Job, period_of, scheduler
from loyalty_shared.service import Runtime, ServiceDefinition
from loyalty_shared.testing import DatabaseFactory, RunningService, start_service
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

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
            "last_run": None,
            "next_due_at": "2026-11-26T12:00:00Z",  # never run on schedule: due now
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
        # The run is recorded, but a run on demand claims no period: the schedule's is still due.
        listed = (await service.client.get("/v1/admin/jobs")).json()["items"][0]
        last_run = listed.pop("last_run")
        assert listed["next_due_at"] == "2026-11-26T12:00:00Z"
        assert last_run.pop("started_at") <= last_run.pop("finished_at")
        assert last_run == {
            "as_of": "2026-11-26T12:00:00Z",
            "status": "ok",
            "counts": {"rows_touched": 2},
            "scheduled": False,
            "error": None,
        }
    finally:
        await service.stop()


async def test_a_job_runs_on_one_replica_at_a_time(
    database: str, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
):
    """An on-demand run waits for a run in progress elsewhere (the scheduled one, say), then
    runs; only past the wait does it answer 409 job_running. Never two runs at once."""
    import loyalty_shared.jobs as jobs

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
        waiting = asyncio.create_task(replicas[1].client.post("/v1/admin/jobs/tally/run", json={}))
        await asyncio.sleep(0.5)
        assert not waiting.done()  # it waits for the first run to end
        recorder.release.set()
        assert (await first).status_code == 200
        assert (await waiting).status_code == 200
        assert len(recorder.runs) == 2 and recorder.overlaps == 0
        # past the wait, a run still in progress is refused
        monkeypatch.setattr(jobs, "ON_DEMAND_WAIT_SECONDS", 0.3)
        recorder.release.clear()
        first = asyncio.create_task(replicas[0].client.post("/v1/admin/jobs/tally/run", json={}))
        while recorder.running == 0:
            await asyncio.sleep(0.01)
        second = await replicas[1].client.post("/v1/admin/jobs/tally/run", json={})
        assert second.status_code == 409
        assert second.json()["code"] == "job_running"
        recorder.release.set()
        assert (await first).status_code == 200
        assert len(recorder.runs) == 3
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


# ---------------------------------------------------------------------------------------------
# The schedule kept in the database: once per period across replicas, whatever restarts
# ---------------------------------------------------------------------------------------------
SECOND = timedelta(seconds=1)


class SkewedClock:
    """The system clock, off by `skew`: replicas whose clocks disagree."""

    def __init__(self, skew: timedelta) -> None:
        self.skew = skew

    def now(self) -> datetime:
        return datetime.now(UTC) + self.skew


def counting(replica: str) -> ServiceDefinition:
    """A service whose job, every second, writes down who ran it as of when."""

    async def count(runtime: Runtime, as_of: datetime) -> dict[str, int]:
        async with runtime.transaction() as conn:
            await conn.execute(
                text("INSERT INTO tally_runs (replica, as_of) VALUES (:r, :a)"),
                {"r": replica, "a": as_of},
            )
        return {"rows_touched": 1}

    return ServiceDefinition(
        name="jobtest",
        title="job test",
        migrations=migrations_dir(loyalty_coupon.__file__),
        jobs=[Job("tally", count, every=SECOND, description="counts its runs")],
    )


async def runs_so_far(engine: AsyncEngine) -> list[tuple[str, datetime]]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT replica, as_of FROM tally_runs ORDER BY seq"))
        return [(row.replica, row.as_of) for row in rows]


def periods(runs: list[tuple[str, datetime]]) -> list[datetime]:
    return [period_of(as_of, SECOND) for _, as_of in runs]


async def wait_for_runs(engine: AsyncEngine, count: int, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while len(await runs_so_far(engine)) < count:
            await asyncio.sleep(0.02)


async def test_each_period_runs_once_across_replicas_and_restarts(
    database: str, kafka_bootstrap: str
):
    engine = create_engine(database, pool_size=2, max_overflow=0)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE TABLE tally_runs (seq bigserial PRIMARY KEY, replica text NOT NULL, "
                "as_of timestamptz NOT NULL)"
            )
        )

    async def start(replica: str, skew: timedelta = timedelta(0)) -> RunningService:
        return await start_service(
            counting(replica),
            database_url=database,
            bootstrap=kafka_bootstrap,
            clock=SkewedClock(skew),
            scheduler_enabled=True,
        )

    loop = asyncio.get_running_loop()
    try:
        # A fresh database: the job runs right after start, not a period later.
        a = await start("a")
        started = loop.time()
        await wait_for_runs(engine, 1, timeout=10)
        assert loop.time() - started < 0.9, "the first run came at the first look"
        # A second replica, in another phase and with a clock 0.3 s ahead of the first one's.
        await asyncio.sleep(0.4)
        b = await start("b", skew=timedelta(milliseconds=300))
        await asyncio.sleep(4.5)
        for replica in (a, b):
            await replica.stop()
        together = await runs_so_far(engine)
        ran = periods(together)
        # every period from the first on ran, and exactly once in total
        assert ran == [ran[0] + i * SECOND for i in range(len(ran))], together
        assert len(ran) >= 4, together
        assert {replica for replica, _ in together} == {"a", "b"}, together

        # Nobody runs for more than a period; then one replica starts and runs the missed
        # periods at once (one run: a job catches up from as_of).
        await asyncio.sleep(2.5)
        a = await start("a")
        started = loop.time()
        await wait_for_runs(engine, len(together) + 1, timeout=10)
        assert loop.time() - started < 0.9, "the missed period ran at the first look"
        caught_up = periods(await runs_so_far(engine))[len(together)]
        assert caught_up >= ran[-1] + 2 * SECOND

        # The listing shows the last run and when the next period is due.
        items = (await a.client.get("/v1/admin/jobs")).json()["items"]
        tally = next(item for item in items if item["job"] == "tally")
        assert tally["every_seconds"] == 1
        assert tally["last_run"]["status"] == "ok"
        assert tally["last_run"]["scheduled"] is True
        assert tally["last_run"]["counts"] == {"rows_touched": 1}
        due = datetime.fromisoformat(tally["next_due_at"])
        last_as_of = datetime.fromisoformat(tally["last_run"]["as_of"])
        assert due == period_of(last_as_of, SECOND) + SECOND
        # the platform's own jobs ran at start too, once
        purge = next(item for item in items if item["job"] == "purge-idempotency-keys")
        assert purge["last_run"]["status"] == "ok"
        assert datetime.fromisoformat(purge["next_due_at"]) > datetime.now(UTC)
        await a.stop()
        runs = periods(await runs_so_far(engine))
        assert len(runs) == len(set(runs)), "no period ran twice"
    finally:
        await engine.dispose()


async def test_a_job_the_database_failed_runs_again_in_its_period(
    database: str, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
):
    """An outage fails a scheduled run: it is recorded, and the same period runs again soon
    (the period is not done); a run that failed for its own reason consumes its period."""
    from sqlalchemy.exc import DBAPIError

    class ConnectionLost(Exception):
        sqlstate = "08006"

    class Broken(Exception):
        pass

    monkeypatch.setattr(jobs, "RETRY_SECONDS", 0.2)
    attempts: list[datetime] = []
    # The database is still down when the failure is to be recorded: it is written once it is
    # back, before the run again.
    records: list[tuple[str, str, bool]] = []
    record_run = jobs.record_run

    async def record_when_back(runtime: Runtime, run: jobs.Run, *, latest: bool = True) -> None:
        records.append((run.job, run.status, latest))
        if (run.job, run.status, latest) == ("flaky", "error", True):
            raise DBAPIError("INSERT INTO job_runs ...", {}, ConnectionLost("still down"))
        await record_run(runtime, run, latest=latest)

    monkeypatch.setattr(jobs, "record_run", record_when_back)

    async def flaky(runtime: Runtime, as_of: datetime) -> dict[str, int]:
        attempts.append(as_of)
        if len(attempts) == 1:
            raise DBAPIError("SELECT ...", {}, ConnectionLost("connection lost"))
        return {"rows_touched": 1}

    async def broken(runtime: Runtime, as_of: datetime) -> dict[str, int]:
        raise Broken("a bug")

    definition_ = ServiceDefinition(
        name="jobtest",
        title="job test",
        migrations=migrations_dir(loyalty_coupon.__file__),
        jobs=[Job("flaky", flaky), Job("broken", broken)],
    )
    service = await start_service(
        definition_,
        database_url=database,
        bootstrap=kafka_bootstrap,
        background=False,
        clock=FixedClock(NOW),  # one hourly period throughout
    )
    task = asyncio.create_task(scheduler(service.runtime))
    try:
        async with asyncio.timeout(10):
            while len(attempts) < 2:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.6)  # a few more looks: the period is done now
        assert attempts == [NOW, NOW]
        assert [r for r in records if r[0] == "flaky"] == [
            ("flaky", "error", True),  # refused: the database is down
            ("flaky", "error", False),  # written once it is back
            ("flaky", "ok", True),
        ]
        items = {i["job"]: i for i in (await service.client.get("/v1/admin/jobs")).json()["items"]}
        assert items["flaky"]["last_run"]["status"] == "ok"
        assert items["flaky"]["next_due_at"] == "2026-11-26T13:00:00Z"
        assert items["broken"]["last_run"]["status"] == "error"
        assert items["broken"]["last_run"]["error"] == "Broken"
        assert items["broken"]["next_due_at"] == "2026-11-26T13:00:00Z"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await service.stop()


async def test_a_run_on_demand_leaves_the_period_to_the_schedule(
    database: str, kafka_bootstrap: str
):
    recorder = Recorder()
    service = await start_service(
        definition(recorder),
        database_url=database,
        bootstrap=kafka_bootstrap,
        background=False,
        clock=FixedClock(NOW),
    )
    try:
        assert (await service.client.post("/v1/admin/jobs/tally/run", json={})).status_code == 200
        unrecorded: dict[str, jobs.Run] = {}
        tally = service.runtime.job("tally")
        assert await jobs.run_scheduled(service.runtime, tally, unrecorded) is True
        assert await jobs.run_scheduled(service.runtime, tally, unrecorded) is False
        assert recorder.runs == [NOW, NOW]
        # another period: due again
        service.runtime.clock.advance(timedelta(hours=1))  # type: ignore[attr-defined]
        assert await jobs.run_scheduled(service.runtime, tally, unrecorded) is True
    finally:
        await service.stop()
