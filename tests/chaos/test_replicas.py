"""Several replicas, for real: two processes of every consumer service (`python -m
loyalty_<service> serve`, distinct ports, one consumer group `loyalty-<service>`) on one
database and one broker, while the service's stream arrives in chunks. In some chunks one
replica or the other is SIGKILLed: first the one that does not lead the relay, inside a consumer
transaction; then the relay's leader while it is half-way through the outbox; then either, at
random. The victim's partitions wait for its session to expire on the broker, then move to the
survivor; and it is started again while the survivor is inside a batch, so that the rebalance
comes while a batch is in flight. To be sure of that, the test holds processed_events locked
(EXCLUSIVE: reads go on, the consumers' inserts wait) while it publishes the chunk's second
half, which the survivor takes into a transaction that waits; it lets go once the restarted
replica waits too, with records of partitions it was given (read from their committed
offsets). Where those partitions are in the survivor's batch, both apply the same records: the
inbox keeps one of each (the two batches may deadlock on its rows: PostgreSQL breaks it, the
consumer retries) and the survivor's offset commit is refused; what the survivor kept it reads
again from its committed offsets, and the inbox skips it.

At the end, as in `test_crashes.py` and `test_consumer_crashes.py`: the points accounts equal the
oracle, the other four services' state, API answers (asked of both replicas) and outbox facts
equal a clean single pass of the same stream; every handled event is in `processed_events` once,
nothing went to a dead-letter topic, every outbox event is on its topic at least once and none
the outbox does not hold; both replicas applied events, and no consumer failed its loop (which
would make it leave the group and join again). And, with two of each:

- the relay's leadership (a PostgreSQL advisory lock): a watcher samples who holds the lock
  every 0.25 s; never two holders, no replica's relay publishes in a life in which it was never
  seen holding the lock, no outbox row was marked sent by two relays (the replicas' counts of
  published rows add up to at most the outbox's rows), and a kill of the leader hands over: the
  survivor takes the lock and publishes what the leader left unsent before the killed one is
  started again;
- the jobs (points, `LOYALTY_SCHEDULER_ENABLED=true` on both; every replica looks at every job
  at each start): right after both start, one run of each job between them; over the whole test,
  one run per period begun (`job_runs` sampled with the lock; the replicas' own counts no more),
  none twice; both replicas answer the same last runs in `GET /v1/admin/jobs`. The other four
  run without their scheduler: their jobs at the system clock would part them from the clean
  pass;
- the rate limits (points, 1 request a second and a burst of 5 for a key of the test's own):
  each replica lets the burst through and then answers 429 with `Retry-After` by itself, so two
  replicas let a key through twice as fast (`ratelimit.py`: the limits hold per process);
- the console is not started here: its sessions are sealed cookies that any replica with the
  same `CONSOLE_SESSION_SECRET` opens, which `services/console/tests/test_sessions.py` tests
  with two consoles (`test_two_replicas_with_the_same_secret_serve_one_operator`).

Each replica logs in to the database as a role of its own (a superuser made for the test), so
that `pg_locks` and `pg_stat_activity` tell the replicas apart: who holds the relay's lock, who
is inside a consumer transaction. Nothing else differs from replicas sharing one role.

The five services run side by side, so the waits for sessions to expire overlap.
`make test` runs 24 members and 2 kills per service; `make chaos` more
(LOYALTY_CHAOS_REPLICA_MEMBERS, else LOYALTY_CHAOS_CRASH_MEMBERS; LOYALTY_CHAOS_KILLS,
LOYALTY_CHAOS_SEED).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import pytest_asyncio
from loyalty_shared.db import create_engine, to_asyncpg_dsn
from loyalty_shared.events import POINTS, decode_event
from loyalty_shared.jobs import period_of
from loyalty_shared.kafka.broker import EmbeddedBroker, free_port
from loyalty_shared.settings import ALL_SCOPES
from loyalty_shared.testing import DatabaseFactory, until
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from .consumers import CONSUMERS, Consumer, diff, handled_types, observe, verify
from .oracle import expected_accounts
from .processes import API_KEY, ServiceProcess, wait_for_moment
from .stream import Publisher as PointsPublisher
from .stream import (
    check_points,
    dead_letters,
    env_int,
    generate,
    handled_ids,
    read_all,
    record_figures,
)
from .stream import consumed_everything as points_consumed_everything
from .streams_other import Publisher, Stream, consumed_everything
from .test_consumer_crashes import chunks_of, clean_pass, consumer_of

MEMBERS = env_int("LOYALTY_CHAOS_REPLICA_MEMBERS", env_int("LOYALTY_CHAOS_CRASH_MEMBERS", 24))
KILLS = env_int("LOYALTY_CHAOS_KILLS", 2)
SEED = env_int("LOYALTY_CHAOS_SEED", 20)
SERVICES = ["points", *CONSUMERS]
# The first kill takes the replica that does not lead the relay inside a consumer transaction,
# the second the relay's leader while it is half-way, the third either at random, and so on.
KILL_MODES = ("mid-batch", "relay", "random")
MOMENT_TIMEOUT = 15.0
# The points replicas' rate limit, for a key of the test's own (the others keep the default).
RATE_PER_SECOND = 1
RATE_BURST = 5
RATE_KEY = "chaos-rate"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480 + 60 * KILLS)]

_RELAY_HOLDERS = """
    SELECT a.usename FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = ((hashtext($1)::bigint >> 32) & 4294967295)::oid
      AND l.objid = (hashtext($1)::bigint & 4294967295)::oid
"""

# A consumer transaction holds (or waits for) ROW EXCLUSIVE on processed_events from its first
# statement, the inbox's insert, to its commit; `granted` false: it waits for the test's lock.
_IN_CONSUMER_TRANSACTION = """
    SELECT DISTINCT a.usename FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'relation' AND l.relation = 'processed_events'::regclass
      AND l.mode = 'RowExclusiveLock' AND l.granted = $1
"""

# What the replicas' logs say about the rebalances and the retries they caused.
LOG_EVENTS = (
    "offset_commit_failed",
    "consumer_error",
    "batch_failed",
    "database_unavailable",
    "outbox_relay_error",
    "job_failed",
)


@dataclasses.dataclass
class Life:
    """One start of a replica, until it was killed (or the end): what its /metrics said last."""

    led: bool = False  # seen holding the relay's lock
    published: int = 0  # outbox rows its relay published and marked sent
    processed: int = 0  # events its consumer applied
    duplicates: int = 0  # events its inbox skipped, already applied
    jobs: Counter[str] = dataclasses.field(default_factory=Counter)  # scheduled runs, ok
    job_errors: Counter[str] = dataclasses.field(default_factory=Counter)


class Replica:
    def __init__(self, name: str, role: str, process: ServiceProcess) -> None:
        self.name = name
        self.role = role
        self.process = process
        self.lives = [Life()]

    @property
    def life(self) -> Life:
        return self.lives[-1]

    async def scrape(self) -> None:
        """Bring the current life's figures up to date from the process's /metrics."""
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(f"{self.process.url}/metrics")
        response.raise_for_status()
        published = processed = duplicates = 0.0
        jobs: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name == "loyalty_outbox_published_total":
                    published += sample.value
                elif sample.name == "loyalty_events_processed_total":
                    processed += sample.value
                elif sample.name == "loyalty_events_duplicate_total":
                    duplicates += sample.value
                elif sample.name == "loyalty_job_runs_total":
                    outcome = sample.labels["outcome"]
                    (jobs if outcome == "ok" else errors)[sample.labels["job"]] += int(sample.value)
        self.life.published = int(published)
        self.life.processed = int(processed)
        self.life.duplicates = int(duplicates)
        self.life.jobs = jobs
        self.life.job_errors = errors

    def log_counts(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for path in self.process.log_dir.glob(f"{self.process.service}-*.log"):
            text = path.read_text(errors="replace")
            for event in LOG_EVENTS:
                counts[event] += text.count(event)
        return counts


class Pair:
    """Two replicas of a service on one database and one broker, the database's view of them,
    and a watcher of the relay's lock."""

    def __init__(self, service: str, database_url: str, replicas: list[Replica]) -> None:
        self.service = service
        self.database_url = database_url
        self.replicas = replicas
        self.by_role = {r.role: r for r in replicas}
        self.relay_key = f"loyalty_outbox_relay:{service}"
        self.db: asyncpg.Connection | None = None
        self._watch_db: asyncpg.Connection | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.samples = 0
        self.most_holders = 0
        self.leaders: list[str] = []  # who held the lock, each change of holder
        self.watch_jobs = False
        self.job_runs: set[tuple[str, datetime, datetime]] = set()  # (job, started_at, as_of)
        self._server_url = ""

    @classmethod
    async def create(
        cls,
        service: str,
        databases: DatabaseFactory,
        database_url: str,
        bootstrap: str,
        log_dir: Path,
        *,
        api_keys: str = f"{API_KEY}={','.join(ALL_SCOPES)}",
        env: dict[str, str] | None = None,
    ) -> Pair:
        server = await asyncpg.connect(to_asyncpg_dsn(databases.server_url))
        replicas = []
        try:
            for name in ("a", "b"):
                role = f"chaos_{service}_{name}_{secrets.token_hex(3)}"
                password = secrets.token_hex(12)
                await server.execute(f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{password}'")
                url = (
                    make_url(database_url)
                    .set(username=role, password=password)
                    .render_as_string(hide_password=False)
                )
                directory = log_dir / name
                directory.mkdir(parents=True, exist_ok=True)
                process = ServiceProcess(
                    service, url, bootstrap, directory, api_keys=api_keys, env=env
                )
                replicas.append(Replica(name, role, process))
        finally:
            await server.close()
        pair = cls(service, database_url, replicas)
        pair._server_url = databases.server_url
        return pair

    async def start(self) -> None:
        """Both replicas at once (their migrations take turns on an advisory lock)."""
        self.db = await asyncpg.connect(to_asyncpg_dsn(self.database_url))
        self._watch_db = await asyncpg.connect(to_asyncpg_dsn(self.database_url))
        for replica in self.replicas:
            replica.process.start()
        await asyncio.gather(*(r.process.wait_healthy() for r in self.replicas))
        self._watcher = asyncio.create_task(self._watch(), name=f"{self.service}-relay-watch")

    async def _watch(self) -> None:
        assert self._watch_db is not None
        while True:
            holders = [
                r["usename"] for r in await self._watch_db.fetch(_RELAY_HOLDERS, self.relay_key)
            ]
            self.samples += 1
            self.most_holders = max(self.most_holders, len(holders))
            for role in holders:
                replica = self.by_role.get(role)
                if replica is None:
                    continue
                if replica.process.alive():
                    replica.life.led = True
                if self.leaders[-1:] != [replica.name]:
                    self.leaders.append(replica.name)
            if self.watch_jobs:  # job_runs keeps a job's last run: sampled, every run is seen
                rows = await self._watch_db.fetch(
                    "SELECT job, started_at, as_of FROM job_runs WHERE scheduled"
                )
                self.job_runs |= {(r["job"], r["started_at"], r["as_of"]) for r in rows}
            await asyncio.sleep(0.25)

    async def leader(self) -> Replica | None:
        assert self.db is not None
        for row in await self.db.fetch(_RELAY_HOLDERS, self.relay_key):
            replica = self.by_role.get(row["usename"])
            if replica is not None and replica.process.alive():
                return replica
        return None

    async def scrape(self) -> None:
        for replica in self.replicas:
            await replica.scrape()

    def other(self, replica: Replica) -> Replica:
        return next(r for r in self.replicas if r is not replica)

    async def wait_in_transaction(
        self, target: Replica, timeout: float, *, waiting: bool = False
    ) -> bool:
        """Wait until the target replica is inside a consumer transaction (`waiting`: one that
        waits for the lock on processed_events)."""
        assert self.db is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = await self.db.fetch(_IN_CONSUMER_TRANSACTION, not waiting)
            if target.role in {r["usename"] for r in rows}:
                return True
            await asyncio.sleep(0.002 if not waiting else 0.1)
        return False

    async def unsent(self) -> list[int]:
        assert self.db is not None
        rows = await self.db.fetch("SELECT seq FROM outbox WHERE sent_at IS NULL ORDER BY seq")
        return [r["seq"] for r in rows]

    async def kill(
        self,
        mode: str,
        rng: random.Random,
    ) -> tuple[Replica, dict[str, Any]]:
        """SIGKILL one replica at the moment the mode aims at (`relay`: the relay's leader
        half-way through the outbox; `mid-batch`: the other one inside a consumer transaction;
        `random`: either); if it led the relay, wait for the other to take over and publish
        what it left. It stays down: `rebalance_mid_batch` starts it again. (Call `scrape`
        before publishing what the kill is to land in: the victim's figures go with it.)"""
        assert self.db is not None
        leader = await self.leader()
        if mode == "relay":
            victim = leader or rng.choice(self.replicas)
            hit = await wait_for_moment(self.db, "relay", rng, MOMENT_TIMEOUT)
        elif mode == "mid-batch":
            victim = self.other(leader) if leader else rng.choice(self.replicas)
            hit = await self.wait_in_transaction(victim, MOMENT_TIMEOUT)
        else:
            victim = rng.choice(self.replicas)
            hit = await wait_for_moment(self.db, "random", rng)
        victim.process.kill()
        led = victim is leader
        killed_at = time.monotonic()
        entry: dict[str, Any] = {
            "mode": mode if hit else f"{mode} (moment not seen: killed anyway)",
            "victim": victim.name,
            "leader": led,
            "processed": await self.db.fetchval("SELECT count(*) FROM processed_events"),
        }
        if led:
            left = await self.unsent()
            survivor = self.other(victim)

            async def took_over() -> bool:
                return await self.leader() is survivor

            async def published_what_was_left() -> bool:
                return not set(left) & set(await self.unsent())

            await until(took_over, f"{self.service} {survivor.name} to take the relay", 30)
            entry["handover_seconds"] = round(time.monotonic() - killed_at, 2)
            await until(published_what_was_left, f"{self.service} relay to publish the rest", 30)
            entry["left_unsent"] = len(left)
            entry["published_by_survivor_seconds"] = round(time.monotonic() - killed_at, 2)
        return victim, entry

    async def rebalance_mid_batch(
        self, victim: Replica, publish: Callable[[], Awaitable[Any]]
    ) -> dict[str, Any]:
        """Start the killed replica again while the survivor is inside a consumer transaction,
        so that the group's rebalance (the dead member's session expires, the new one joins)
        comes while a batch is in flight: the test holds processed_events locked (EXCLUSIVE:
        reads go on, the consumers' inserts wait), publishes more of the stream, which the
        survivor takes into a transaction that waits, starts the victim, and lets go once the
        victim too waits with a batch of its own (it was given partitions, read from their
        committed offsets, some of them perhaps in the survivor's batch)."""
        survivor = self.other(victim)
        hold = await asyncpg.connect(to_asyncpg_dsn(self.database_url))
        held_at = time.monotonic()
        try:
            async with hold.transaction():
                await hold.execute("LOCK TABLE processed_events IN EXCLUSIVE MODE")
                await publish()
                survivor_waits = await self.wait_in_transaction(survivor, 20, waiting=True)
                victim.lives.append(Life())
                victim.process.start()
                await victim.process.wait_healthy()
                victim_waits = await self.wait_in_transaction(victim, 30, waiting=True)
                held = round(time.monotonic() - held_at, 1)
        finally:
            await hold.close()
        return {
            "survivor_mid_batch": survivor_waits,
            "partitions_moved_mid_batch": survivor_waits and victim_waits,
            "held_seconds": held,
        }

    async def finish(self) -> None:
        """Stop watching; the last figures of both replicas."""
        if self._watcher is not None:
            self._watcher.cancel()
            try:
                await self._watcher
            except asyncio.CancelledError:
                pass
        for replica in self.replicas:
            assert replica.process.alive(), replica.process.log_tail()
            await replica.scrape()

    async def stop(self) -> None:
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
        for replica in self.replicas:
            replica.process.stop()
        for conn in (self.db, self._watch_db):
            if conn is not None:
                await conn.close()
        # The roles own what their migrations made: hand it over, then drop them.
        roles = ", ".join(r.role for r in self.replicas)
        try:
            conn = await asyncpg.connect(to_asyncpg_dsn(self.database_url))
            try:
                await conn.execute(f"REASSIGN OWNED BY {roles} TO CURRENT_USER")
            finally:
                await conn.close()
            server = await asyncpg.connect(to_asyncpg_dsn(self._server_url))
            try:
                await server.execute(f"DROP ROLE IF EXISTS {roles}")
            finally:
                await server.close()
        except Exception:
            pass

    def relay_figures(self, outbox_rows: int) -> tuple[dict[str, Any], list[str]]:
        """What the leadership did, and what is wrong with it."""
        problems = []
        if self.most_holders > 1:
            problems.append(f"{self.most_holders} relays held the lock at once")
        for replica in self.replicas:
            for n, life in enumerate(replica.lives):
                if life.published and not life.led:
                    problems.append(
                        f"replica {replica.name} (start {n + 1}) published {life.published} rows "
                        "and was never seen holding the relay's lock"
                    )
        published = sum(life.published for r in self.replicas for life in r.lives)
        if published > outbox_rows:
            problems.append(
                f"the relays marked {published} rows sent, the outbox holds {outbox_rows}: "
                "some were marked by two relays"
            )
        figures = {
            "relay_leaders": "→".join(self.leaders),
            "relay_lock_samples": self.samples,
            "rows_marked_sent_by_replica": {
                r.name: sum(life.published for life in r.lives) for r in self.replicas
            },
            "outbox_rows": outbox_rows,
        }
        return figures, problems

    def processed_by_replica(self) -> dict[str, int]:
        return {r.name: sum(life.processed for life in r.lives) for r in self.replicas}

    def duplicates_by_replica(self) -> dict[str, int]:
        return {r.name: sum(life.duplicates for life in r.lives) for r in self.replicas}

    def log_counts(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for replica in self.replicas:
            total += replica.log_counts()
        return dict(total)


async def jobs_answer(replica: Replica) -> list[dict[str, Any]]:
    async with replica.process.client() as client:
        response = await client.get("/v1/admin/jobs")
    assert response.status_code == 200, response.text
    return [
        {k: item[k] for k in ("job", "every_seconds", "last_run", "next_due_at")}
        for item in response.json()["items"]
    ]


async def both_answer_one_run(pair: Pair) -> list[dict[str, Any]] | None:
    """Both replicas' `GET /v1/admin/jobs`, when they agree and every job has run on schedule."""
    answers = [await jobs_answer(r) for r in pair.replicas]
    ran = all(item["last_run"] is not None and item["last_run"]["scheduled"] for item in answers[0])
    return answers[0] if ran and answers[0] == answers[1] else None


def periods(every: timedelta, since: datetime, until_: datetime) -> int:
    """How many periods of `every` begin in [since's period, until_]."""
    return (period_of(until_, every) - period_of(since, every)) // every + 1


async def rate_limit_check(pair: Pair) -> dict[str, Any]:
    """The rate limit's key sends requests to one replica until it answers 429, then as many to
    the other at once: each lets the burst through by itself."""
    passed: dict[str, int] = {}
    refused: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    for replica in pair.replicas:
        async with httpx.AsyncClient(
            base_url=replica.process.url, headers={"Authorization": f"Bearer {RATE_KEY}"}
        ) as client:
            passed[replica.name] = 0
            for _ in range(RATE_BURST * 3):
                response = await client.get("/v1/admin/jobs")
                if response.status_code == 429:
                    refused[replica.name] = {
                        "code": response.json().get("code"),
                        "retry_after": response.headers.get("Retry-After"),
                    }
                    break
                assert response.status_code == 200, response.text
                passed[replica.name] += 1
    return {
        "passed_before_429": passed,
        "refused": refused,
        "seconds": round(time.monotonic() - started, 2),
    }


def chunked(items: list[Any], kills: int) -> list[list[Any]]:
    size = max(1, -(-len(items) // (kills + 1)))
    return [items[i : i + size] for i in range(0, len(items), size)]


async def run_points(databases: DatabaseFactory, log_dir: Path) -> dict[str, Any]:
    """The points service twice over, its stream in chunks, a kill in each but the last."""
    rng = random.Random(SEED * 31 + 5)
    stream = generate(SEED + 2, MEMBERS)
    expected = expected_accounts(stream.facts)
    handled = handled_ids(stream.facts)
    started = time.monotonic()
    kills: list[dict[str, Any]] = []
    with EmbeddedBroker(free_port()) as broker:
        bootstrap = broker.bootstrap
        publisher = PointsPublisher(bootstrap)
        await publisher.ensure_topics()
        database_url = await databases.fresh("chaos_replicas_points")
        pair = await Pair.create(
            "points",
            databases,
            database_url,
            bootstrap,
            log_dir,
            api_keys=(f"{API_KEY}=admin,members:read,points:write,events:write;{RATE_KEY}=admin"),
            env={
                "LOYALTY_SCHEDULER_ENABLED": "true",
                "LOYALTY_RATE_LIMIT_PER_SECOND": str(RATE_PER_SECOND),
                "LOYALTY_RATE_LIMIT_BURST": str(RATE_BURST),
            },
        )
        pair.watch_jobs = True
        try:
            first_start = datetime.now(UTC)
            await pair.start()
            jobs_at_start = await until(
                lambda: both_answer_one_run(pair), "both points replicas to show the jobs", 60, 1.0
            )
            for replica in pair.replicas:
                await replica.scrape()
            runs_at_start = sum((r.life.jobs for r in pair.replicas), Counter())
            checked_at = datetime.now(UTC)
            rate = await rate_limit_check(pair)
            assert pair.db is not None
            db = pair.db
            chunks = chunked(stream.facts, KILLS)
            published = 0
            for n, chunk in enumerate(chunks):

                async def caught_up(target: int = published) -> bool:
                    return await db.fetchval("SELECT count(*) FROM processed_events") >= target

                await until(caught_up, f"points to catch up before chunk {n + 1}", 120)
                if n >= KILLS:
                    await publisher.publish(chunk)
                    published += len(handled_ids(chunk))
                    continue
                # half the chunk, a kill in there; the other half during the rebalance
                first, second = chunk[: len(chunk) // 2], chunk[len(chunk) // 2 :]
                await pair.scrape()
                await publisher.publish(first)
                published += len(handled_ids(first))
                victim, entry = await pair.kill(KILL_MODES[n % len(KILL_MODES)], rng)
                entry["of"] = published
                entry.update(
                    await pair.rebalance_mid_batch(victim, lambda s=second: publisher.publish(s))
                )
                published += len(handled_ids(second))
                kills.append(entry)

            async def done() -> bool:
                if not await points_consumed_everything(bootstrap, publisher.ends):
                    return False
                return not await db.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")

            await until(done, "the points replicas to consume everything and relay", 180)
            jobs_at_end = await until(
                lambda: both_answer_one_run(pair), "both points replicas to agree on jobs", 30, 1.0
            )
            ended_at = datetime.now(UTC)
            await pair.finish()
            engine = create_engine(database_url)
            try:
                async with engine.connect() as conn:
                    report = await check_points(conn, expected, handled)
            finally:
                await engine.dispose()
            outbox_ids = {r["event_id"] for r in await db.fetch("SELECT event_id FROM outbox")}
            on_topic = Counter(
                orjson.loads(r.value)["id"] for r in await read_all(bootstrap, [POINTS])
            )
            job_rows = [dict(r) for r in await db.fetch("SELECT * FROM job_runs ORDER BY job")]
            return {
                "stream": stream,
                "report": report,
                "dead": await dead_letters(bootstrap),
                "outbox_ids": outbox_ids,
                "on_topics": on_topic,
                "kills": kills,
                "pair": pair,
                "jobs_at_start": jobs_at_start,
                "runs_at_start": runs_at_start,
                "jobs_at_end": jobs_at_end,
                "job_rows": job_rows,
                "first_start": first_start,
                "checked_at": checked_at,
                "ended_at": ended_at,
                "rate": rate,
                "seconds": round(time.monotonic() - started, 1),
            }
        finally:
            await pair.stop()


async def run_consumer(
    service: str, index: int, databases: DatabaseFactory, log_dir: Path, base: datetime
) -> dict[str, Any]:
    """One of the four other services twice over, as test_consumer_crashes.py crashes one."""
    consumer = consumer_of(service)
    rng = random.Random(SEED * 37 + index)
    stream = consumer.generate(SEED + 40 + index, MEMBERS, base)
    handled = handled_types(consumer)
    started = time.monotonic()
    kills: list[dict[str, Any]] = []
    with EmbeddedBroker(free_port()) as broker:
        bootstrap = broker.bootstrap
        database_url = await databases.fresh(f"chaos_replicas_{service}")
        pair = await Pair.create(
            service, databases, database_url, bootstrap, log_dir, env=consumer.env()
        )
        engine = create_engine(database_url)
        try:
            await pair.start()
            assert pair.db is not None
            db = pair.db
            a, b = pair.replicas
            async with a.process.client() as client:
                ctx = await consumer.setup(client, stream)
            publisher = Publisher(bootstrap, consumer.rewrite(ctx))
            await publisher.ensure_topics(consumer.topics())
            published = 0
            phase = 0
            chunks = chunks_of(stream, KILLS)
            kill_after = {int((k + 0.5) * len(chunks) / KILLS) for k in range(KILLS)}
            for n, (chunk_phase, chunk) in enumerate(chunks):

                async def caught_up(target: int = published) -> bool:
                    return await db.fetchval("SELECT count(*) FROM processed_events") >= target

                await until(caught_up, f"{service} to catch up before chunk {n + 1}", 120)
                if chunk_phase != phase:
                    phase = chunk_phase
                    async with engine.connect() as conn:
                        await consumer.between_phases(conn, ctx, stream)
                    publisher.rewrite = consumer.rewrite(ctx)
                if n > 0:
                    await db.execute("ANALYZE")  # the statistics of a live database
                if n not in kill_after:
                    await publisher.publish(chunk)
                    published += sum(1 for item in chunk if item.type in handled)
                    continue
                first, second = chunk[: len(chunk) // 2], chunk[len(chunk) // 2 :]
                await pair.scrape()
                await publisher.publish(first)
                published += sum(1 for item in first if item.type in handled)
                victim, entry = await pair.kill(KILL_MODES[len(kills) % len(KILL_MODES)], rng)
                entry["of"] = published
                entry.update(
                    await pair.rebalance_mid_batch(victim, lambda s=second: publisher.publish(s))
                )
                published += sum(1 for item in second if item.type in handled)
                kills.append(entry)

            async def done() -> bool:
                if not await consumed_everything(
                    bootstrap, consumer.group, consumer.consumes, publisher.ends
                ):
                    return False
                return not await db.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")

            await until(done, f"the {service} replicas to consume everything and relay", 180)
            async with b.process.client() as client:
                await consumer.finish(client, stream)
            samples = {}
            for replica in pair.replicas:
                async with replica.process.client() as client:
                    samples[replica.name] = await consumer.sample(client, ctx, stream)
            await pair.finish()
            async with engine.connect() as conn:
                observed = await observe(consumer, conn, ctx)
            observed["samples"] = samples
            observed["on_topics"] = Counter(
                orjson.loads(r.value)["id"] for r in await read_all(bootstrap, consumer.publishes)
            )
            dead = await read_all(bootstrap, [t for t in consumer.topics() if ".dlq." in t])
            observed["dead"] = Counter(decode_event(r.value).type for r in dead)
        finally:
            await engine.dispose()
            await pair.stop()
    observed.update(
        consumer=consumer,
        stream=stream,
        kills=kills,
        pair=pair,
        seconds=round(time.monotonic() - started, 1),
    )
    return observed


@pytest_asyncio.fixture(scope="module")
async def replicated(
    databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Every service twice over, side by side; an outcome (or the error) per service."""
    base = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    runs = [run_points(databases, tmp_path_factory.mktemp("replicas-points"))]
    runs += [
        run_consumer(service, n, databases, tmp_path_factory.mktemp(f"replicas-{service}"), base)
        for n, service in enumerate(CONSUMERS, start=1)
    ]
    outcomes = await asyncio.gather(*runs, return_exceptions=True)
    for outcome in outcomes[1:]:
        if isinstance(outcome, dict):
            try:
                outcome["clean"] = await clean_pass(
                    outcome["consumer"], databases, outcome["stream"]
                )
            except Exception as exc:
                outcome["clean"] = exc
    return dict(zip(SERVICES, outcomes, strict=True))


def outcome_of(replicated: dict[str, Any], service: str) -> dict[str, Any]:
    outcome = replicated[service]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome  # type: ignore[no-any-return]


def check_replicas(outcome: dict[str, Any], outbox_rows: int) -> dict[str, Any]:
    """What every service's two replicas must have done: both worked, the kills happened (a
    leader among them, handed over), the relay's leadership held; their figures."""
    pair: Pair = outcome["pair"]
    kills = outcome["kills"]
    assert len(kills) == KILLS, kills
    processed = pair.processed_by_replica()
    assert all(processed.values()), f"a replica applied no event: {processed}"
    leaders = [k for k in kills if k["leader"]]
    if KILLS:
        assert leaders, f"no kill took the relay's leader: {kills}"
    moved = [k for k in kills if k["partitions_moved_mid_batch"]]
    if KILLS:
        assert moved, f"no rebalance moved partitions away from a batch in flight: {kills}"
    figures, problems = pair.relay_figures(outbox_rows)
    assert not problems, "the relay's leadership:\n" + "\n".join(problems)
    logged = pair.log_counts()
    # A consumer that fails its loop leaves the group and joins again: two more rebalances for
    # every replica. A partition revoked during a batch used to do that (the lag it recorded
    # after the refused offset commit asked aiokafka for the highwater of a partition no longer
    # assigned); nothing here should.
    assert not logged.get("consumer_error"), f"a consumer failed its loop: {logged}"
    return {
        "kills": len(kills),
        "kills_of_the_relay_leader": len(leaders),
        "kills_mid_work": sum(1 for k in kills if k["processed"] < k["of"]),
        "rebalances_mid_batch": sum(1 for k in kills if k["partitions_moved_mid_batch"]),
        "handover_seconds": [k["handover_seconds"] for k in leaders],
        "left_unsent_at_the_leader_kill": [k["left_unsent"] for k in leaders],
        "events_applied_by_replica": processed,
        "duplicates_skipped_by_replica": pair.duplicates_by_replica(),
        **figures,
        "logged": logged,
    }


def test_two_points_replicas_match_the_oracle(replicated: dict[str, Any]):
    outcome = outcome_of(replicated, "points")
    outcome["report"].assert_ok()
    assert outcome["dead"] == 0
    outbox_ids, on_topic = outcome["outbox_ids"], outcome["on_topics"]
    missing = outbox_ids - set(on_topic)
    assert not missing, (
        f"{len(missing)} of {len(outbox_ids)} outbox events never reached the broker; "
        f"kills {outcome['kills']}"
    )
    assert set(on_topic) - outbox_ids == set(), "events on the topic the outbox does not hold"
    figures = check_replicas(outcome, len(outbox_ids))
    record_figures(
        "replicas: two points processes",
        {
            "members": MEMBERS,
            "events": len(outcome["stream"].facts),
            "accounts": outcome["report"].accounts,
            "ledger_entries": outcome["report"].entries,
            "points_events": len(outbox_ids),
            "points_events_published_again": sum(1 for n in on_topic.values() if n > 1),
            **figures,
            "seconds": outcome["seconds"],
            "kill_log": outcome["kills"],
        },
    )


def test_jobs_run_once_per_period_across_two_replicas(replicated: dict[str, Any]):
    outcome = outcome_of(replicated, "points")
    pair: Pair = outcome["pair"]
    every = {
        item["job"]: timedelta(seconds=item["every_seconds"]) for item in outcome["jobs_at_start"]
    }
    # At the start both replicas looked at every job: one of them ran it.
    for job, runs in sorted(outcome["runs_at_start"].items()):
        allowed = _allowed(every[job], outcome["first_start"], outcome["checked_at"])
        assert runs in allowed, f"{job}: {runs} runs at the start of two replicas, {allowed} due"
    assert set(outcome["runs_at_start"]) == set(every), outcome["runs_at_start"]
    # Over every life of both (each start looks at every job again): one run per period begun,
    # as job_runs recorded them (sampled every 0.25 s: a job runs at most every 15 minutes).
    runs = Counter[str]()  # the replicas' own counts (a victim's: until shortly before its kill)
    errors = Counter[str]()
    for replica in pair.replicas:
        for life in replica.lives:
            runs += life.jobs
            errors += life.job_errors
    assert not errors, f"failed runs: {dict(errors)}"
    lines = {}
    for job, period in sorted(every.items()):
        recorded = Counter(period_of(as_of, period) for j, _, as_of in pair.job_runs if j == job)
        twice = {str(p): n for p, n in recorded.items() if n > 1}
        assert not twice, f"{job}: periods run more than once: {twice}"
        allowed = _allowed(period, outcome["first_start"], outcome["ended_at"])
        assert len(recorded) in allowed, (
            f"{job}: {len(recorded)} periods run over {sum(len(r.lives) for r in pair.replicas)} "
            f"starts of two replicas; {allowed} began"
        )
        assert runs[job] <= max(allowed), f"{job}: the replicas counted {runs[job]} runs"
        lines[job] = len(recorded)
    rows = {row["job"]: row for row in outcome["job_rows"]}
    assert set(rows) == set(every)
    assert all(row["period_done"] and row["status"] == "ok" for row in rows.values()), rows
    record_figures(
        "replicas: scheduled jobs of two points processes",
        {
            "starts": sum(len(r.lives) for r in pair.replicas),
            "scheduled_runs": lines,
            "every_seconds": {job: int(p.total_seconds()) for job, p in every.items()},
            "both_answer_the_same_last_run": True,
        },
    )


def _allowed(every: timedelta, since: datetime, at: datetime) -> set[int]:
    """The runs a job may have had by `at`: one per period begun since `since`, give or take a
    period that began in the last 10 s (its run may not be over)."""
    return {periods(every, since, at - timedelta(seconds=10)), periods(every, since, at)}


def test_rate_limits_hold_per_replica(replicated: dict[str, Any]):
    rate = outcome_of(replicated, "points")["rate"]
    passed, refused = rate["passed_before_429"], rate["refused"]
    assert set(refused) == {"a", "b"}, f"a replica never answered 429: {rate}"
    for name, answer in refused.items():
        assert answer["code"] == "rate_limited" and answer["retry_after"], answer
        # the burst, and what refilled while the requests went out (1 a second)
        assert RATE_BURST <= passed[name] <= RATE_BURST + 1 + rate["seconds"], rate
    record_figures(
        "replicas: rate limits of two points processes",
        {"per_second": RATE_PER_SECOND, "burst": RATE_BURST, **rate},
    )


@pytest.mark.parametrize("service", list(CONSUMERS))
def test_two_replicas_match_a_clean_pass(service: str, replicated: dict[str, Any]):
    outcome = outcome_of(replicated, service)
    consumer: Consumer = outcome["consumer"]
    stream: Stream = outcome["stream"]
    clean = outcome["clean"]
    if isinstance(clean, BaseException):
        raise clean
    assert not outcome["dead"], f"dead-lettered: {dict(outcome['dead'])}"
    for name, got in (("two replicas", outcome), ("clean pass", clean)):
        problems = verify(consumer, stream, stream.items, got, stream.base)
        assert not problems, f"{name}: {len(problems)} problems:\n" + "\n".join(problems[:25])
    differences = diff(clean["state"], outcome["state"])
    assert not differences, "the state of two replicas differs from a clean pass:\n" + "\n".join(
        differences
    )
    assert outcome["outbox"] == clean["outbox"], (
        f"outbox facts: {dict(outcome['outbox'])} with two replicas, {dict(clean['outbox'])} "
        "after a clean pass"
    )
    for name, sample in outcome["samples"].items():
        assert sample == clean["sample"], (name, diff(clean["sample"], sample))
    outbox_ids = {e["event_id"] for e in outcome["events"]}
    on_topics = outcome["on_topics"]
    missing = outbox_ids - set(on_topics)
    assert not missing, (
        f"{len(missing)} of {len(outbox_ids)} outbox events never reached the broker: "
        f"{sorted(missing)[:10]}; kills {outcome['kills']}"
    )
    assert set(on_topics) - outbox_ids == set(), "events on the topics the outbox does not hold"
    figures = check_replicas(outcome, len(outbox_ids))
    record_figures(
        f"replicas: two {service} processes",
        {
            "members": len(stream.members),
            "events": len(stream.items),
            "outbox": dict(outcome["outbox_all"]),
            "outbox_events_published_again": sum(1 for n in on_topics.values() if n > 1),
            **figures,
            "seconds": outcome["seconds"],
            "kill_log": outcome["kills"],
        },
    )
