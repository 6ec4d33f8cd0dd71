"""API-key authentication with scopes (`Authorization: Bearer <key>`)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request
from starlette.types import ASGIApp, Receive, Send
from starlette.types import Scope as ASGIScope

from .errors import ProblemError, problem_response
from .ratelimit import RateLimiter, retry_after_seconds
from .settings import ALL_SCOPES


@dataclass(frozen=True)
class Principal:
    key_id: str  # a short hash of the key: safe to log and to scope idempotency keys by
    scopes: frozenset[str]


def parse_api_keys(spec: str) -> dict[str, frozenset[str]]:
    """Parse `key=scope1,scope2;key2=scope` into {key: scopes}."""
    keys: dict[str, frozenset[str]] = {}
    for part in spec.split(";"):
        part = part.strip()
        if not part:
            continue
        key, _, scopes = part.partition("=")
        wanted = {s.strip() for s in scopes.split(",") if s.strip()}
        unknown = wanted - set(ALL_SCOPES)
        if unknown:
            raise ValueError(f"unknown scopes in LOYALTY_API_KEYS: {sorted(unknown)}")
        keys[key.strip()] = frozenset(wanted)
    return keys


def key_with_scope(spec: str, scope: str) -> str:
    """The key of `LOYALTY_API_KEYS` a service presents to a neighbour for a call that needs
    `scope`: of the keys holding it, the one with the fewest scopes (least privilege; the first
    of those in the spec); "" when none holds it."""
    holding = [
        (len(scopes), n, key)
        for n, (key, scopes) in enumerate(parse_api_keys(spec).items())
        if scope in scopes
    ]
    return min(holding)[2] if holding else ""


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class _StoredKey:
    digest: bytes  # SHA-256 of the key: the key itself is not kept
    principal: Principal


class ApiKeys:
    """The configured keys, held only as SHA-256 digests (a dump of this object, a traceback's
    locals or a heap read shows no key). A presented key is hashed and compared with every
    stored digest in constant time, without stopping at a match, so the time taken says
    neither whether nor which key matched."""

    def __init__(self, spec: str) -> None:
        self._keys = tuple(
            _StoredKey(
                digest=hashlib.sha256(key.encode()).digest(),
                principal=Principal(key_id=key_id(key), scopes=scopes),
            )
            for key, scopes in parse_api_keys(spec).items()
        )

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._keys)} keys)"

    def authenticate(self, authorization: str | None) -> Principal:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ProblemError(
                401, "unauthorized", "an API key is required (Authorization: Bearer <key>)"
            )
        presented = hashlib.sha256(token.strip().encode()).digest()
        found: Principal | None = None
        for stored in self._keys:  # no early exit: every digest is compared
            if hmac.compare_digest(stored.digest, presented):
                found = stored.principal
        if found is None:
            raise ProblemError(401, "unauthorized", "the API key is not known")
        return found


def require_scope(scope: str | None) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency that authenticates the caller and checks one scope (None: any valid key)."""

    async def dependency(request: Request) -> Principal:
        principal = getattr(request.state, "principal", None)
        if principal is None:
            keys: ApiKeys = request.app.state.api_keys
            principal = keys.authenticate(request.headers.get("authorization"))
        if scope is not None and scope not in principal.scopes:
            raise ProblemError(403, "forbidden", f"this API key lacks the scope '{scope}'")
        request.state.principal = principal
        return principal

    return dependency


class AuthenticationMiddleware:
    """Checks the API key of every `/v1` request before anything reads its body, so a caller
    without a valid key learns only that (401), whatever else is wrong with the request.
    Scopes are checked per route (403) by `Scope(...)`. Failed authentications are throttled
    per client address (`failures`): once an address has spent its allowance of unknown or
    missing keys, its further ones answer 429 `rate_limited` with `Retry-After`, so guessing
    keys costs time. A valid key is authenticated before the throttle is asked: it is never
    refused by it, from any address."""

    def __init__(
        self,
        app: ASGIApp,
        keys: Callable[[], ApiKeys],
        failures: Callable[[], RateLimiter] | None = None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.failures = failures

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        authorization = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None
        )
        try:
            principal = self.keys().authenticate(authorization)
        except ProblemError as exc:
            wait = self.failures().take(_client_address(scope)) if self.failures else 0.0
            if wait > 0:
                seconds = retry_after_seconds(wait)
                response = problem_response(
                    429,
                    "rate_limited",
                    f"too many requests without a valid API key from this address; retry in "
                    f"{seconds} s",
                    headers={"Retry-After": str(seconds)},
                    instance=scope["path"],
                )
            else:
                response = problem_response(
                    exc.status, exc.code, exc.detail, headers={"WWW-Authenticate": "Bearer"}
                )
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


def _client_address(scope: ASGIScope) -> str:
    """The client's address as the server saw it (behind a trusted proxy, the address the
    proxy forwarded: uvicorn's `FORWARDED_ALLOW_IPS`)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def Scope(scope: str | None) -> Any:
    return Depends(require_scope(scope))
