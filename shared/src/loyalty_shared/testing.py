"""Pytest plugin: real PostgreSQL and a real Kafka-protocol broker for integration tests.

Backends, chosen by environment:
- default: the embedded PostgreSQL (a cluster in a temp dir) and the embedded tansu broker on a
  free port, both started once per test session;
- `LOYALTY_TEST_DATABASE_URL`: databases are created on that server instead (e.g. the local
  PostgreSQL 15 at postgresql://postgres@127.0.0.1:5432/postgres);
- `LOYALTY_TEST_BACKEND=testcontainers` (machines with Docker): PostgreSQL and Apache Kafka
  containers.
Each service gets a fresh database per session: `loyalty_<service>_<random>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from .clock import Clock
from .db import EmbeddedCluster, drop_database, ensure_database, to_async_url
from .kafka.broker import EmbeddedBroker, client_settings, free_port, use_client_settings
from .service import Runtime, ServiceDefinition, create_app
from .settings import ALL_SCOPES, ServiceSettings

TEST_KEY = "test-key"
READ_ONLY_KEY = "reader-key"
TEST_API_KEYS = f"{TEST_KEY}={','.join(ALL_SCOPES)};{READ_ONLY_KEY}=members:read"
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
READ_ONLY_AUTH = {"Authorization": f"Bearer {READ_ONLY_KEY}"}


def _backend() -> str:
    return os.environ.get("LOYALTY_TEST_BACKEND", "embedded")


def pytest_configure(config: pytest.Config) -> None:
    # Most tests talk to an embedded broker (the session's, or one of their own): every Kafka
    # client of the test process, and the service processes it starts, get its client settings
    # (no idempotent producers, a short fetch wait) unless the environment sets them. They suit
    # a real Kafka too; `LOYALTY_KAFKA_IDEMPOTENT_PRODUCER=true` tests idempotence on one.
    use_client_settings()


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A URL of a PostgreSQL server on which tests may create databases."""
    explicit = os.environ.get("LOYALTY_TEST_DATABASE_URL")
    if explicit:
        yield to_async_url(explicit)
        return
    if _backend() == "testcontainers":
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver="asyncpg") as container:
            yield to_async_url(container.get_connection_url())
        return
    root = Path(tempfile.mkdtemp(prefix="loyalty-test-pg-"))
    cluster = EmbeddedCluster(root / "pg", delete_on_exit=True)
    try:
        yield cluster.url("postgres")
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """The bootstrap address of a broker for the whole test session."""
    if _backend() == "testcontainers":
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as container:
            yield container.get_bootstrap_server()
        return
    with EmbeddedBroker(free_port()) as broker:
        yield broker.bootstrap


@dataclass
class DatabaseFactory:
    server_url: str
    created: list[str]

    async def fresh(self, prefix: str) -> str:
        name = f"{prefix}_{secrets.token_hex(4)}"
        await ensure_database(self.server_url, name)
        self.created.append(name)
        from sqlalchemy.engine import make_url

        return make_url(self.server_url).set(database=name).render_as_string(hide_password=False)


@pytest_asyncio.fixture(scope="session")
async def databases(pg_server_url: str) -> AsyncIterator[DatabaseFactory]:
    factory = DatabaseFactory(pg_server_url, [])
    yield factory
    for name in factory.created:
        try:
            await drop_database(pg_server_url, name)
        except Exception:
            pass


@dataclass
class RunningService:
    """A service started in this process: its app, runtime and an authenticated client."""

    app: Any
    runtime: Runtime
    client: httpx.AsyncClient

    async def stop(self) -> None:
        await self.client.aclose()
        await self.runtime.stop()


async def start_service(
    definition: ServiceDefinition,
    *,
    database_url: str,
    bootstrap: str,
    clock: Clock | None = None,
    background: bool = True,
    **settings: Any,
) -> RunningService:
    service_settings = ServiceSettings.for_service(
        definition.name,
        database_url=database_url,
        kafka_bootstrap=bootstrap,
        api_keys=TEST_API_KEYS,
        data_dir=Path(tempfile.mkdtemp(prefix="loyalty-test-data-")),
        # tests run jobs with as_of, unless told; the embedded broker's client settings (no
        # idempotent producers, a short fetch wait) unless the environment or the caller says
        **{"scheduler_enabled": False, **client_settings(), **settings},
    )
    app = create_app(definition, settings=service_settings, clock=clock, background=background)
    runtime: Runtime = app.state.runtime
    await runtime.start(background=background)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url=f"http://{definition.name}.test",
        headers=AUTH,
    )
    return RunningService(app=app, runtime=runtime, client=client)


def toy_app(*routers: Any) -> Any:
    """An app of the shared plumbing (auth, write guard, problems, OpenAPI) around some routers,
    with no database: for tests of what the plumbing answers, used without its lifespan."""
    definition = ServiceDefinition(
        name="toy", title="Toy", migrations=Path("unused"), routers=list(routers)
    )
    settings = ServiceSettings.for_service(
        "toy", database_url="postgresql://unused/unused", api_keys=TEST_API_KEYS
    )
    return create_app(definition, settings=settings, background=False)


def toy_client(app: Any) -> httpx.AsyncClient:
    """An authenticated client of a `toy_app` (no lifespan: its requests need no database)."""
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://toy", headers=AUTH)


async def outbox_events(
    runtime: Runtime, *, key: str | None = None, event_type: str | None = None
) -> list[dict[str, Any]]:
    """The CloudEvents a service has emitted (its outbox), oldest first, optionally filtered."""
    import orjson
    from sqlalchemy import text

    sql = "SELECT value FROM outbox WHERE (CAST(:key AS text) IS NULL OR key = :key) "
    sql += "AND (CAST(:type AS text) IS NULL OR type = :type) ORDER BY seq"
    async with runtime.engine.connect() as conn:
        rows = await conn.scalars(text(sql), {"key": key, "type": event_type})
        return [orjson.loads(value) for value in rows]


class ProducedEventChecker:
    """Contract check on the producing side: every event a service encodes during the tests
    must validate against the committed JSON Schema of its type (shared/schemas)."""

    def __init__(self, schema_dir: Path) -> None:
        self.schema_dir = schema_dir
        self.validators: dict[str, Any] = {}
        self.seen: dict[str, int] = {}

    def validate(self, event_type: str, data: dict[str, Any]) -> None:
        import json

        import jsonschema

        if event_type not in self.validators:
            path = self.schema_dir / f"{event_type}.json"
            if not path.exists():
                raise AssertionError(f"no committed schema for {event_type}: run make schemas")
            schema = json.loads(path.read_text())
            self.validators[event_type] = jsonschema.Draft202012Validator(schema)
        errors = sorted(self.validators[event_type].iter_errors(data), key=str)
        if errors:
            raise AssertionError(
                f"{event_type} does not match its committed schema: "
                f"{errors[0].message} at {list(errors[0].absolute_path)}"
            )
        self.seen[event_type] = self.seen.get(event_type, 0) + 1


@pytest.fixture(scope="session", autouse=True)
def produced_event_checker() -> Iterator[ProducedEventChecker]:
    from .events.envelope import Event

    schema_dir = Path(__file__).resolve().parents[2] / "schemas"
    checker = ProducedEventChecker(schema_dir)
    original = Event.to_cloudevent

    def checked(self: Event[Any]) -> dict[str, Any]:
        body = original(self)
        checker.validate(body["type"], body["data"])
        return body

    Event.to_cloudevent = checked  # type: ignore[method-assign]
    try:
        yield checker
    finally:
        Event.to_cloudevent = original  # type: ignore[method-assign]


async def deliver(service: RunningService, *events: Any) -> list[Any]:
    """What the consumer does with a batch, without a broker: the service's own handlers, inbox
    and transaction. Answers the events that were new (duplicates are skipped)."""
    from .kafka import apply_events

    runtime = service.runtime
    assert runtime.definition.handlers is not None, f"{runtime.name} consumes nothing"
    async with runtime.transaction() as conn:
        return await apply_events(
            conn, runtime.consumer_group, runtime.definition.handlers(runtime), list(events)
        )


async def until(check: Any, what: str, timeout: float, every: float = 0.2) -> Any:
    """Poll an async check until it answers something truthy (and answer that), or fail with
    what was awaited once `timeout` seconds have passed: every wait in a test is bounded."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(every)


class BrokerProxy:
    """A TCP proxy on 127.0.0.1:<port> in front of the embedded broker at `upstream_port`, on its
    own event loop in a thread, so that the test's own work (even a blocking client) never
    stalls the services' traffic. `ssl` terminates TLS. Subclasses shape what passes by
    overriding `forward_requests` (client to broker); `ProxiedBroker` advertises the proxy."""

    name = "broker-proxy"

    def __init__(self, upstream_port: int, *, ssl: Any = None) -> None:
        self.port = free_port()
        self.upstream_port = upstream_port
        self.ssl = ssl
        self.connections = 0  # connections accepted (TLS: handshakes completed) and forwarded
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            # refused connections (a TLS handshake with the wrong CA) are expected: no tracebacks
            loop.set_exception_handler(lambda loop, context: None)
            server = loop.run_until_complete(
                asyncio.start_server(self._connection, "127.0.0.1", self.port, ssl=self.ssl)
            )
            ready.set()
            try:
                loop.run_forever()
            finally:
                server.close()
                for task in asyncio.all_tasks(loop):
                    task.cancel()
                loop.run_until_complete(asyncio.sleep(0))
                loop.close()

        self._thread = threading.Thread(target=run, name=f"{self.name}-{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"the {self.name} did not start")

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(
                self.forward_requests(reader, up_writer), self.forward(up_reader, writer)
            )
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()

    async def forward_requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await self.forward(reader, writer)

    @staticmethod
    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        raise asyncio.IncompleteReadError(b"", None)


class ProxiedBroker(EmbeddedBroker):
    """The embedded broker behind a `BrokerProxy` that it advertises as its address, so that
    every client talks to it through the proxy."""

    def __init__(self, proxy: BrokerProxy) -> None:
        super().__init__(proxy.upstream_port, advertised_port=proxy.port)
        self.proxy = proxy

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.proxy.port}"

    def start(self, timeout: float = 20.0) -> ProxiedBroker:
        self.proxy.start()
        super().start(timeout)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        self.proxy.stop()
