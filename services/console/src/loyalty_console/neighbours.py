"""HTTP clients of the five services, called with the signed-in operator's own API key.

Every answer that is not a success becomes an `ApiError` carrying the service's RFC 9457
problem (its `code`, `detail` and field `errors`), so a page can show it next to the form that
caused it. A service that cannot be reached is an `ApiError` too (503 `service_unavailable`):
pages degrade section by section instead of failing whole. Tests swap the transports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import httpx

from .config import NEIGHBOURS


class ApiError(Exception):
    """A service refused a request (4xx/5xx problem) or could not be reached."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        service: str = "",
        errors: list[dict[str, Any]] | None = None,
        body: dict[str, Any] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(f"{service} {status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.service = service
        self.errors = errors or []
        self.body = body or {}
        self.retry_after = retry_after  # the service's Retry-After in seconds, when it gave one

    def field_errors(self) -> dict[str, str]:
        """`{"points": "Field required", "rule.all.1.op": "..."}` from the problem's errors."""
        out: dict[str, str] = {}
        for err in self.errors:
            loc = [str(p) for p in err.get("loc", []) if p not in ("body", "query", "path")]
            out[".".join(loc) or "_"] = str(err.get("msg", ""))
        return out


@dataclass
class Reply:
    status: int
    body: Any
    replayed: bool = False


@dataclass
class Neighbours:
    """Base URLs of the services and, in tests, the transports that replace the network."""

    urls: dict[str, str]
    timeout: float = 10.0
    transports: dict[str, httpx.AsyncBaseTransport] = field(default_factory=dict)
    _clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)

    def client(self, service: str) -> httpx.AsyncClient:
        if service not in NEIGHBOURS:
            raise KeyError(service)
        if service not in self._clients:
            self._clients[service] = httpx.AsyncClient(
                base_url=self.urls[service],
                transport=self.transports.get(service),
                timeout=self.timeout,
            )
        return self._clients[service]

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    def as_operator(self, api_key: str) -> Api:
        return Api(self, api_key)


class Api:
    """The five services as one operator sees them (their key, their scopes)."""

    def __init__(self, neighbours: Neighbours, api_key: str) -> None:
        self.neighbours = neighbours
        self.api_key = api_key

    async def call(
        self,
        service: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Reply:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key[:255]
        clean = {k: v for k, v in (params or {}).items() if v not in (None, "")}
        try:
            response = await self.neighbours.client(service).request(
                method, path, json=json, params=clean, headers=headers
            )
        except httpx.HTTPError as exc:
            raise ApiError(
                503,
                "service_unavailable",
                f"the {service} service cannot be reached ({type(exc).__name__})",
                service=service,
            ) from exc
        body: Any = None
        if response.content:
            try:
                body = response.json()
            except ValueError:
                body = {"detail": response.text[:300]}
        if response.status_code >= 400:
            problem = body if isinstance(body, dict) else {}
            raise ApiError(
                response.status_code,
                str(problem.get("code") or "http_error"),
                str(problem.get("detail") or response.reason_phrase),
                service=service,
                errors=problem.get("errors") if isinstance(problem.get("errors"), list) else None,
                body=problem,
                retry_after=_seconds(response.headers.get("retry-after")),
            )
        replayed = response.headers.get("idempotent-replayed", "").lower() == "true"
        return Reply(response.status_code, body, replayed)

    async def get(self, service: str, path: str, **params: Any) -> Any:
        return (await self.call(service, "GET", path, params=params)).body

    async def post(
        self, service: str, path: str, body: Any, *, idempotency_key: str | None = None
    ) -> Reply:
        return await self.call(service, "POST", path, json=body, idempotency_key=idempotency_key)


def _seconds(value: str | None) -> int | None:
    """`Retry-After` as delay-seconds (what the services send); None otherwise."""
    if value is None or not value.strip().isdigit():
        return None
    return min(int(value.strip()), 86_400)


async def gather_sections(**calls: Awaitable[Any]) -> dict[str, Section]:
    """Run independent reads at once; each section keeps its own data or its own error."""
    names = list(calls)
    results = await asyncio.gather(*calls.values(), return_exceptions=True)
    sections: dict[str, Section] = {}
    for name, result in zip(names, results, strict=True):
        if isinstance(result, ApiError):
            sections[name] = Section(None, result)
        elif isinstance(result, BaseException):
            raise result
        else:
            sections[name] = Section(result, None)
    return sections


@dataclass
class Section:
    data: Any
    error: ApiError | None

    @property
    def ok(self) -> bool:
        return self.error is None
