"""The skeleton every service is built on: runtime wiring, app factory, health, admin, CLI."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import keyed_request
from .api_types import AwareDatetime, RequestModel
from .auth import ApiKeys, AuthenticationMiddleware, Scope
from .clock import Clock, SystemClock
from .db import create_engine, resolve_database_url, run_migrations
from .errors import PROBLEM_MEDIA_TYPE, Conflict, NotFound, install_problem_handlers
from .idempotency import PURGE_IDEMPOTENCY_KEYS, IdempotencyStore, WriteGuardMiddleware
from .jobs import Job, JobBusy, job_states, run_job, scheduler
from .kafka import Handlers, IdempotentConsumer, OutboxRelay, ensure_topics, schedule_replay
from .kafka.broker import port_open
from .kafka.connection import KafkaSettingsError, connection_kwargs, connection_problem, describe
from .kafka.dead_letters import router as dead_letters_router
from .kafka.inbox import PURGE_PROCESSED_EVENTS
from .observability import (
    RequestMetricsMiddleware,
    configure_logging,
    instrument_app,
    instrument_engine,
    metrics_payload,
    untraced,
)
from .openapi import finish_openapi, operation_id
from .ratelimit import RateLimiter, RateLimitMiddleware, failed_authentications
from .settings import ServiceSettings
from .state_metrics import watch_state_metrics

log = structlog.get_logger(__name__)


@dataclass
class ServiceDefinition:
    """What a service is made of; its bootstrap module builds one."""

    name: str
    title: str
    migrations: Path
    routers: list[APIRouter] = field(default_factory=list)
    publishes: list[str] = field(default_factory=list)
    consumes: list[str] = field(default_factory=list)
    handlers: Callable[[Runtime], Handlers] | None = None
    jobs: list[Job] = field(default_factory=list)
    # Long-running loops of the service's own (a dispatcher, say), started with the runtime's
    # background work and cancelled when it stops.
    workers: list[Callable[[Runtime], Coroutine[Any, Any, None]]] = field(default_factory=list)
    description: str = ""
    version: str = "0.1.0"


class Runtime:
    """Per-process wiring of a service: settings, engine, clock, relay, consumer, jobs."""

    def __init__(
        self, definition: ServiceDefinition, settings: ServiceSettings, clock: Clock
    ) -> None:
        self.definition = definition
        self.name = definition.name
        self.settings = settings
        self.clock = clock
        # the platform's own jobs last
        self.jobs = [*definition.jobs, PURGE_IDEMPOTENCY_KEYS, PURGE_PROCESSED_EVENTS]
        self._engine: AsyncEngine | None = None
        self.relay: OutboxRelay | None = None
        self.consumer: IdempotentConsumer | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError(f"the {self.name} service has not started")
        return self._engine

    @property
    def consumer_group(self) -> str:
        return f"loyalty-{self.name}"

    async def start(self, *, background: bool = True) -> None:
        # Kafka settings that cannot work stop the service here, before anything else starts
        # (KafkaSettingsError, naming the setting).
        connection_kwargs(self.settings)
        log.info("kafka_connection", service=self.name, **describe(self.settings))
        url = await resolve_database_url(self.settings)
        self._engine = create_engine(url)
        instrument_engine(self._engine, self.name)  # tracing on: a span per statement
        await run_migrations(self._engine, self.definition.migrations)
        bootstrap = self.settings.bootstrap_servers
        self.relay = OutboxRelay(
            self._engine,
            bootstrap,
            service=self.name,
            topics=self.definition.publishes,
            batch_size=self.settings.outbox_batch_size,
            clock=self.clock,
            retention=timedelta(days=self.settings.outbox_retention_days),
            settings=self.settings,
        )
        if self.definition.handlers is not None and self.definition.consumes:
            self.consumer = IdempotentConsumer(
                self._engine,
                bootstrap,
                service=self.name,
                group=self.consumer_group,
                topics=self.definition.consumes,
                handlers=self.definition.handlers(self),
                batch_size=self.settings.consumer_batch_size,
                max_retries=self.settings.consumer_max_retries,
                after_commit=self.relay.wake,
                settings=self.settings,
            )
        if not background:
            return
        # tracing on: the loops' polls make no spans; the work they pick up does (its own)
        with untraced():
            self._tasks.append(
                asyncio.create_task(self._start_messaging(), name=f"{self.name}-kafka")
            )
            if self.settings.scheduler_enabled and self.jobs:
                self._tasks.append(asyncio.create_task(scheduler(self), name=f"{self.name}-jobs"))
            for worker in self.definition.workers:
                name = f"{self.name}-{getattr(worker, '__name__', 'worker')}"
                self.spawn(worker(self), name=name)
            self.spawn(watch_state_metrics(self), name=f"{self.name}-state-metrics")

    def spawn(self, work: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Run work in the background for as long as the service runs; stop() cancels it."""
        task = asyncio.create_task(work, name=name)
        self._tasks.append(task)
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: asyncio.Task[Any]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)

    async def _start_messaging(self) -> None:
        topics = list(self.definition.publishes) + list(self.definition.consumes)
        if self.consumer is not None:
            topics += self.consumer.dlq_topics()
        await ensure_topics(
            self.settings.bootstrap_servers,
            topics,
            self.settings.topic_partitions,
            self.settings.topic_replication,
            attempts=10**6,
            settings=self.settings,
        )
        assert self.relay is not None
        runners = [self.relay.run()]
        if self.consumer is not None:
            runners.append(self.consumer.run())
        await asyncio.gather(*runners)

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.consumer is not None:
            await self.consumer.stop()
        if self.relay is not None:
            await self.relay.stop()
        if self._engine is not None:
            await self._engine.dispose()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A unit of work: state and outbox rows commit together; the relay is woken after.
        In a request sent with an Idempotency-Key, the transaction stays open when the block
        ends and commits with the request's stored answer (`keyed_request.py`)."""
        keyed = keyed_request.current()
        if keyed is None:
            async with self.engine.begin() as conn:
                yield conn
            self.wake_relay()
            return
        await keyed.commit_held()  # an earlier step of this request commits before the next
        conn = await self.engine.connect()
        try:
            await conn.begin()
            yield conn
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.rollback()
            await conn.close()
            raise
        await keyed.hold(conn)

    @contextlib.asynccontextmanager
    async def committed(self) -> AsyncIterator[AsyncConnection]:
        """A unit of work that commits when its block ends, even in a keyed request: a saga's
        step that must be durable before the request calls another service (a crash during the
        call must find it, and so must a job that settles what crashed requests left)."""
        keyed = keyed_request.current()
        if keyed is not None:
            await keyed.commit_held()
        async with self.engine.begin() as conn:
            yield conn
        self.wake_relay()

    def wake_relay(self) -> None:
        """Outbox rows were committed: the relay publishes them now, not at its next poll."""
        if self.relay is not None:
            self.relay.wake()

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads only, in autocommit: no BEGIN and ROLLBACK round trips. At
        READ COMMITTED a transaction gives reads nothing (each statement sees its own
        snapshot either way); a write here would commit at once, so write in `transaction()`.
        In a keyed request that holds a transaction, reads go to it and see its writes."""
        keyed = keyed_request.current()
        if keyed is not None and keyed.held is not None:
            yield keyed.held
            return
        async with self.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    def job(self, name: str) -> Job:
        for job in self.jobs:
            if job.name == name:
                return job
        raise NotFound(f"no job named '{name}'", jobs=[j.name for j in self.jobs])

    async def ready(self) -> dict[str, str]:
        checks: dict[str, str] = {}
        try:
            async with asyncio.timeout(2):
                async with self.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unavailable: {type(exc).__name__}"
        checks["broker"] = await self._broker_check()
        return checks

    async def _broker_check(self) -> str:
        bootstrap = self.settings.bootstrap_servers
        if self.settings.kafka_security_protocol == "PLAINTEXT":
            host, _, port = bootstrap.split(",")[0].rpartition(":")
            ok = await asyncio.to_thread(port_open, host or "127.0.0.1", int(port or 9092), 1.0)
            return "ok" if ok else "unavailable"
        # TLS or SASL: reachable is not enough; a connection as the clients make it (the CA, the
        # client certificate, the SASL login) says whether the broker takes us.
        problem = await connection_problem(bootstrap, self.settings, timeout=2.0)
        return "ok" if problem is None else f"unavailable: {problem}"


async def get_runtime(request: Request) -> Runtime:
    # async: FastAPI runs a plain `def` dependency in a worker thread, a thread hop per request
    return request.app.state.runtime  # type: ignore[no-any-return]


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


# ---------------------------------------------------------------------------------------------
# Routers every service has
# ---------------------------------------------------------------------------------------------
ops = APIRouter(tags=["operations"])


@ops.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@ops.get(
    "/readyz",
    summary="The database and the broker are reachable",
    responses={
        503: {"description": "the database or the broker is not: `checks` says which"},
        422: {
            "description": "`require` is neither `all` nor `database` (`validation_error`)",
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        },
    },
)
async def readyz(
    runtime: RuntimeDep,
    require: Annotated[
        Literal["all", "database"],
        Query(
            description="`database`: ready while the database is, whatever the broker (the "
            "outbox holds the writes of a broker outage; a cluster's readiness probe asks so, "
            "so that a broker outage does not take every pod out of its Service); `checks` "
            "still shows the broker"
        ),
    ] = "all",
) -> JSONResponse:
    checks = await runtime.ready()
    needed = ["database"] if require == "database" else list(checks)
    ok = all(checks.get(name) == "ok" for name in needed)
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
    )


@ops.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics() -> Response:
    payload, content_type = metrics_payload()
    return Response(payload, media_type=content_type)


admin = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Scope("admin")])


class JobRunRequest(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"as_of": "2026-11-25T00:00:00+08:00"}]}
    )

    as_of: AwareDatetime | None = None


class JobRunResult(BaseModel):
    job: str
    as_of: datetime
    counts: dict[str, Any]


class JobLastRun(BaseModel):
    as_of: datetime
    started_at: datetime
    finished_at: datetime
    status: Literal["ok", "error"]
    counts: dict[str, Any]
    scheduled: bool = Field(description="false: run on demand, which claims no period")
    error: str | None = Field(None, description="a failed run's error: class and SQLSTATE")


class JobState(BaseModel):
    job: str
    every_seconds: int
    description: str
    last_run: JobLastRun | None
    next_due_at: datetime = Field(
        description="the start of the next period to run (periods are aligned on the UTC "
        "epoch); a time already past: due now, a replica runs it at its scheduler's next look"
    )


class JobList(BaseModel):
    items: list[JobState]


class ReplayRequest(RequestModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"since": "2026-11-24T00:00:00Z"}]})

    since: AwareDatetime


class ReplayResult(BaseModel):
    scheduled: int


@admin.get("/jobs", summary="The jobs this service runs on a schedule, their last runs")
async def list_jobs(runtime: RuntimeDep) -> JobList:
    return JobList.model_validate({"items": await job_states(runtime)})


@admin.post("/jobs/{job}/run", summary="Run a job now, as if the clock read as_of")
async def run_job_now(
    job: str, runtime: RuntimeDep, body: JobRunRequest | None = None
) -> JobRunResult:
    definition = runtime.job(job)
    as_of = (body.as_of if body and body.as_of else None) or runtime.clock.now()
    try:
        counts = await run_job(runtime, definition, as_of)
    except JobBusy as exc:
        raise Conflict("job_running", f"the job '{job}' is running already") from exc
    return JobRunResult(job=job, as_of=as_of, counts=counts)


@admin.post("/outbox:replay", summary="Publish again every retained event written since a time")
async def replay_outbox(body: ReplayRequest, runtime: RuntimeDep) -> ReplayResult:
    async with runtime.transaction() as conn:
        count = await schedule_replay(conn, body.since)
    return ReplayResult(scheduled=count)


# ---------------------------------------------------------------------------------------------
# The app factory and the command line
# ---------------------------------------------------------------------------------------------


def create_app(
    definition: ServiceDefinition,
    *,
    settings: ServiceSettings | None = None,
    clock: Clock | None = None,
    background: bool = True,
) -> FastAPI:
    settings = settings or ServiceSettings.for_service(definition.name)
    configure_logging(settings.log_level)
    runtime = Runtime(definition, settings, clock or SystemClock())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start(background=background)
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title=definition.title,
        version=definition.version,
        description=definition.description,
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
    )
    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = finish_openapi(generate_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.state.runtime = runtime
    app.state.api_keys = ApiKeys(settings.api_keys)
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
    app.state.auth_failures = failed_authentications(settings.auth_failures_per_minute)
    install_problem_handlers(app)
    # The last added runs first: metrics, authentication, the rate limit (which needs the
    # caller's key), then the write guard, so a refused request records and changes nothing.
    app.add_middleware(
        WriteGuardMiddleware,
        store_factory=lambda: IdempotencyStore(runtime.engine, after_commit=runtime.wake_relay),
    )
    app.add_middleware(RateLimitMiddleware, limiter=lambda: app.state.rate_limiter)
    app.add_middleware(
        AuthenticationMiddleware,
        keys=lambda: app.state.api_keys,
        failures=lambda: app.state.auth_failures,
    )
    app.add_middleware(
        RequestMetricsMiddleware, service=definition.name, access_log=settings.access_log
    )
    instrument_app(app, definition.name)  # OTEL_EXPORTER_OTLP_ENDPOINT set: traces over OTLP
    app.include_router(ops)
    app.include_router(admin)
    app.include_router(dead_letters_router)
    for router in definition.routers:
        app.include_router(router)
    return app


def main(definition_factory: Callable[[], ServiceDefinition], argv: list[str] | None = None) -> int:
    """`python -m loyalty_<name> [serve|migrate]`."""
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "serve"
    definition = definition_factory()
    try:
        settings = ServiceSettings.for_service(definition.name)
    except ValidationError as exc:
        for error in exc.errors():
            name = "LOYALTY_" + "_".join(str(p) for p in error["loc"]).upper()
            print(f"{definition.name}: invalid setting {name}: {error['msg']}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if command == "migrate":

        async def migrate() -> None:
            engine = create_engine(await resolve_database_url(settings))
            try:
                await run_migrations(engine, definition.migrations)
            finally:
                await engine.dispose()

        asyncio.run(migrate())
        print(f"{definition.name}: database migrated to head")
        return 0
    if command == "serve":
        import uvicorn

        try:  # Kafka settings that cannot work: say which, and exit before serving
            connection_kwargs(settings)
        except KafkaSettingsError as exc:
            log.error("kafka_settings_invalid", service=definition.name, error=str(exc))
            return 2

        app = create_app(definition, settings=settings)
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            lifespan="on",
        )
        return 0
    print(f"usage: python -m loyalty_{definition.name} [serve|migrate]", file=sys.stderr)
    return 2
