"""API-key authentication with scopes (`Authorization: Bearer <key>`)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request

from .errors import ProblemError
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


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class ApiKeys:
    def __init__(self, spec: str) -> None:
        self._keys = parse_api_keys(spec)

    def authenticate(self, authorization: str | None) -> Principal:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ProblemError(
                401, "unauthorized", "an API key is required (Authorization: Bearer <key>)"
            )
        token = token.strip()
        for key, scopes in self._keys.items():
            if hmac.compare_digest(key.encode(), token.encode()):
                return Principal(key_id=key_id(key), scopes=scopes)
        raise ProblemError(401, "unauthorized", "the API key is not known")


def require_scope(scope: str | None) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency that authenticates the caller and checks one scope (None: any valid key)."""

    async def dependency(request: Request) -> Principal:
        keys: ApiKeys = request.app.state.api_keys
        principal = keys.authenticate(request.headers.get("authorization"))
        if scope is not None and scope not in principal.scopes:
            raise ProblemError(403, "forbidden", f"this API key lacks the scope '{scope}'")
        request.state.principal = principal
        return principal

    return dependency


def Scope(scope: str | None) -> Any:
    return Depends(require_scope(scope))
