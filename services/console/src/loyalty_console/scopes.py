"""What an API key may do, found through the services' public APIs.

The services offer no way to ask which scopes a key holds, so the console asks each service a
question that is answered by the scope check alone: a read that needs the scope, or a write
with an empty body, which a service refuses with 403 `forbidden` before it looks at the body
(422 when the key holds the scope). Nothing is written. 401 means the key is not known.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .neighbours import Api, ApiError

# scope → (service, method, path, body): answered 403 without the scope, never a write.
PROBES: dict[str, tuple[str, str, str, Any]] = {
    "members:read": ("member", "GET", "/v1/tiers", None),
    "members:write": ("member", "POST", "/v1/complaints", {}),
    "events:write": ("coupon", "POST", "/v1/validations", {}),
    "points:write": ("points", "POST", "/v1/accounts/-/adjustments", {}),
    "coupons:write": ("coupon", "POST", "/v1/coupon-templates", {}),
    "notify:write": ("notifier", "PUT", "/v1/templates/-/-/-", {}),
    "admin": ("segmenter", "GET", "/v1/admin/jobs", None),
}


class UnknownKey(Exception):
    """The services do not know the key (401)."""


class Throttled(Exception):
    """A service answered 429: its throttle of unknown keys per address (contract §3), which
    never refuses a valid key; a valid key meets a 429 only beyond its own request rate."""

    def __init__(self, retry_after: int | None) -> None:
        super().__init__(f"retry after {retry_after} s")
        self.retry_after = retry_after


async def _holds(api: Api, scope: str) -> bool:
    service, method, path, body = PROBES[scope]
    try:
        await api.call(service, method, path, json=body)
    except ApiError as exc:
        if exc.status == 401:
            raise UnknownKey(exc.detail) from exc
        if exc.status == 429:
            raise Throttled(exc.retry_after) from exc
        if exc.status == 403:
            return False
        if exc.status in (404, 422):  # past the scope check: the key holds the scope
            return True
        raise
    return True


async def discover_scopes(api: Api) -> frozenset[str]:
    """The scopes the key holds; UnknownKey when it holds none because no service knows it."""
    scopes = list(PROBES)
    held = await asyncio.gather(*(_holds(api, s) for s in scopes))
    return frozenset(s for s, ok in zip(scopes, held, strict=True) if ok)
