"""Per-API-key rate limits: a token bucket per key and process; over it, 429 `rate_limited`.
The same buckets, by client address, throttle failed authentications (`auth.py`).

The middleware runs right after authentication, so it knows the caller's key, and before the
write guard and the routes, so a refused request reads no body, records no Idempotency-Key
and changes nothing. Only `/v1/` requests count; `/healthz`, `/readyz` and `/metrics` never do.
The limits hold per process: N replicas let a key through N times as fast.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Send
from starlette.types import Scope as ASGIScope

from .errors import problem_response

_EPSILON = 1e-9


@dataclass
class _Bucket:
    tokens: float
    updated: float  # the monotonic clock's reading when `tokens` was last brought up to date


class RateLimiter:
    """Token buckets by key id: each holds up to `burst` requests and refills at `per_second`.
    `per_second` 0 switches the limit off. `monotonic` is the clock in seconds (injectable, so
    that tests can move time)."""

    def __init__(
        self,
        per_second: float,
        burst: int,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        max_buckets: int = 100_000,
    ) -> None:
        self.per_second = max(per_second, 0.0)
        # A bucket smaller than one request would refuse everything: hold at least one second's
        # worth (and at least one request) when no burst is given.
        self.burst = burst if burst >= 1 else max(1, math.ceil(self.per_second))
        self.monotonic = monotonic
        # By key id, one per configured key; by client address, as many as send: bounded
        self._buckets: dict[str, _Bucket] = {}
        self.max_buckets = max_buckets

    @property
    def enabled(self) -> bool:
        return self.per_second > 0

    def take(self, key_id: str) -> float:
        """Spend one request of the key's bucket: 0 when it may go ahead, else the seconds to
        wait until one is available again. Nothing awaits in here, so on one event loop the
        check and the spend cannot interleave with another request's."""
        if not self.enabled:
            return 0.0
        now = self.monotonic()
        bucket = self._buckets.get(key_id)
        if bucket is None:
            if len(self._buckets) >= self.max_buckets:
                self._forget_full(now)
            bucket = self._buckets[key_id] = _Bucket(tokens=float(self.burst), updated=now)
        else:
            elapsed = max(now - bucket.updated, 0.0)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.per_second)
            bucket.updated = now
        if bucket.tokens >= 1.0 - _EPSILON:  # float sums of small refills fall just short
            bucket.tokens = max(bucket.tokens - 1.0, 0.0)
            return 0.0
        return (1.0 - bucket.tokens) / self.per_second

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled (a full bucket is as good as none); if every
        one is still in use, the older half: memory stays bounded whoever sends."""
        refill = self.burst / self.per_second
        self._buckets = {k: b for k, b in self._buckets.items() if now - b.updated < refill}
        if len(self._buckets) >= self.max_buckets:
            by_age = sorted(self._buckets, key=lambda k: self._buckets[k].updated)
            for key in by_age[: len(by_age) // 2 + 1]:
                del self._buckets[key]


def failed_authentications(per_minute: int) -> RateLimiter:
    """The throttle of failed authentications per client address (contract §3): `per_minute`
    unknown or missing keys may come from one address at once and per minute; 0: no throttle."""
    return RateLimiter(per_minute / 60.0, per_minute)


def retry_after_seconds(wait: float) -> int:
    """`Retry-After` in whole seconds, rounded up and at least 1, so a client that waits that
    long finds a request available."""
    return max(1, math.ceil(wait))


class RateLimitMiddleware:
    """Refuses a `/v1/` request of a key over its limit with 429 `rate_limited` and
    `Retry-After`. Placed inside `AuthenticationMiddleware`, which leaves the caller's
    Principal in `scope["state"]["principal"]`."""

    def __init__(self, app: ASGIApp, limiter: Callable[[], RateLimiter]) -> None:
        self.app = app
        self.limiter = limiter  # read per request, so that tests may swap it on app.state

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        principal = scope.get("state", {}).get("principal")
        if principal is None:  # not authenticated: the routes answer 401 themselves
            await self.app(scope, receive, send)
            return
        wait = self.limiter().take(principal.key_id)
        if wait > 0:
            seconds = retry_after_seconds(wait)
            response = problem_response(
                429,
                "rate_limited",
                f"this API key sent more requests than its limit allows; retry in {seconds} s",
                headers={"Retry-After": str(seconds)},
                instance=scope["path"],
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
