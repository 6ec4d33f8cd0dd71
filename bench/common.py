"""What the scenarios share: stopwatches, CPU accounting per process, percentiles, an open-loop
HTTP load generator, the platform as real processes, and set-based seeding helpers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import psutil
from loyalty_shared.db import to_asyncpg_dsn
from loyalty_shared.events import make_event
from loyalty_shared.events.orders import OrderPaid
from loyalty_shared.kafka.broker import use_client_settings

# Every benchmark runs against the embedded broker: its clients' settings (no idempotent
# producers, a short fetch wait) for this process and what it starts, unless the environment says.
use_client_settings()

T0 = datetime(2026, 3, 2, 4, 0, tzinfo=UTC)  # the business time of the generated events


def bench_member_id(index: int) -> str:
    """The id of the index-th generated member (seeding SQL spells it 'bm' || lpad(g, 7, '0'))."""
    return f"bm{index:07d}"


def paid_order(
    order_id: str, member_id: str, seq: int, paid_order_count: int, channel: str = "pos"
) -> tuple[bytes, bytes]:
    """A generated `order.paid` of 129.00 CNY, `seq` seconds after T0: (key, value)."""
    event = make_event(
        "order.paid",
        OrderPaid(
            order_id=order_id,
            channel=channel,
            external_id=order_id,
            member_id=member_id,
            occurred_at=T0 + timedelta(seconds=seq),
            total_minor=12900,
            paid_minor=12900,
            member_tier="bronze",
            paid_order_count=paid_order_count,
        ),
        subject=member_id,
        source="bench",
        time=T0,
    )
    return member_id.encode(), event.encode()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Stopwatch:
    def __enter__(self) -> Stopwatch:
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = cpu_seconds() - self.cpu


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def summary_ms(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "count": len(ms),
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else float("nan"),
    }


# ---------------------------------------------------------------------------------------------
# CPU of other processes (the services, PostgreSQL and its backends, the broker)
# ---------------------------------------------------------------------------------------------


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its live descendants and its reaped children."""
    try:
        root = psutil.Process(pid)
        times = root.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in root.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                t = child.cpu_times()
                total += t.user + t.system
        return total
    except psutil.Error:
        return 0.0


@dataclass
class CpuMeter:
    """CPU seconds spent by named process trees between start() and stop()."""

    pids: dict[str, int]
    before: dict[str, float] = field(default_factory=dict)
    spent: dict[str, float] = field(default_factory=dict)

    def start(self) -> CpuMeter:
        self.before = {name: _tree_cpu(pid) for name, pid in self.pids.items()}
        self.before["harness"] = cpu_seconds()
        return self

    def stop(self) -> dict[str, float]:
        self.spent = {name: _tree_cpu(pid) - self.before[name] for name, pid in self.pids.items()}
        self.spent["harness"] = cpu_seconds() - self.before["harness"]
        self.spent["total"] = sum(self.spent.values())
        return self.spent


def per_1000(spent: dict[str, float], events: int) -> dict[str, float]:
    return {name: round(s / max(events, 1) * 1000, 4) for name, s in spent.items()}


# ---------------------------------------------------------------------------------------------
# An open-loop HTTP/1.1 load generator: requests leave at their scheduled time whatever the
# answers do; latency counts from the scheduled time, so a slow server cannot hide its queue
# by slowing the generator down (no coordinated omission). A minimal keep-alive client on
# asyncio streams: httpx costs ~10x more CPU per request, CPU this 2-core machine needs for
# the services.
# ---------------------------------------------------------------------------------------------


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.last_used = time.monotonic()

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            body = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                body += await self.reader.readexactly(size + 2)
                if size == 0:
                    break
            return status, body
        return status, await self.reader.readexactly(length) if length else b""

    def close(self) -> None:
        self.writer.close()


class HttpPool:
    """Keep-alive connections to one host:port, opened on demand up to `limit`."""

    def __init__(self, host: str, port: int, api_key: str, limit: int = 512) -> None:
        self.host, self.port, self.limit = host, port, limit
        self.auth = f"Authorization: Bearer {api_key}\r\n".encode()
        self.idle: list[_Connection] = []
        self.open = 0
        self.waiters: asyncio.Queue[_Connection] = asyncio.Queue()
        self.peak = 0

    def encode(self, method: str, path: str, body: Any = None) -> bytes:
        payload = orjson.dumps(body) if body is not None else b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        ).encode()
        return head + self.auth + b"\r\n" + payload

    async def _acquire(self) -> _Connection:
        while self.idle:
            conn = self.idle.pop()
            if time.monotonic() - conn.last_used < 3.0:
                return conn
            conn.close()  # the server closes keep-alive connections idle for 5 s
            self.open -= 1
        if self.open < self.limit:
            self.open += 1
            self.peak = max(self.peak, self.open)
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except BaseException:
                self.open -= 1
                raise
            return _Connection(reader, writer)
        return await self.waiters.get()

    def _release(self, conn: _Connection) -> None:
        conn.last_used = time.monotonic()
        # hand the connection to a waiting request first, else keep it idle
        if self.waiters._getters:  # type: ignore[attr-defined]
            self.waiters.put_nowait(conn)
        else:
            self.idle.append(conn)

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        conn = await self._acquire()
        try:
            result = await conn.request(raw)
        except BaseException:
            conn.close()
            self.open -= 1
            raise
        self._release(conn)
        return result

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, raw = await self.send(self.encode(method, path, body))
        return status, orjson.loads(raw) if raw else None

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


@dataclass
class Outcome:
    index: int
    scheduled: float  # perf_counter
    sent: float
    done: float
    status: int  # 0: no answer (connection error)
    body: bytes


async def open_loop(
    pool: HttpPool,
    rate: float,
    duration: float,
    make_request: Callable[[int], bytes],
) -> tuple[list[Outcome], float]:
    """Send request i at start + i / rate for `duration` seconds; answer every outcome and the
    wall time from the first scheduled send to the last answer."""
    total = int(rate * duration)
    outcomes: list[Outcome] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int, scheduled: float) -> None:
        raw = make_request(i)
        sent = time.perf_counter()
        try:
            status, body = await pool.send(raw)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            status, body = 0, repr(exc).encode()
        outcomes.append(Outcome(i, scheduled, sent, time.perf_counter(), status, body))

    start = time.perf_counter() + 0.05
    i = 0
    while i < total:
        now = time.perf_counter()
        due = min(total, int((now - start) * rate) + 1)
        while i < due:
            task = asyncio.create_task(one(i, start + i / rate))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        next_at = start + i / rate
        await asyncio.sleep(max(0.0, min(next_at - time.perf_counter(), 0.01)))
    while tasks:
        await asyncio.gather(*list(tasks))
    return outcomes, time.perf_counter() - start


async def closed_loop(jobs: list[Callable[[], Awaitable[Any]]], concurrency: int = 16) -> list[Any]:
    """Run setup calls with bounded concurrency (setup only, never measured)."""
    semaphore = asyncio.Semaphore(concurrency)

    async def run(job: Callable[[], Awaitable[Any]]) -> Any:
        async with semaphore:
            return await job()

    return await asyncio.gather(*(run(job) for job in jobs))


# ---------------------------------------------------------------------------------------------
# The platform as `make run` starts it: embedded PostgreSQL, the broker, the five services as
# processes, on a temp LOYALTY_DATA_DIR and free ports.
# ---------------------------------------------------------------------------------------------

FIVE = ["member", "points", "coupon", "notifier", "segmenter"]
API_KEY = "dev-key"


def _free_port_base() -> int:
    """A base whose next 7 ports are free, below the kernel's ephemeral range (ports there are
    taken at any moment by outgoing connections: the services' own clients among them)."""
    import random

    from loyalty_shared.kafka.broker import port_open

    for _ in range(200):
        base = random.randrange(20_000, 32_000, 10)
        if not any(port_open("127.0.0.1", base + k) for k in range(1, 8)):
            return base
    raise RuntimeError("no run of 7 free ports found")


def _five_services_stack(settings: Any) -> Any:
    """devstack.Stack, starting the five services only: the console (which `make run` starts
    after them) serves people, and nothing measured here goes through it."""
    import subprocess

    from loyalty_shared import devstack
    from loyalty_shared.db import EmbeddedCluster, database_name, ensure_database
    from loyalty_shared.kafka.broker import EmbeddedBroker, client_env
    from loyalty_shared.settings import DEV_API_KEYS

    class FiveServices(devstack.Stack):
        def start(self) -> None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.cluster = EmbeddedCluster(self.data_dir / "pg")
            self.broker = EmbeddedBroker(
                self.settings.kafka_port, log_path=self.data_dir / "broker.log"
            ).start()
            for name in FIVE:
                env = {
                    **client_env(),  # the embedded broker's client settings
                    f"{name.upper()}_DATABASE_URL": self.cluster.url(database_name(name)),
                    "LOYALTY_KAFKA_BOOTSTRAP": self.broker.bootstrap,
                    "LOYALTY_API_KEYS": DEV_API_KEYS,
                    "LOYALTY_DATA_DIR": str(self.data_dir),
                    "LOYALTY_PORT_BASE": str(self.settings.port_base),
                }
                url = env[f"{name.upper()}_DATABASE_URL"]
                asyncio.run(ensure_database(url, database_name(name)))
                self.services[name] = subprocess.Popen(
                    [sys.executable, "-m", f"loyalty_{name}", "serve"],
                    env=env,
                    start_new_session=True,
                    stdout=(self.data_dir / f"{name}.log").open("ab"),  # JSON logs
                )
            self._wait_healthy(FIVE)

    return FiveServices(settings)


class Platform:
    """The platform as `make run` starts it, minus the console."""

    def __init__(self) -> None:
        from loyalty_shared.kafka.broker import free_port
        from loyalty_shared.settings import PlatformSettings

        self.data_dir = Path(tempfile.mkdtemp(prefix="loyalty-bench-stack-"))
        self.port_base = _free_port_base()
        self.settings = PlatformSettings(
            data_dir=self.data_dir, port_base=self.port_base, kafka_port=free_port()
        )
        self.stack = _five_services_stack(self.settings)

    def start(self) -> Platform:
        os.environ.setdefault("LOYALTY_LOG_LEVEL", "WARNING")
        started = time.perf_counter()
        try:
            self.stack.start()
        except BaseException:
            for log in sorted(self.data_dir.glob("*.log")):  # say why before the logs go
                tail = log.read_text(errors="replace").splitlines()[-15:]
                print(f"--- {log.name}\n" + "\n".join(tail), file=sys.stderr, flush=True)
            self.stop()
            raise
        self.startup_seconds = time.perf_counter() - started
        return self

    def stop(self) -> None:
        self.stack.stop()
        import shutil

        shutil.rmtree(self.data_dir, ignore_errors=True)

    def port(self, service: str) -> int:
        from loyalty_shared.settings import SERVICE_PORT_OFFSETS

        return self.port_base + SERVICE_PORT_OFFSETS[service]

    def pool(self, service: str, limit: int = 512) -> HttpPool:
        return HttpPool("127.0.0.1", self.port(service), API_KEY, limit)

    def dsn(self, service: str) -> str:
        from loyalty_shared.db import database_name

        assert self.stack.cluster is not None
        return to_asyncpg_dsn(self.stack.cluster.url(database_name(service)))

    def pids(self) -> dict[str, int]:
        pids = {name: proc.pid for name, proc in self.stack.services.items()}
        if self.stack.cluster is not None and self.stack.cluster.pid:
            pids["postgres"] = self.stack.cluster.pid
        if self.stack.broker is not None:
            proc = getattr(self.stack.broker, "process", None) or getattr(
                self.stack.broker, "_process", None
            )
            if proc is not None:
                pids["broker"] = proc.pid
        return pids

    async def wait_processed(
        self, service: str, event_type: str, count: int, timeout: float
    ) -> tuple[int, float]:
        """Wait until the service's inbox holds `count` events of a type; answer (count held,
        seconds waited)."""
        conn = await asyncpg.connect(self.dsn(service))
        started = time.perf_counter()
        try:
            while True:
                held = await conn.fetchval(
                    "SELECT count(DISTINCT event_id) FROM processed_events WHERE type = $1",
                    event_type,
                )
                if held >= count or time.perf_counter() - started > timeout:
                    return held, time.perf_counter() - started
                await asyncio.sleep(0.25)
        finally:
            await conn.close()


@contextlib.contextmanager
def platform_running() -> Iterator[Platform]:
    platform = Platform()
    try:
        platform.start()
        yield platform
    finally:
        platform.stop()


# ---------------------------------------------------------------------------------------------
# Set-based seeding: clone rows the service's own code wrote for a template member
# ---------------------------------------------------------------------------------------------


async def columns(conn: asyncpg.Connection, table: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = $1 "
        "AND table_schema = 'public' ORDER BY ordinal_position",
        table,
    )
    return [r["column_name"] for r in rows]


async def clone_rows(
    conn: asyncpg.Connection,
    table: str,
    where: str,
    count: int,
    replace: dict[str, str],
    start: int = 1,
) -> int:
    """INSERT INTO table SELECT ... FROM table, generate_series(start, start + count - 1) g
    WHERE where: every column copied but those in `replace` (SQL expressions over g)."""
    cols = await columns(conn, table)
    select = ", ".join(replace.get(c, f't."{c}"') for c in cols)
    names = ", ".join(f'"{c}"' for c in cols)
    result = await conn.execute(
        f"INSERT INTO {table} ({names}) SELECT {select} FROM {table} t, "
        f"generate_series({start}, {start + count - 1}) g WHERE {where}"
    )
    return int(result.split()[-1])
