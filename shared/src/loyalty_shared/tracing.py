"""OpenTelemetry traces over OTLP: imported only when tracing is on (`observability.py` decides:
`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set), so a service
without an endpoint loads none of this and pays nothing.

What is traced:
- every HTTP request (FastAPI), except /healthz, /readyz and /metrics;
- every SQL statement (SQLAlchemy) and every outgoing HTTP call (httpx) made while a span is
  current; the background loops (the outbox relay's polls, the consumer's, the scheduler's) run
  with instrumentation suppressed, so they add no trace of their own every second;
- every event a consumer applies: a span `process <type>` whose parent is the event's
  CloudEvents `traceparent`, so one sign-up is one trace from the member service to every
  consumer; a batch of several events also gets a span of its own, linked to each event's;
- every message the outbox relay publishes (aiokafka's `send` span), in the trace of its event;
- every job run.
The traceparent of an event made while such a span is current is that span's context
(`observability.event_traceparent`).

One process may hold several services (the tests do): each has its own tracer provider, so its
spans carry its own `service.name` (`loyalty-<service>`); the libraries instrumented process-wide
(aiokafka, httpx) use the first one's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
_SCOPE = "loyalty_shared"
_EXCLUDED_URLS = r"/(healthz|readyz|metrics)(\?|$)"
# Span attributes that would carry personal data: a query string and the client's address
_URL_ATTRIBUTES = ("http.target", "http.url", "url.full")
_DROPPED_ATTRIBUTES = (
    "url.query",
    "client.address",
    "client.port",
    "http.client_ip",
    "net.peer.ip",
    "net.sock.peer.addr",
)

_EXCEPTION_KEPT = ("exception.type", "exception.escaped")

_providers: dict[str, TracerProvider] = {}
_test_exporter: SpanExporter | None = None
_libraries: list[Any] = []  # the process-wide instrumentors, to undo in `shutdown`


class _NoPersonalData(SpanProcessor):
    """Passes finished spans on to the exporting processor without what could carry personal
    data: query strings (`?phone=...`: URLs keep their path, whose ids are no personal data,
    contract §2), the client's address, and the text of errors (a status description or an
    exception event's message may quote a value: PostgreSQL's DETAIL of a unique violation
    names the phone), of which a span keeps the class (`exception.type`)."""

    def __init__(self, inner: SpanProcessor) -> None:
        self.inner = inner

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.inner.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        # `span` is the finished span's own snapshot, handed to the processors alone
        attributes = span.attributes or {}
        if any(key in attributes for key in _DROPPED_ATTRIBUTES) or any(
            "?" in str(attributes.get(key, "")) for key in _URL_ATTRIBUTES
        ):
            span._attributes = {  # type: ignore[attr-defined]
                key: (
                    value.split("?", 1)[0]
                    if key in _URL_ATTRIBUTES and isinstance(value, str)
                    else value
                )
                for key, value in attributes.items()
                if key not in _DROPPED_ATTRIBUTES
            }
        if span.status.description:
            span._status = Status(span.status.status_code)  # type: ignore[attr-defined]
        if any(event.name == "exception" for event in span.events):
            span._events = tuple(  # type: ignore[attr-defined]
                _bare(event) if event.name == "exception" else event for event in span.events
            )
        self.inner.on_end(span)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def _bare(event: Any) -> Any:
    from opentelemetry.sdk.trace import Event

    kept = {k: v for k, v in (event.attributes or {}).items() if k in _EXCEPTION_KEPT}
    return Event(event.name, kept, event.timestamp)


def use_exporter(exporter: SpanExporter | None) -> None:
    """Tests: export finished spans to `exporter` (the SDK's InMemorySpanExporter), at once,
    instead of over OTLP."""
    global _test_exporter
    _test_exporter = exporter


def provider(service: str) -> TracerProvider:
    """The tracer provider of a service, made on first use: `service.name` `loyalty-<service>`
    (other resource attributes from `OTEL_RESOURCE_ATTRIBUTES`), the sampler of
    `OTEL_TRACES_SAMPLER`, spans batched (`OTEL_BSP_*`) to the OTLP/HTTP exporter, which reads
    `OTEL_EXPORTER_OTLP_*` (endpoint, headers, timeout, certificate, compression)."""
    found = _providers.get(service)
    if found is not None:
        return found
    resource = Resource.create(
        {"service.name": f"loyalty-{service}", "service.namespace": "loyalty"}
    )
    made = TracerProvider(resource=resource)
    exporting: SpanProcessor
    if _test_exporter is not None:
        exporting = SimpleSpanProcessor(_test_exporter)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporting = BatchSpanProcessor(OTLPSpanExporter())
    made.add_span_processor(_NoPersonalData(exporting))
    # Not made the global provider: every instrumentation here is given its provider, and a
    # global one would also switch on FastAPI's own telemetry beside the instrumentation's.
    first = not _providers
    _providers[service] = made
    if first:
        _instrument_libraries(made)
    return made


def _instrument_libraries(made: TracerProvider) -> None:
    """aiokafka and httpx are instrumented for the whole process. Of aiokafka only the producer
    side stays: the consumer's own `process` spans (one per applied event, the child of its
    CloudEvents traceparent) replace the `receive` spans, which would add a root span per poll
    and one more span per record."""
    from aiokafka import AIOKafkaConsumer
    from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.utils import unwrap

    kafka = AIOKafkaInstrumentor()
    kafka.instrument(tracer_provider=made)
    for method in ("getone", "getmany"):
        unwrap(AIOKafkaConsumer, method)
    http = HTTPXClientInstrumentor()
    http.instrument(tracer_provider=made)
    _libraries.extend([kafka, http])


def shutdown() -> None:
    """Tests: flush and forget every provider, undo the process-wide instrumentation."""
    for library in _libraries:
        with contextlib.suppress(Exception):
            library.uninstrument()
    _libraries.clear()
    for made in _providers.values():
        made.shutdown()
    _providers.clear()


def tracer(service: str) -> trace.Tracer:
    return provider(service).get_tracer(_SCOPE)


def instrument_app(app: Any, service: str) -> None:
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider(service),
        excluded_urls=_EXCLUDED_URLS,
        exclude_spans=["receive", "send"],  # no span per ASGI message: the request's is enough
    )


def instrument_engine(engine: Any, service: str) -> None:
    """Spans for the statements of one engine (with the service's provider; the instrumentor's
    own `instrument(engine=)` can be called once per process only)."""
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.metrics import get_meter

    usage = get_meter(_SCOPE).create_up_down_counter("db.client.connections.usage")
    EngineTracer(tracer(service), engine.sync_engine, usage)


def traceparent_of(span: trace.Span) -> str | None:
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def current_traceparent() -> str | None:
    """The W3C traceparent of the span current here, if any."""
    return traceparent_of(trace.get_current_span())


def _parent(traceparent: str | None) -> Context:
    """A fresh context (so instrumentation is not suppressed in it) whose parent is the given
    traceparent; without one (or an invalid one), a context that starts a new trace."""
    if not traceparent:
        return Context()
    return _PROPAGATOR.extract({"traceparent": traceparent}, context=Context())


@contextlib.contextmanager
def suppressed() -> Iterator[None]:
    with suppress_instrumentation():
        yield


@contextlib.contextmanager
def under(traceparent: str | None) -> Iterator[None]:
    """Work done here (a message sent, a statement) belongs to the trace of `traceparent`."""
    token = otel_context.attach(_parent(traceparent))
    try:
        yield
    finally:
        otel_context.detach(token)


def _failed(spans: Sequence[trace.Span], exc: BaseException) -> None:
    # The class only: an error's message may quote a value (a phone in a constraint's detail)
    for span in spans:
        span.set_attribute("error.type", type(exc).__qualname__)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


@contextlib.contextmanager
def consuming(service: str, group: str, events: Sequence[Any]) -> Iterator[dict[str, str]]:
    """Spans for a batch of events a consumer applies: one per event, the child of its
    CloudEvents traceparent; with several events, one more for the batch, linked to each, which
    is current while the batch is applied (with one event, that event's span is). Yields each
    event's span as a traceparent, by event id: what the events made while applying it carry."""
    traced = tracer(service)
    spans: dict[str, trace.Span] = {}
    for event in events:
        if event.id in spans:
            continue
        spans[event.id] = traced.start_span(
            f"process {event.type}",
            context=_parent(event.traceparent),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.consumer.group.name": group,
                "messaging.message.id": event.id,
                "cloudevents.event_id": event.id,
                "cloudevents.event_type": event.type,
                "cloudevents.event_source": event.source,
                "cloudevents.event_subject": event.subject or "",
            },
        )
    everything = list(spans.values())
    if len(everything) == 1:
        current = everything[0]
    else:
        current = traced.start_span(
            f"process {len(everything)} events",
            context=Context(),
            kind=SpanKind.CONSUMER,
            links=[Link(span.get_span_context()) for span in everything],
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.consumer.group.name": group,
                "messaging.batch.message_count": len(everything),
            },
        )
        everything.append(current)
    token = otel_context.attach(trace.set_span_in_context(current, Context()))
    try:
        yield {
            event_id: traceparent
            for event_id, span in spans.items()
            if (traceparent := traceparent_of(span)) is not None
        }
    except BaseException as exc:
        _failed(everything, exc)
        raise
    finally:
        otel_context.detach(token)
        for span in everything:
            span.end()


@contextlib.contextmanager
def span(service: str, name: str, attributes: dict[str, Any] | None = None) -> Iterator[None]:
    """A span of the service's own (a job run), the child of the span current here if any, in
    a context where instrumentation is not suppressed (the scheduler's loop is)."""
    parent = trace.set_span_in_context(trace.get_current_span(), Context())
    with tracer(service).start_as_current_span(
        name,
        context=parent,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield
        except BaseException as exc:
            _failed([current], exc)
            raise
