"""A service as a real process (`python -m loyalty_<service> serve`, as `make run` starts it),
SIGKILLed and started again by the crash tests, the moments they aim their kills at, and a
broker behind a gate that can hold back offset commits (to kill between the database commit
and the offset commit for certain).

Shared by test_crashes.py (the points service) and test_consumer_crashes.py (member, coupon,
notifier, segmenter).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import asyncpg
import httpx
import orjson
from loyalty_shared.kafka.broker import CLIENT_ENV, free_port
from loyalty_shared.settings import ALL_SCOPES, SERVICE_PORT_OFFSETS
from loyalty_shared.testing import BrokerProxy, ProxiedBroker

from .stream import CONSUMED, GROUP, committed_offsets, read_all

MODES = ("mid-batch", "relay", "after-db-commit", "random")
API_KEY = "chaos-key"


class ServiceProcess:
    """`python -m loyalty_<service> serve` with its own database, broker, port and settings."""

    def __init__(
        self,
        service: str,
        database_url: str,
        bootstrap: str,
        log_dir: Path,
        *,
        api_keys: str = f"{API_KEY}={','.join(ALL_SCOPES)}",
        env: dict[str, str] | None = None,
    ) -> None:
        self.service = service
        self.port = free_port()
        self.log_dir = log_dir
        self.env = {
            **os.environ,
            f"{service.upper()}_DATABASE_URL": database_url,
            "LOYALTY_KAFKA_BOOTSTRAP": bootstrap,
            # the service listens on base + its offset
            "LOYALTY_PORT_BASE": str(self.port - SERVICE_PORT_OFFSETS[service]),
            "LOYALTY_API_KEYS": api_keys,
            "LOYALTY_DATA_DIR": str(log_dir),
            # small batches: many transactions to land in, many relay rounds
            "LOYALTY_CONSUMER_BATCH_SIZE": "50",
            "LOYALTY_OUTBOX_BATCH_SIZE": "20",
            "LOYALTY_SCHEDULER_ENABLED": "false",
            "LOYALTY_LOG_LEVEL": "WARNING",
            # the embedded broker's client settings: no idempotent producers, a short fetch wait
            **CLIENT_ENV,
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.service}-{self.starts}.log"

    def client(self) -> httpx.AsyncClient:
        """A client of the running process with the all-scopes key."""
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
        )

    def start(self) -> None:
        self.starts += 1
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"loyalty_{self.service}", "serve"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    async def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise AssertionError(
                        f"{self.service} exited {self.process.returncode}:\n{self.log_tail()}"
                    )
                try:
                    response = await client.get(f"{self.url}/healthz")
                    if response.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"{self.service} not healthy after {timeout}s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        assert self.process is not None
        assert self.alive(), f"{self.service} died by itself:\n{self.log_tail()}"
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class PointsProcess(ServiceProcess):
    """`python -m loyalty_points serve` as `make run` starts it, with its own settings."""

    def __init__(self, database_url: str, bootstrap: str, log_dir: Path) -> None:
        super().__init__(
            "points",
            database_url,
            bootstrap,
            log_dir,
            api_keys="chaos-key=admin,members:read,points:write,events:write",
        )


_IN_CONSUMER_TRANSACTION = """
    SELECT count(*) FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid() AND xact_start IS NOT NULL
      AND state IN ('active', 'idle in transaction')
      AND query NOT ILIKE '%outbox%' AND query NOT ILIKE '%advisory%'
"""

_OUTBOX_STATE = (
    "SELECT count(*) FILTER (WHERE sent_at IS NULL), count(*) FILTER (WHERE sent_at IS NOT NULL) "
    "FROM outbox"
)


async def wait_for_moment(
    db: asyncpg.Connection, mode: str, rng: random.Random, timeout: float = 45
) -> bool:
    """Wait for the moment a kill of this mode aims at; False if it did not come in time."""
    if mode == "random":
        await asyncio.sleep(rng.uniform(0.0, 0.5))
        return True
    start = await db.fetchval("SELECT count(*) FROM processed_events")
    sent_before = (await db.fetchrow(_OUTBOX_STATE))[1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if mode == "mid-batch":
            if await db.fetchval(_IN_CONSUMER_TRANSACTION):
                return True
        elif mode == "after-db-commit":
            if await db.fetchval("SELECT count(*) FROM processed_events") > start:
                return True  # a batch just committed; its offset commit is on its way
        elif mode == "relay":  # some rows went out since we started waiting, some wait
            unsent, sent = await db.fetchrow(_OUTBOX_STATE)
            if unsent and sent > sent_before:
                return True
        await asyncio.sleep(0)
    return False


OFFSET_COMMIT = 8  # the Kafka protocol's api key of OffsetCommit


class CommitGate(BrokerProxy):
    """A proxy in front of a broker that advertises the proxy's address, so that every client
    talks to the broker through it; it can hold back OffsetCommit requests.

    Armed, it forwards every request but OffsetCommit, which it drops: a consumer that has just
    committed a batch to its database then waits for an offset commit that will never land.
    That is the moment between the two commits, caught exactly."""

    name = "commit-gate"

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.holding = False
        self.held = threading.Event()

    def hold(self) -> None:
        self.held.clear()
        self.holding = True

    def release(self) -> None:
        """Stop holding; what was held stays dropped (its sender is dead by now)."""
        self.holding = False

    async def wait_held(self, timeout: float) -> bool:
        return await asyncio.to_thread(self.held.wait, timeout)

    async def forward_requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            head = await reader.readexactly(4)
            body = await reader.readexactly(int.from_bytes(head, "big", signed=True))
            if self.holding and int.from_bytes(body[:2], "big", signed=True) == OFFSET_COMMIT:
                self.held.set()
                continue
            writer.write(head + body)
            await writer.drain()


class GatedBroker(ProxiedBroker):
    """The embedded broker behind a CommitGate: clients bootstrap to the gate, and the broker
    advertises the gate as its address."""

    def __init__(self) -> None:
        super().__init__(CommitGate(free_port()))

    @property
    def gate(self) -> CommitGate:
        assert isinstance(self.proxy, CommitGate)
        return self.proxy


async def kill_at_moment(
    process: ServiceProcess,
    db: asyncpg.Connection,
    mode: str,
    rng: random.Random,
    gate: CommitGate | None = None,
    timeout: float = 45,
) -> bool:
    """SIGKILL the process at the moment a kill of this mode aims at (any moment if it does not
    come in time); answer whether the moment was seen.

    With the gate of the broker, `after-db-commit` is exact: the gate holds back the offset
    commits, and the kill comes as soon as one is held, after its batch's database commit."""
    if mode != "after-db-commit" or gate is None:
        hit = await wait_for_moment(db, mode, rng, timeout)
        process.kill()
        return hit
    gate.hold()
    try:
        hit = await gate.wait_held(timeout)
        process.kill()
    finally:
        gate.release()
    return hit


async def applied_but_not_committed(
    db: asyncpg.Connection,
    bootstrap: str,
    group: str = GROUP,
    topics: Iterable[str] = CONSUMED,
) -> int:
    """Records past the group's committed offsets whose events the database already holds:
    a crash between the database commit and the offset commit; they will come again."""
    topics = list(topics)
    records = await read_all(bootstrap, topics, await committed_offsets(bootstrap, group, topics))
    if not records:
        return 0
    ids = [orjson.loads(r.value)["id"] for r in records]
    return int(
        await db.fetchval(
            "SELECT count(*) FROM processed_events WHERE event_id = ANY($1::text[])", ids
        )
    )
