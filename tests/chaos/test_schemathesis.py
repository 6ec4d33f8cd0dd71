"""Hostile input: schemathesis fuzzes every service's HTTP API from its own OpenAPI document.

Each service runs in-process on a fresh database (no Kafka tasks), with the all-scopes key.
Schemathesis generates requests for every operation: valid ones (positive), ones that break the
schema (negative), and valid ones with one value swapped for a hostile one (see HOSTILE). They
are sent through httpx on the test's event loop (the service's engine lives there) and each
answer is checked: never a 5xx, the body matches the schema of the status it documents, the
status and the media type are ones the operation documents. The figures count, per operation,
the positive cases answered 422: requests its schema calls valid that the service refuses (a
schema looser than the checks; some are business refusals, such as insufficient_points, and JSON
Schema counts `2.0` an integer where the strict bodies do not). Generation is derandomized, so a
run is reproducible; `LOYALTY_FUZZ_EXAMPLES` examples per operation and mode (default 25: about
70 s for the five services on a 2-core machine). Schemathesis is not a dependency of the
workspace: run with `uv run --with schemathesis pytest tests/chaos/test_schemathesis.py`.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import os
import time
from collections import Counter
from typing import Any

import httpx
import hypothesis
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from loyalty_shared.testing import AUTH, DatabaseFactory, start_service

schemathesis = pytest.importorskip(
    "schemathesis",
    reason="schemathesis is not installed (uv run --with schemathesis pytest tests/chaos)",
)

from schemathesis.core.failures import Failure, FailureGroup  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .stream import record_figures  # noqa: E402

pytestmark = pytest.mark.slow

SERVICES = ["member", "points", "coupon", "notifier", "segmenter"]
EXAMPLES = int(os.environ.get("LOYALTY_FUZZ_EXAMPLES", "25"))
CHECKS = [
    schemathesis.checks.not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]
MODES = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE, "hostile"]
# "hostile": a valid request with one value (in the body, the query or the path) replaced by one
# that passes loose validation but breaks naive code: integers beyond bigint, NUL characters,
# times at the ends of the calendar or without an offset, SQL-looking and non-Latin text.
HOSTILE = [
    2**63,
    -(2**63) - 1,
    2**31,
    10**30,
    1e308,
    -1,
    "\x00",
    "a\x00b",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "2026-11-24T08:00:00",
    "'; DROP TABLE members; --",
    "🎉 会员 עברית",
    "x" * 5000,
]
HOSTILE_CHECKS = CHECKS[:3]
# Each service runs alone here: an operation that calls a neighbour answers 503
# `<neighbour>_unavailable` (documented, e.g. coupons:exchange without the points service),
# which is what it should do, not a server error to report.
NEIGHBOUR_DOWN = {f"{name}_unavailable" for name in SERVICES}
# Generated Idempotency-Keys repeat ("0", the documented example) across different bodies,
# which the write guard rightly refuses (422 `idempotency_key_reused`) before the operation
# sees them: a valid key is made unique per case so the request reaches the operation.
_KEYS = itertools.count()


class Findings:
    """Every distinct failure (operation, check title), counted, with the first reproduction."""

    def __init__(self) -> None:
        self.first: dict[tuple[str, str], str] = {}
        self.counts: Counter[tuple[str, str]] = Counter()
        self.cases = 0
        self.statuses: Counter[int] = Counter()
        # positive (schema-valid) cases per operation, and how many of them were answered 422:
        # an operation whose valid-by-its-schema requests are mostly refused documents a
        # looser schema than the validation it does
        self.positive: Counter[str] = Counter()
        self.positive_rejected: Counter[str] = Counter()
        self.first_rejection: dict[str, str] = {}

    def add(self, label: str, failure: Failure, curl: str) -> None:
        key = (label, failure.title)
        self.counts[key] += 1
        self.first.setdefault(key, f"{failure.message}\n    {curl}")

    def rejection(self) -> dict[str, str]:
        """Per operation with any: positive cases answered 422, of all its positive cases."""
        return {
            label: f"{self.positive_rejected[label]}/{self.positive[label]}"
            for label in sorted(self.positive)
            if self.positive_rejected[label]
        }

    def report(self) -> str:
        return "\n".join(
            f"- {label}: {title} (x{self.counts[label, title]})\n    {detail}"
            for (label, title), detail in sorted(self.first.items())
        )


def _send(
    loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient, kwargs: dict[str, Any]
) -> httpx.Response:
    request: dict[str, Any] = {
        "method": kwargs["method"],
        "url": kwargs["url"],
        "headers": kwargs.get("headers") or {},
        "params": kwargs.get("params"),
        "cookies": kwargs.get("cookies") or None,
    }
    if "json" in kwargs:
        request["json"] = kwargs["json"]
    elif kwargs.get("data") is not None:
        data = kwargs["data"]
        request["content"] = data.encode() if isinstance(data, str) else data
    future = asyncio.run_coroutine_threadsafe(client.request(**request), loop)
    return future.result(timeout=60)


def _problem_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("code") if isinstance(body, dict) else None


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _leaves(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _leaves(v, (*path, i))]
    return [path]


def _spoil(case: Any, data: Any) -> bool:
    """Replace one value of a generated valid request with a hostile one, in place."""
    spots: list[tuple[str, tuple[Any, ...]]] = []
    if isinstance(case.body, dict | list):
        spots += [("body", p) for p in _leaves(case.body) if p]
    for part in ("query", "path_parameters"):
        spots += [(part, (name,)) for name in getattr(case, part) or {}]
    if not spots:
        return False
    part, path = data.draw(st.sampled_from(spots))
    value = data.draw(st.sampled_from(HOSTILE))
    if part != "body" and not isinstance(value, str):
        value = str(value)
    target = case.body if part == "body" else getattr(case, part)
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return True


def fuzz_operation(
    operation: Any,
    mode: Any,
    loop: asyncio.AbstractEventLoop,
    client: httpx.AsyncClient,
    findings: Findings,
) -> None:
    """Runs in a worker thread: Hypothesis drives generation, the service answers on `loop`."""

    hostile = mode == "hostile"
    strategy = operation.as_strategy(
        generation_mode=schemathesis.GenerationMode.POSITIVE if hostile else mode
    )

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(case=strategy, data=st.data())
    def one(case: Any, data: Any) -> None:
        if hostile and not _spoil(case, data):
            return
        key = (case.headers or {}).get("Idempotency-Key")
        if isinstance(key, str) and 0 < len(key) <= 200:
            case.headers["Idempotency-Key"] = f"{key}-{next(_KEYS)}"
        kwargs = case.as_transport_kwargs(base_url=str(client.base_url), headers=AUTH)
        try:
            response = _send(loop, client, kwargs)
        except (UnicodeEncodeError, httpx.InvalidURL, httpx.LocalProtocolError):
            return  # the client cannot even send it: nothing reached the service
        findings.cases += 1
        findings.statuses[response.status_code] += 1
        if mode == schemathesis.GenerationMode.POSITIVE:
            findings.positive[operation.label] += 1
            if response.status_code == 422:
                findings.positive_rejected[operation.label] += 1
                findings.first_rejection.setdefault(operation.label, response.text[:300])
        checks = HOSTILE_CHECKS if hostile else CHECKS
        if response.status_code == 503 and _problem_code(response) in NEIGHBOUR_DOWN:
            checks = [c for c in checks if c is not schemathesis.checks.not_a_server_error]
        try:
            case.validate_response(response, checks=checks, headers=kwargs["headers"])
        except FailureGroup as group:
            curl = case.as_curl_command(headers=kwargs["headers"])
            for failure in group.exceptions:
                findings.add(operation.label, failure, curl)
        except Failure as failure:
            findings.add(operation.label, failure, case.as_curl_command())

    try:
        one()
    except hypothesis.errors.Unsatisfiable:
        pass  # nothing to negate (an operation without parameters or body)


def fuzz(
    schema: Any, loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient, findings: Findings
) -> None:
    for result in schema.get_all_operations():
        for mode in MODES:
            fuzz_operation(result.ok(), mode, loop, client, findings)


@pytest.mark.parametrize("name", SERVICES)
async def test_fuzz_service_api(name: str, databases: DatabaseFactory, kafka_bootstrap: str):
    definition = importlib.import_module(f"loyalty_{name}.bootstrap").definition()
    service = await start_service(
        definition,
        database_url=await databases.fresh(f"fuzz_{name}"),
        bootstrap=kafka_bootstrap,
        background=False,
    )
    try:
        schema = schemathesis.openapi.from_dict(service.app.openapi())
        # Every request carries the all-scopes key (AUTH): keys and scopes are
        # test_access.py's; generated credentials would only be refused (401, then 429).
        schema.config.generation.update(with_security_parameters=False)
        findings = Findings()
        # A crash in the app is a 500 answer to check, not an exception in the test.
        transport = httpx.ASGITransport(app=service.app, raise_app_exceptions=False)
        client = httpx.AsyncClient(transport=transport, base_url=f"http://{name}.test")
        started = time.monotonic()
        try:
            await asyncio.to_thread(fuzz, schema, asyncio.get_running_loop(), client, findings)
        finally:
            await client.aclose()
        elapsed = time.monotonic() - started
        print(
            f"\n{name}: {findings.cases} cases in {elapsed:.1f}s, "
            f"statuses {dict(sorted(findings.statuses.items()))}"
        )
        for label, share in findings.rejection().items():
            print(
                f"  positive cases refused by {label}: {share}: {findings.first_rejection[label]}"
            )
        record_figures(
            f"fuzz: schemathesis on the {name} service",
            {
                "cases": findings.cases,
                "seconds": round(elapsed, 1),
                "statuses": dict(sorted(findings.statuses.items())),
                "distinct_failures": len(findings.first),
                "positive": sum(findings.positive.values()),
                "positive_422": sum(findings.positive_rejected.values()),
                "positive_422_by_operation": findings.rejection(),
            },
        )
        assert not findings.first, f"{name}: schemathesis found\n{findings.report()}"
    finally:
        await service.stop()
