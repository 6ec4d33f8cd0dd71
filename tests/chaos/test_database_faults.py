"""Database faults while events flow, for each consumer service (issue "Exact money at every
edge"): each service runs in process on a fresh database of the tests' PostgreSQL server, with a
broker of its own, and is fed its seeded stream piece by piece while an admin connection (a
superuser on the same server) breaks the database under it, one fault after another, each for
longer than the consumer's retry ladder (`max_retries` 3: 0.2 + 0.4 + 0.8 s):

- `refuse`: `ALTER DATABASE ... ALLOW_CONNECTIONS false` and `pg_terminate_backend` of the
  service's backends: every reconnection is refused (SQLSTATE 55000);
- `cut`: the service's backends terminated every 0.1 s (57P01 under "connection was closed in
  the middle of operation", 08003; closed connections);
- `pool`: the test checks out every connection of the service's pool (shrunk to POOL_SIZE with a
  1 s `pool_timeout` for this test) and holds them: the pool times out (SQLAlchemy TimeoutError);
- `slots`: idle connections take every connection slot of the server, and the service's backends
  are terminated: reconnecting finds none (53300 "too many clients");
- `deadlock`: the tables the consumer writes are locked, and once the consumer's transaction
  (which records its events in `processed_events` first) waits on them, the admin asks for a lock
  on `processed_events`: PostgreSQL breaks the cycle by aborting the consumer, who waited first
  (40P01);
- `lock_timeout`: `ALTER DATABASE ... SET lock_timeout = '200ms'`, the sessions cut so that new
  ones carry it, and the tables held locked: the consumer's statements time out (55P03).

Half of a piece of the stream goes out, a fault begins, the other half goes out under it a slice
at a time until the consumer has met the fault (it may sleep through one, its pause doubling up
to 5 s, or slip between two cuts), the fault ends, the consumer catches up; then the next. The
first fault begins while the consumer is still joining its group. A spy on `database_unavailable`
records what the consumer and the HTTP layer met (exception, driver error, SQLSTATE) and fails
the test on anything it reads as the work's own fault. Meanwhile a poller asks the service's HTTP
API over and over (reads, and a write under an Idempotency-Key, retried with the same key until
it has an answer): no answer may be a 500, a 503 must say `service_unavailable` with
`Retry-After`, and each write takes effect exactly once (points: top-ups; member: card plans).
At the end: nothing on any dead-letter topic, every handled event recorded once in
`processed_events`, and the state equals the oracle (points, `oracle.py`) or a clean single pass
of the same stream (member, coupon, notifier, segmenter, compared as `test_consumer_replays.py`
does; the clean pass runs alongside on a PostgreSQL server of its own, out of the faults' way).

Sizes: LOYALTY_CHAOS_FAULT_MEMBERS (else LOYALTY_CHAOS_CRASH_MEMBERS, else 40),
LOYALTY_CHAOS_FAULT_SECONDS (each fault's least hold, default 2.0), LOYALTY_CHAOS_SEED. With
LOYALTY_TEST_DATABASE_URL (a server others may use) the `slots` fault is left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import io
import math
import os
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import loyalty_points.bootstrap
import loyalty_shared.errors
import loyalty_shared.idempotency
import loyalty_shared.kafka.consumer
import loyalty_shared.service
import pytest
from loyalty_shared.clock import Clock, FixedClock
from loyalty_shared.db import EmbeddedCluster, create_engine, to_asyncpg_dsn
from loyalty_shared.errors import database_unavailable, sqlstate
from loyalty_shared.events import decode_event
from loyalty_shared.kafka.broker import EmbeddedBroker, free_port
from loyalty_shared.service import Runtime, ServiceDefinition
from loyalty_shared.testing import AUTH, DatabaseFactory, RunningService, start_service, until
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine

from .consumers import CONSUMERS, SEGMENTS_DEFINED, Consumer, diff, observe, verify
from .oracle import expected_accounts
from .stream import Publisher as FactPublisher
from .stream import (
    check_points,
    dead_letters,
    env_int,
    generate,
    handled_ids,
    read_all,
    record_figures,
)
from .stream import consumed_everything as points_consumed
from .streams_other import Publisher, clean, consumed_everything
from .test_consumer_replays import _STARTING, BASE, replay

MEMBERS = env_int("LOYALTY_CHAOS_FAULT_MEMBERS", env_int("LOYALTY_CHAOS_CRASH_MEMBERS", 40))
SEED = env_int("LOYALTY_CHAOS_SEED", 20)
HOLD = float(os.environ.get("LOYALTY_CHAOS_FAULT_SECONDS") or 2.0)
FAULTS = ("refuse", "cut", "pool", "slots", "deadlock", "lock_timeout")
if os.environ.get("LOYALTY_TEST_DATABASE_URL"):  # a server others may use: its slots are theirs
    FAULTS = tuple(f for f in FAULTS if f != "slots")
# What the consumer must have met before a fault may end (else any outage will do).
SIGNATURES = {"deadlock": "40P01", "lock_timeout": "55P03"}
POOL_SIZE = 6  # the consumer, the relay, the poller's keyed write (claim, held transaction, lease)
LOCK_TIMEOUT = "200ms"
# Tables a fault leaves unlocked: the consumer's inbox (the deadlock asks for it last) and the
# keys of the HTTP writes (they claim their key, then wait on the tables like the consumer).
UNLOCKED = ("processed_events", "idempotency_keys")

pytestmark = pytest.mark.timeout(300 + MEMBERS)

# The pass under faults, as the tasks of its service see it (a clean pass runs alongside).
_FAULTED: contextvars.ContextVar[bool] = contextvars.ContextVar("faulted", default=False)


# ---------------------------------------------------------------------------------------------
# What the service made of the faults: every reading of database_unavailable, and HTTP answers
# ---------------------------------------------------------------------------------------------


def describe(exc: BaseException) -> str:
    """`DBAPIError<-ConnectionDoesNotExistError<-ConnectionResetError [invalidated] 08003`: the
    exception, the driver's errors under it (SQLAlchemy's adapter left out), whether SQLAlchemy
    took it for a lost connection, its SQLSTATE."""
    names = [type(exc).__name__]
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
        names.append(type(cause).__name__)
    invalidated = " [invalidated]" if getattr(exc, "connection_invalidated", False) else ""
    return f"{'<-'.join(names)}{invalidated} {sqlstate(exc) or '-'}"


@dataclass
class Seen:
    fault: str = "before the faults"
    # fault → "consumer|http outage|NOT AN OUTAGE DBAPIError<-... 55000" → count
    readings: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    examples: dict[str, str] = field(default_factory=dict)  # a message of each kind of error

    def note(self, where: str, exc: BaseException, outage: bool) -> None:
        verdict = "outage" if outage else "NOT AN OUTAGE"
        kind = describe(exc)
        self.readings[self.fault][f"{where} {verdict} {kind}"] += 1
        orig = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        self.examples.setdefault(kind, str(orig).splitlines()[0][:160] if str(orig) else "")

    def consumer_met(self, fault: str, state: str | None = None) -> int:
        return sum(
            n
            for reading, n in self.readings[fault].items()
            if reading.startswith("consumer outage") and (state is None or reading.endswith(state))
        )

    def not_outages(self) -> list[str]:
        return [
            f"{fault}: {reading} x{n}"
            for fault, readings in self.readings.items()
            for reading, n in readings.items()
            if "NOT AN OUTAGE" in reading
        ]


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> Seen:
    """Spies on database_unavailable where the consumer, the problem handlers and the write guard
    read it, for the pass under faults only."""
    seen = Seen()

    def spy(where: str) -> Callable[[BaseException], bool]:
        def reading(exc: BaseException) -> bool:
            outage = database_unavailable(exc)
            if _FAULTED.get():
                seen.note(where, exc, outage)
            return outage

        return reading

    monkeypatch.setattr(loyalty_shared.kafka.consumer, "database_unavailable", spy("consumer"))
    monkeypatch.setattr(loyalty_shared.errors, "database_unavailable", spy("http"))
    monkeypatch.setattr(
        loyalty_shared.idempotency, "database_unavailable", spy("http"), raising=False
    )
    return seen


@dataclass
class Probe:
    """What the poller asks: reads, and a write (path and body of the n-th) under a key each."""

    reads: list[str]
    write: Callable[[int], tuple[str, Any]] | None = None
    final: frozenset[int] = frozenset({200})  # a write's answer (anything else but 503/409: bad)
    # writes start once a read's answer says so (points: the member's account is there)
    ready: Callable[[httpx.Response], bool] | None = None


class Poller:
    """Asks the service's API in a loop through the ASGI app (exceptions it lets out answer 500,
    as a server would), and records every answer by fault."""

    def __init__(self, app: Any, probe: Probe, seen: Seen) -> None:
        self.probe = probe
        self.seen = seen
        self.escaped: list[str] = []
        transport = httpx.ASGITransport(app=self._catching(app), raise_app_exceptions=False)
        self.client = httpx.AsyncClient(
            transport=transport, base_url="http://faults.test", headers=AUTH
        )
        self.statuses: Counter[str] = Counter()
        self.by_fault: dict[str, Counter[str]] = defaultdict(Counter)
        self.problems: list[str] = []
        self.answers: list[tuple[int, Any]] = []  # each write's answer, once
        self.keys = 0
        self.longest_wait = 0.0  # the longest a write waited for its answer, retrying its key

    def _catching(self, app: Any) -> Any:
        async def catching(scope: Any, receive: Any, send: Any) -> None:
            try:
                await app(scope, receive, send)
            except Exception as exc:
                self.escaped.append(f"{self.seen.fault}: {scope.get('path')}: {describe(exc)}")
                raise

        return catching

    def note(self, kind: str, response: httpx.Response, allowed: Iterable[int]) -> None:
        status = response.status_code
        self.statuses[f"{kind} {status}"] += 1
        self.by_fault[self.seen.fault][f"{kind} {status}"] += 1
        where = f"{self.seen.fault}: {kind} {response.request.url.path} answered {status}"
        if status in (503, 409):
            code = "service_unavailable" if status == 503 else "idempotency_key_in_progress"
            if not response.headers.get("retry-after", "").isdigit():
                self.problems.append(f"{where} without Retry-After")
            if _json(response).get("code") != code:
                self.problems.append(f"{where} not `{code}`: {response.text[:300]}")
            if status == 409 and kind == "read":
                self.problems.append(where)
        elif status not in allowed:
            self.problems.append(f"{where}: {response.text[:300]}")

    async def run(self, stop: asyncio.Event) -> None:
        ready = self.probe.ready
        writing = self.probe.write is not None and ready is None
        pending: tuple[int, str, Any] | None = None
        asked = 0.0  # when the pending write was first sent
        drain_until = None
        while not stop.is_set() or pending is not None:
            if stop.is_set():
                drain_until = drain_until or time.monotonic() + 30
                if time.monotonic() > drain_until:
                    self.problems.append(f"write {pending} has no answer 30 s after the faults")
                    return
            else:
                for path in self.probe.reads:
                    response = await self.client.get(path)
                    self.note("read", response, (200, 404))
                    writing = writing or (
                        self.probe.write is not None and ready is not None and ready(response)
                    )
            if writing and pending is None and not stop.is_set():
                assert self.probe.write is not None
                self.keys += 1
                pending = (self.keys, *self.probe.write(self.keys))
            if pending is not None:
                n, path, body = pending
                asked = asked or time.monotonic()
                response = await self.client.post(
                    path, json=body, headers={"Idempotency-Key": f"chaos-fault-{n}"}
                )
                self.note("write", response, self.probe.final)
                if response.status_code not in (503, 409):  # an answer: the next key
                    if response.status_code in self.probe.final:
                        self.answers.append((n, _json(response)))
                    self.longest_wait = max(self.longest_wait, time.monotonic() - asked)
                    pending, asked = None, 0.0
            await asyncio.sleep(0.05)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return {}


# ---------------------------------------------------------------------------------------------
# The faults
# ---------------------------------------------------------------------------------------------


class Faults:
    """Breaks one database of the server from a superuser connection of its own."""

    def __init__(self, server_url: str, database_url: str, runtime: Runtime, seen: Seen):
        url = make_url(database_url)
        self.database = url.database or ""
        self.db_dsn = to_asyncpg_dsn(url.render_as_string(hide_password=False))
        self.server_dsn = to_asyncpg_dsn(
            make_url(server_url).set(database="postgres").render_as_string(hide_password=False)
        )
        self.engine = runtime.engine
        self.seen = seen
        self.mine: set[int] = set()  # backends of the test's own on the service's database
        self.figures: dict[str, dict[str, Any]] = {}
        self.admin: asyncpg.Connection | None = None

    async def __aenter__(self) -> Faults:
        self.admin = await asyncpg.connect(self.server_dsn)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.admin is not None
        with contextlib.suppress(Exception):  # whatever a failed test left behind
            await self.admin.execute(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS true')
            await self.admin.execute(f'ALTER DATABASE "{self.database}" RESET lock_timeout')
        await self.admin.close()

    async def terminate(self) -> int:
        """pg_terminate_backend of every backend of the service's database but the test's."""
        assert self.admin is not None
        return int(
            await self.admin.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = $1 AND backend_type = 'client backend' "
                "AND pid <> ALL($2::int[])",
                self.database,
                list(self.mine),
            )
        )

    async def service_backends(self) -> int:
        assert self.admin is not None
        return int(
            await self.admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
                "AND backend_type = 'client backend' AND pid <> ALL($2::int[])",
                self.database,
                list(self.mine),
            )
        )

    async def diagnose(self) -> str:
        """Where the service stands, for a test that waited in vain."""
        assert self.admin is not None
        rows = await self.admin.fetch(
            "SELECT pid, state, wait_event_type, wait_event, xact_start, left(query, 120) AS q "
            "FROM pg_stat_activity WHERE datname = $1",
            self.database,
        )
        lines = [f"pool: {self.engine.pool.status()}", "backends:"]
        lines += [f"  {dict(r)}" for r in rows]
        lines.append(f"readings: {dict(self.seen.readings)}")
        for task in asyncio.all_tasks():
            if "kafka" in task.get_name() or "consumer" in repr(task.get_coro()).lower():
                out = io.StringIO()
                task.print_stack(file=out)
                lines.append(f"task {task.get_name()}:\n{out.getvalue()}")
        return "\n".join(lines)

    async def inject(
        self,
        name: str,
        publish: Callable[[list[Any]], Awaitable[Any]] | None = None,
        events: Sequence[Any] = (),
    ) -> None:
        """Hold the fault `name` for HOLD seconds, and until the consumer met what it must:
        once it is in place, `events` go out, a slice at a time until the consumer meets it (it
        may sleep through a fault, its pause doubling up to 5 s, or slip between two cuts),
        then the rest."""
        stats: Counter[str] = Counter()
        self.seen.fault = name
        started = time.monotonic()
        state = SIGNATURES.get(name)
        left = list(events)
        slice_ = max(len(left) // 8, 1)
        async with getattr(self, name)(stats):
            while True:
                met = self.seen.consumer_met(name, state)
                elapsed = time.monotonic() - started
                if elapsed >= HOLD and (met or not events or elapsed >= HOLD + 20):
                    break
                if left and publish is not None:
                    now, left = (left, []) if met else (left[:slice_], left[slice_:])
                    await publish(now)
                    stats["events_published"] += len(now)
                await asyncio.sleep(0.25 if left else 0.1)
            if left and publish is not None:
                await publish(left)
                stats["events_published"] += len(left)
            if events and not self.seen.consumer_met(name, state):
                stats["diagnosis"] = await self.diagnose()  # type: ignore[assignment]
        self.seen.fault = "between the faults"
        self.figures[name] = {"seconds": round(time.monotonic() - started, 1), **stats}

    @contextlib.asynccontextmanager
    async def _keep(
        self, work: Callable[[], Awaitable[Any]], every: float, now: bool = True
    ) -> AsyncIterator[None]:
        """Run `work` (now, if `now`), then every `every` seconds while the block runs. It is
        never cancelled half-way (a connection half made, a lock half taken): at the end of the
        block it finishes the round it is in, and stops."""
        if now:
            await work()
        stopping = asyncio.Event()

        async def loop() -> None:
            while not stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), every)
                if not stopping.is_set():
                    await work()

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            stopping.set()
            await task

    @contextlib.asynccontextmanager
    async def refuse(self, stats: Counter[str]) -> AsyncIterator[None]:
        assert self.admin is not None
        await self.admin.execute(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS false')
        try:

            async def terminate() -> None:
                stats["backends_terminated"] += await self.terminate()

            async with self._keep(terminate, 0.5):
                yield
        finally:
            await self.admin.execute(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS true')

    @contextlib.asynccontextmanager
    async def cut(self, stats: Counter[str]) -> AsyncIterator[None]:
        async def terminate() -> None:
            stats["backends_terminated"] += await self.terminate()

        async with self._keep(terminate, 0.1):
            yield

    @contextlib.asynccontextmanager
    async def pool(self, stats: Counter[str]) -> AsyncIterator[None]:
        held: list[Any] = []

        async def grab() -> None:
            try:
                held.append(await self.engine.connect())
                stats["pool_connections_held"] = len(held)
            except PoolTimeout:
                stats["own_pool_timeouts"] += 1  # all ours, or in use: try again

        for _ in range(60):  # the pool runs dry: every connection ours or busy
            await grab()
            if stats["own_pool_timeouts"]:
                break
        try:
            async with self._keep(grab, 0.0, now=False):
                yield
        finally:
            for conn in held:
                with contextlib.suppress(Exception):
                    await conn.close()

    @contextlib.asynccontextmanager
    async def slots(self, stats: Counter[str]) -> AsyncIterator[None]:
        fillers: list[asyncpg.Connection] = []

        async def fill() -> None:
            while True:
                try:
                    fillers.append(await asyncpg.connect(self.server_dsn, timeout=10))
                except asyncpg.TooManyConnectionsError:
                    stats["slots_taken"] = max(stats["slots_taken"], len(fillers))
                    return

        async def keep_full() -> None:
            if await self.service_backends():
                stats["backends_terminated"] += await self.terminate()
            await fill()

        try:
            await fill()  # every slot but the service's, then theirs as they go
            stats["backends_terminated"] += await self.terminate()
            await fill()
            async with self._keep(keep_full, 0.1):
                yield
        finally:
            await asyncio.gather(*(c.close() for c in fillers), return_exceptions=True)

    async def _locker(self, **settings: str) -> tuple[asyncpg.Connection, str]:
        conn = await asyncpg.connect(self.db_dsn, server_settings=settings or None)
        self.mine.add(conn.get_server_pid())
        names = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> ALL($1::text[]) ORDER BY tablename",
            list(UNLOCKED),
        )
        return conn, ", ".join(f'"{r[0]}"' for r in names)

    @contextlib.asynccontextmanager
    async def deadlock(self, stats: Counter[str]) -> AsyncIterator[None]:
        conn, tables = await self._locker()
        waiter = (
            "SELECT l.pid FROM pg_locks l WHERE l.locktype = 'relation' "
            "AND l.relation = 'processed_events'::regclass AND l.mode = 'RowExclusiveLock' "
            "AND l.granted AND l.pid <> pg_backend_pid() "
            "AND pg_backend_pid() = ANY(pg_blocking_pids(l.pid)) LIMIT 1"
        )
        tx = conn.transaction()

        async def lock() -> None:
            nonlocal tx
            while True:
                tx = conn.transaction()
                await tx.start()
                try:
                    await conn.execute(f"LOCK TABLE {tables} IN EXCLUSIVE MODE")
                    return
                except asyncpg.DeadlockDetectedError:  # the consumer held one of them
                    stats["cycles_lost_by_the_test"] += 1
                    await tx.rollback()

        async def cycle() -> None:
            """The tables are locked. Once the consumer holds its inbox rows and waits on them,
            ask for its inbox: a cycle, and PostgreSQL aborts the one who waited first, the
            consumer. Then let go, and lock again."""
            try:
                for _ in range(40):
                    if await conn.fetchval(waiter):
                        await conn.execute("LOCK TABLE processed_events IN SHARE MODE")
                        stats["cycles"] += 1
                        break
                    await asyncio.sleep(0.05)
            except asyncpg.DeadlockDetectedError:
                stats["cycles_lost_by_the_test"] += 1
            finally:
                await tx.rollback()
            await asyncio.sleep(0.2)
            await lock()

        try:
            await lock()  # in place before the events go out
            async with self._keep(cycle, 0.0, now=False):
                yield
        finally:
            await conn.close()
            self.mine.discard(conn.get_server_pid())

    @contextlib.asynccontextmanager
    async def lock_timeout(self, stats: Counter[str]) -> AsyncIterator[None]:
        assert self.admin is not None
        db = self.database
        conn, tables = await self._locker(lock_timeout="0")
        await self.admin.execute(f"ALTER DATABASE \"{db}\" SET lock_timeout = '{LOCK_TIMEOUT}'")
        try:
            stats["backends_terminated"] += await self.terminate()  # new sessions carry it
            async with conn.transaction():
                await conn.execute(f"LOCK TABLE {tables} IN EXCLUSIVE MODE")
                yield
        finally:
            await conn.close()
            self.mine.discard(conn.get_server_pid())
            await self.admin.execute(f'ALTER DATABASE "{db}" RESET lock_timeout')
            stats["backends_terminated"] += await self.terminate()


# ---------------------------------------------------------------------------------------------
# A pass under faults
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def small_pool() -> Iterator[None]:
    """Services started in the block get a pool of POOL_SIZE connections that times out after 1 s
    (30 s by default: a test cannot wait that long for each pool timeout)."""
    original = loyalty_shared.service.create_engine

    def engine(url: str, **kwargs: Any) -> AsyncEngine:
        options = {"pool_size": POOL_SIZE, "max_overflow": 0, "pool_timeout": 1.0}
        return create_engine(url, **{**options, **kwargs})

    loyalty_shared.service.create_engine = engine  # type: ignore[assignment]
    try:
        yield
    finally:
        loyalty_shared.service.create_engine = original  # type: ignore[assignment]


async def start_under_faults(
    definition: ServiceDefinition, url: str, bootstrap: str, clock: Clock | None
) -> RunningService:
    _FAULTED.set(True)  # for this task and the service's tasks it starts
    async with _STARTING:
        with small_pool():
            service = await start_service(
                definition,
                database_url=url,
                bootstrap=bootstrap,
                clock=clock,
                consumer_batch_size=100,
            )
    pool = service.runtime.engine.pool
    assert pool.size() == POOL_SIZE, f"the service did not take the small pool: {pool.status()}"
    return service


async def settle(engine: AsyncEngine) -> None:
    """The pool answers again: a connection cut by the last fault fails once, and SQLAlchemy then
    discards every connection made before it."""
    good = 0
    for _attempt in range(100):
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            good += 1
            if good == POOL_SIZE:
                return
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            good = 0
            await asyncio.sleep(0.1)
    raise AssertionError("the database does not answer after the faults")


def pieces(items: Sequence[Any], n: int) -> list[list[Any]]:
    size = max(math.ceil(len(items) / n), 1)
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


async def drive(
    faults: Faults,
    poller: Poller,
    phases: list[list[Any]],
    publish: Callable[[list[Any]], Coroutine[Any, Any, Any]],
    consumed: Callable[[], Awaitable[bool]],
    between: Callable[[int], Awaitable[None]] | None = None,
) -> None:
    """Each phase in pieces, as many pieces as faults: half a piece goes out, a fault begins,
    the other half goes out under it, the fault ends and the consumer catches up; the faults
    in FAULTS order. A phase is consumed before the next goes out (it may name what the last
    one made)."""
    stop = asyncio.Event()
    polling = asyncio.create_task(poller.run(stop))
    # No waiting for the consumer to join its group (seconds on the embedded broker): the first
    # fault lasts until it has joined and met it.
    names = iter(FAULTS)

    async def caught_up(what: str) -> None:
        try:
            await until(consumed, what, 240, 0.05)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{await faults.diagnose()}") from None

    try:
        for phase, items in enumerate(phases):
            if phase > 0:
                await caught_up(f"phase {phase - 1} consumed")
                if between is not None:
                    await between(phase)
            for piece in pieces(items, math.ceil(len(FAULTS) / len(phases))):
                middle = len(piece) // 2
                if middle:
                    await publish(piece[:middle])
                name = next(names, None)
                if name is None:
                    await publish(piece[middle:])
                else:
                    await faults.inject(name, publish, piece[middle:])
                    # Caught up before the next fault: it meets a consumer that has just
                    # succeeded (its pause back at its shortest), not one still waiting out
                    # this one.
                    ended = time.monotonic()
                    await caught_up(f"the consumer to catch up after {name}")
                    faults.figures[name]["caught_up_after_s"] = round(time.monotonic() - ended, 1)
        for name in names:  # a stream too small for a piece per fault
            await faults.inject(name)
        await caught_up("the stream consumed after the faults")
    finally:
        stop.set()
        await polling


def check_faults(seen: Seen, faults: Faults, poller: Poller) -> dict[str, Any]:
    """Every fault reached the consumer; nothing was read as the events' or requests' fault;
    no answer broke the contract. Answers the figures."""
    problems = list(poller.problems) + [f"let out of the app: {e}" for e in poller.escaped]
    problems += seen.not_outages()
    for name in FAULTS:
        published = faults.figures.get(name, {}).get("events_published")
        met = seen.consumer_met(name, SIGNATURES.get(name))
        if published and not met and name == "cut" and seen.readings.get(name):
            # Cuts come every 0.1 s; a consumer whose transactions are short (or that waited
            # in a fetch the whole time) can slip between all of them. The fault was real (the
            # HTTP side met it) and everything else is still checked: say so, do not fail.
            faults.figures[name]["consumer_met"] = False
            continue
        if published and not met:
            problems.append(
                f"{name}: the consumer never met it ({dict(seen.readings.get(name, {}))})\n"
                + str(faults.figures.get(name, {}).get("diagnosis"))
            )
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:30])
    return {
        "faults": faults.figures,
        "met": {fault: dict(readings) for fault, readings in seen.readings.items()},
        "http": dict(sorted(poller.statuses.items())),
        "http_by_fault": {f: dict(c) for f, c in poller.by_fault.items()},
        "writes": len(poller.answers),
        "longest_write_wait_s": round(poller.longest_wait, 1),
        "errors": dict(sorted(seen.examples.items())),
    }


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clean_databases() -> Iterator[DatabaseFactory]:
    """A PostgreSQL server of the clean passes' own: the faults (server slots) never reach it."""
    cluster = EmbeddedCluster(
        Path(tempfile.mkdtemp(prefix="loyalty-faults-clean-")) / "pg", delete_on_exit=True
    )
    try:
        yield DatabaseFactory(cluster.url("postgres"), [])
    finally:
        cluster.stop()


async def test_points_under_database_faults_equals_the_oracle(
    databases: DatabaseFactory, pg_server_url: str, seen: Seen
):
    started = time.monotonic()
    stream = generate(SEED + 31, MEMBERS)
    expected = expected_accounts(stream.facts)
    probe = next(f.member_id for f in stream.facts if f.kind == "signup")  # the first known
    with EmbeddedBroker(free_port()) as broker:
        publisher = FactPublisher(broker.bootstrap)
        await publisher.ensure_topics()
        url = await databases.fresh("chaos_faults_points")
        points = await start_under_faults(
            loyalty_points.bootstrap.definition(), url, broker.bootstrap, None
        )
        poller = Poller(
            points.app,
            Probe(
                reads=[f"/v1/accounts/{probe}", f"/v1/accounts/{probe}/ledger"],
                write=lambda n: (
                    f"/v1/stored-value/{probe}/top-ups",
                    {"external_id": f"chaos-fault-{n}", "amount_minor": 1000 + n},
                ),
                final=frozenset({201}),
                # top-ups need a member the points service knows: its signup bonus is in
                ready=lambda r: r.status_code == 200 and r.json().get("lifetime_earned", 0) > 0,
            ),
            seen,
        )
        try:

            async def consumed() -> bool:
                return await points_consumed(broker.bootstrap, publisher.ends)

            async with Faults(pg_server_url, url, points.runtime, seen) as faults:
                await drive(faults, poller, [stream.facts], publisher.publish, consumed)
            await settle(points.runtime.engine)
            async with points.runtime.engine.connect() as conn:
                report = await check_points(conn, expected, handled_ids(stream.facts))
                top_ups = await conn.scalar(
                    text("SELECT count(*) FROM top_ups WHERE member_id = :m"), {"m": probe}
                )
            report.assert_ok()
            assert await dead_letters(broker.bootstrap) == 0
            # Every top-up took effect once: as many as answered, the balance their sum.
            balance = (await points.client.get(f"/v1/stored-value/{probe}")).json()
            answers = [body for _, body in poller.answers]
            assert answers and top_ups == len(answers) == len({a["top_up_id"] for a in answers})
            assert balance["balance_minor"] == sum(
                a["amount_minor"] + a.get("bonus_minor", 0) for a in answers
            ), (balance, answers)
            figures = check_faults(seen, faults, poller)
        finally:
            await poller.client.aclose()
            await points.stop()
    record_figures(
        "database faults: points against the oracle",
        {
            "members": len(stream.members),
            "events": len(stream.facts),
            "accounts": report.accounts,
            "entries": report.entries,
            **figures,
            "seconds": round(time.monotonic() - started, 1),
        },
    )


def probe_of(service: str, key: str, member_id: str) -> Probe:
    """The poller's questions to a service: a read of a member, and a write under a key."""
    if service == "member":
        return Probe(
            reads=[f"/v1/members/{member_id}/tier"],
            write=lambda n: (
                "/v1/card-plans",
                {"code": f"chaos-fault-{n}", "name": f"Fault {n}", "kind": "free"},
            ),
            final=frozenset({201}),
        )
    if service == "coupon":
        return Probe(
            reads=[f"/v1/members/{key}/coupons"],
            write=lambda n: (
                "/v1/validations",
                {"member_id": key, "total_minor": 5000 + n, "coupon_codes": ["CHAOS-NONE"]},
            ),
        )
    if service == "notifier":
        return Probe(
            reads=[f"/v1/members/{key}/inbox"],
            write=lambda n: (f"/v1/members/{key}/inbox/chaos-none-{n}/read", None),
            final=frozenset({404}),  # no such message: it still asks the database
        )
    assert service == "segmenter"
    return Probe(
        reads=[f"/v1/profiles/{key}", "/v1/segments/big/members?limit=5"],
        write=lambda n: ("/v1/segments:preview", {"rule": SEGMENTS_DEFINED[n % 3][1]}),
    )


async def under_faults(
    consumer: Consumer, databases: DatabaseFactory, server_url: str, stream: Any, seen: Seen
) -> dict[str, Any]:
    """The clean delivery of the stream, in pieces under the faults; what the service holds
    after, as `replay` answers it, and the figures of the faults."""
    started = time.monotonic()
    with EmbeddedBroker(free_port()) as broker:
        url = await databases.fresh(f"chaos_faults_{consumer.name}")
        service = await start_under_faults(
            consumer.definition(), url, broker.bootstrap, FixedClock(BASE)
        )
        poller: Poller | None = None
        try:
            ctx = await consumer.setup(service.client, stream)
            publisher = Publisher(broker.bootstrap, consumer.rewrite(ctx))
            await publisher.ensure_topics(consumer.topics())
            key = stream.members[0]
            poller = Poller(
                service.app, probe_of(consumer.name, key, ctx.members.get(key, key)), seen
            )
            items = clean(stream).facts
            phases = [[i for i in items if i.phase == p] for p in sorted({i.phase for i in items})]

            async def consumed() -> bool:
                return await consumed_everything(
                    broker.bootstrap, consumer.group, consumer.consumes, publisher.ends
                )

            async def between(phase: int) -> None:
                await settle(service.runtime.engine)
                async with service.runtime.engine.connect() as conn:
                    await consumer.between_phases(conn, ctx, stream)

            async with Faults(server_url, url, service.runtime, seen) as faults:
                await drive(faults, poller, phases, publisher.publish, consumed, between)
            await settle(service.runtime.engine)
            await consumer.finish(service.client, stream)
            async with service.runtime.engine.connect() as conn:
                observed = await observe(consumer, conn, ctx)
                if consumer.name == "member":  # the poller's card plans, each made once
                    plans = list(
                        await conn.scalars(
                            text("SELECT code FROM card_plans WHERE code LIKE 'chaos-fault-%'")
                        )
                    )
            if consumer.name == "member":
                answered = [body["code"] for _, body in poller.answers]
                assert sorted(plans) == sorted(answered) and len(set(plans)) == len(plans)
            observed["sample"] = await consumer.sample(service.client, ctx, stream)
            dead = await read_all(broker.bootstrap, [t for t in consumer.topics() if ".dlq." in t])
            observed["faults"] = check_faults(seen, faults, poller)
        finally:
            if poller is not None:
                await poller.client.aclose()
            await service.stop()
    observed["dead"] = Counter(decode_event(r.value).type for r in dead)
    observed["published"] = publisher.sent
    observed["seconds"] = round(time.monotonic() - started, 1)
    return observed


@pytest.mark.parametrize("service", list(CONSUMERS))
async def test_under_database_faults_equals_a_clean_single_pass(
    service: str,
    databases: DatabaseFactory,
    clean_databases: DatabaseFactory,
    pg_server_url: str,
    seen: Seen,
):
    consumer = CONSUMERS[service]()
    stream = consumer.generate(SEED + 31, MEMBERS, BASE)
    once = clean(stream)
    async with asyncio.TaskGroup() as group:
        clean_pass = group.create_task(
            replay(consumer, clean_databases, stream, once, batch_size=1000)
        )
        faulted = group.create_task(under_faults(consumer, databases, pg_server_url, stream, seen))
    first, second = clean_pass.result(), faulted.result()
    for name, got in (("clean pass", first), ("under faults", second)):
        assert not got["dead"], f"{name}: dead-lettered {dict(got['dead'])}"
        problems = verify(consumer, stream, once.facts, got, BASE)  # type: ignore[arg-type]
        assert not problems, f"{name}: {len(problems)} problems:\n" + "\n".join(problems[:25])
    differences = diff(first["state"], second["state"])
    assert not differences, "the state under faults differs from the clean pass's:\n" + (
        "\n".join(differences)
    )
    assert second["outbox"] == first["outbox"], (
        f"outbox facts: {dict(second['outbox'])} under faults, {dict(first['outbox'])} "
        "after the clean pass"
    )
    assert second["sample"] == first["sample"], diff(first["sample"], second["sample"])
    record_figures(
        f"database faults: {service} against a clean pass",
        {
            "members": len(stream.members),
            "events": len(stream.items),
            "outbox": dict(second["outbox_all"]),
            **second["faults"],
            "seconds_clean": first["seconds"],
            "seconds": second["seconds"],
        },
    )
