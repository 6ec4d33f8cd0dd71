"""OpenTelemetry traces across services (contract §3): one sign-up is one trace, from the member
service's HTTP span through the outbox and the broker to the points consumer's span for
`member.registered`, whose `points.credited` carries that trace on. Two services in process on
the real embedded broker and database; spans go to the SDK's in-memory exporter."""

from __future__ import annotations

import time

import loyalty_member.bootstrap
import loyalty_points.bootstrap
import pytest_asyncio
from loyalty_shared import observability
from loyalty_shared.testing import DatabaseFactory, outbox_events, start_service, until
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

PHONE = "13800138555"


@pytest_asyncio.fixture(scope="module")
async def traced(databases: DatabaseFactory, kafka_bootstrap: str):
    exporter = InMemorySpanExporter()
    observability.use_span_exporter(exporter)
    try:
        member = await start_service(
            loyalty_member.bootstrap.definition(),
            database_url=await databases.fresh("trace_member"),
            bootstrap=kafka_bootstrap,
        )
        points = await start_service(
            loyalty_points.bootstrap.definition(),
            database_url=await databases.fresh("trace_points"),
            bootstrap=kafka_bootstrap,
        )
        try:
            yield member, points, exporter
        finally:
            await points.stop()
            await member.stop()
    finally:
        observability.disable_tracing()


async def events_of(runtime, **filters) -> list:
    """The outbox, read without spans of the test's own."""
    with suppress_instrumentation():
        return await outbox_events(runtime, **filters)


def service_of(span: ReadableSpan) -> str:
    return str(span.resource.attributes.get("service.name"))


def traceparent_of(span: ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


async def test_a_signup_is_one_trace_from_the_member_service_to_the_points_consumer(traced):
    member, points, exporter = traced
    started_ns = time.time_ns()
    response = await member.client.post("/v1/members", json={"phone": PHONE})
    assert response.status_code == 201, response.text
    member_id = response.json()["member_id"]

    async def credited() -> list:
        return await events_of(points.runtime, key=member_id, event_type="points.credited")

    [event] = await until(credited, "the signup bonus", timeout=30)
    spans = exporter.get_finished_spans()

    [http] = [
        s
        for s in spans
        if s.kind == SpanKind.SERVER
        and s.name == "POST /v1/members"
        and s.start_time >= started_ns
        and service_of(s) == "loyalty-member"
    ]
    trace_id = http.context.trace_id
    # the event the request wrote carries the request's span
    [registered] = await events_of(member.runtime, key=member_id, event_type="member.registered")
    assert registered["traceparent"] == traceparent_of(http)

    # the points consumer's span for it: the child of that traceparent, in the same trace
    [process] = [
        s
        for s in spans
        if s.name == "process member.registered"
        and s.attributes.get("cloudevents.event_subject") == member_id
    ]
    assert service_of(process) == "loyalty-points"
    assert process.kind == SpanKind.CONSUMER
    assert process.context.trace_id == trace_id
    assert process.parent is not None and process.parent.span_id == http.context.span_id
    assert process.attributes["cloudevents.event_id"] == registered["id"]
    assert process.attributes["messaging.consumer.group.name"] == "loyalty-points"

    # the event it wrote continues the trace: its traceparent is the consumer's span
    assert event["traceparent"] == traceparent_of(process)

    # the statements the handler ran are spans of that trace, under the consumer's span
    statements = [
        s for s in spans if s.parent is not None and s.parent.span_id == process.context.span_id
    ]
    assert statements and all(s.context.trace_id == trace_id for s in statements)
    # the relay's send of member.registered (aiokafka) is a span of the trace as well
    assert any(
        s.kind == SpanKind.PRODUCER
        and s.name == "loyalty.members send"
        and s.context.trace_id == trace_id
        for s in spans
    )
    # the background loops' polls (relay, consumer, scheduler, gauges) make no traces of their
    # own: every statement since the sign-up belongs to a request's or an event's trace
    roots = [
        (service_of(s), (s.attributes or {}).get("db.statement", s.name)[:60])
        for s in spans
        if s.parent is None and s.start_time >= started_ns and s.kind == SpanKind.CLIENT
    ]
    assert roots == [], roots


async def test_spans_carry_no_query_string_and_no_client_address(traced):
    member, _, exporter = traced
    exporter.clear()
    response = await member.client.get("/v1/members", params={"phone": PHONE})
    assert response.status_code in (200, 404), response.text
    spans = exporter.get_finished_spans()
    [http] = [s for s in spans if s.kind == SpanKind.SERVER and s.name == "GET /v1/members"]
    everything = repr([(s.name, dict(s.attributes or {})) for s in spans])
    assert PHONE not in everything and "phone=" not in everything
    assert "client.address" not in (http.attributes or {})
    assert "127.0.0.1" not in repr(dict(http.attributes or {}))


async def test_probes_are_not_traced(traced):
    member, _, exporter = traced
    exporter.clear()
    assert (await member.client.get("/readyz")).status_code == 200
    assert (await member.client.get("/metrics")).status_code == 200
    # neither a request's span nor its `SELECT 1` as a trace of its own (what the consumers and
    # relays still do in the background has parents, or is theirs)
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans if s.kind == SpanKind.SERVER] == []
    assert [s.name for s in spans if s.kind == SpanKind.CLIENT and s.parent is None] == []


async def test_error_text_never_leaves_in_a_span(traced):
    """A unique violation's DETAIL names the value (PostgreSQL, through SQLAlchemy's span
    status); spans keep the error's class only."""
    from loyalty_shared import tracing
    from opentelemetry.trace import Status, StatusCode

    _, _, exporter = traced
    exporter.clear()
    detail = f"duplicate key\nDETAIL:  Key (phone)=(+86{PHONE}) already exists."
    with tracing.tracer("member").start_as_current_span("INSERT") as span:
        span.record_exception(ValueError(detail))
        span.set_status(Status(StatusCode.ERROR, detail))
    [exported] = [s for s in exporter.get_finished_spans() if s.name == "INSERT"]
    assert exported.status.status_code == StatusCode.ERROR
    assert PHONE not in repr(exported.to_json())
    [event] = exported.events
    assert event.attributes is not None and event.attributes["exception.type"] == "ValueError"
    assert "exception.message" not in event.attributes
    assert "exception.stacktrace" not in event.attributes
