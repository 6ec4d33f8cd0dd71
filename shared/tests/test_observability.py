"""Logs (contract §3: one JSON object per line from every library), the access line, and the
trace context that events made by a consumer's handler carry on."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from fastapi import APIRouter
from loyalty_shared import observability
from loyalty_shared.events import make_event
from loyalty_shared.events.members import MemberCheckedIn
from loyalty_shared.testing import toy_app, toy_client

NOW = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
PHONE = "+8613800138000"

# What a service's process logs: uvicorn's and aiokafka's records through the standard library,
# an exception through asyncio's logger, a SQLAlchemy warning whose text has a line break, and
# structlog's own event.
_SCRIPT = """
import logging, structlog
from loyalty_shared.observability import configure_logging
configure_logging("INFO")
uvicorn, kafka = "uvicorn.error", "aiokafka.consumer.group_coordinator"
logging.getLogger(uvicorn).info("Uvicorn running on %s (Press CTRL+C to quit)", "http://0.0.0.0:8001")
logging.getLogger(kafka).warning("Heartbeat failed for group %s", "loyalty-points")
logging.getLogger("aiokafka").info("below the library's level: not shown")
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("asyncio").exception("Task exception was never retrieved")
logging.getLogger("sqlalchemy.pool").warning("first line\\nsecond line")
own = structlog.get_logger("loyalty_shared.kafka.consumer")
own.info("consumer_started", group="loyalty-points")
"""


def _lines() -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=60, check=True
    )
    lines = done.stdout.splitlines()
    assert done.stderr == "", done.stderr
    return [json.loads(line) for line in lines]  # each line one JSON object, or this fails


def test_every_library_logs_one_json_object_per_line() -> None:
    records = _lines()
    by_logger = {record["logger"]: record for record in records}
    assert list(by_logger) == [
        "uvicorn.error",
        "aiokafka.consumer.group_coordinator",
        "asyncio",
        "sqlalchemy.pool",
        "loyalty_shared.kafka.consumer",
    ]
    for record in records:
        assert {"event", "level", "logger", "timestamp"} <= set(record), record
        assert record["timestamp"].endswith("Z")
    uvicorn = by_logger["uvicorn.error"]
    assert uvicorn["event"] == "Uvicorn running on http://0.0.0.0:8001 (Press CTRL+C to quit)"
    assert uvicorn["level"] == "info"
    kafka = by_logger["aiokafka.consumer.group_coordinator"]
    assert (kafka["event"], kafka["level"]) == (
        "Heartbeat failed for group loyalty-points",
        "warning",
    )
    failed = by_logger["asyncio"]
    assert failed["level"] == "error"
    assert "Traceback" in failed["exception"] and "ZeroDivisionError" in failed["exception"]
    assert by_logger["sqlalchemy.pool"]["event"] == "first line\nsecond line"
    own = by_logger["loyalty_shared.kafka.consumer"]
    assert (own["event"], own["group"], own["level"]) == (
        "consumer_started",
        "loyalty-points",
        "info",
    )


router = APIRouter(prefix="/v1")


@router.get("/members")
async def find_members(phone: str) -> dict[str, list[str]]:
    return {"items": []}


@router.get("/members/{member_id}")
async def get_member(member_id: str) -> dict[str, str]:
    return {"member_id": member_id}


async def test_the_access_line_names_the_route_never_the_query_or_the_path(
    capsys: pytest.CaptureFixture[str],
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with toy_client(toy_app(router)) as client:
        capsys.readouterr()
        found = await client.get(
            "/v1/members",
            params={"phone": PHONE},
            headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
        )
        assert found.status_code == 200
        assert (await client.get("/v1/members/01JMEMBER42")).status_code == 200
        assert (await client.get("/healthz")).status_code == 200  # probes: no line
    out = capsys.readouterr().out
    lines = [json.loads(line) for line in out.splitlines()]
    access = [line for line in lines if line["event"] == "http_request"]
    assert [(a["method"], a["route"], a["status"]) for a in access] == [
        ("GET", "/v1/members", 200),
        ("GET", "/v1/members/{member_id}", 200),
    ]
    assert access[0]["trace_id"] == trace_id
    assert access[0]["logger"] == "loyalty.access" and access[0]["service"] == "toy"
    assert all(isinstance(a["duration_ms"], float) for a in access)
    assert "8613800138000" not in out and "phone" not in out
    assert "01JMEMBER42" not in out and "Bearer" not in out and "authorization" not in out


def _checked_in(member_id: str, traceparent: str | None = None):
    return make_event(
        "member.checked_in",
        MemberCheckedIn(member_id=member_id, date=NOW.date(), streak_days=1, occurred_at=NOW),
        subject=member_id,
        source="test",
        time=NOW,
        traceparent=traceparent,
    )


def test_events_a_handler_makes_continue_the_trace_of_their_members_event() -> None:
    # without OpenTelemetry: the trace id carries on, each event a span of its own
    a = _checked_in("m-a", f"00-{'a' * 32}-{'1' * 16}-01")
    b = _checked_in("m-b", f"00-{'b' * 32}-{'2' * 16}-01")
    with observability.handling([a, b]):
        for_a, for_b, other = _checked_in("m-a"), _checked_in("m-b"), _checked_in("m-c")
    assert observability.trace_id_of(for_a.traceparent) == "a" * 32
    assert for_a.traceparent != a.traceparent
    assert observability.trace_id_of(for_b.traceparent) == "b" * 32
    # another member's event made from a batch of several: no cause to tell, a trace of its own
    assert observability.trace_id_of(other.traceparent) not in ("a" * 32, "b" * 32)
    # from one event, everything it makes is its trace (a referral bonus for the referrer)
    with observability.handling([a]):
        referrer = _checked_in("m-referrer")
    assert observability.trace_id_of(referrer.traceparent) == "a" * 32
    # and outside a handler, nothing is left behind
    assert observability.trace_id_of(_checked_in("m-a").traceparent) != "a" * 32
