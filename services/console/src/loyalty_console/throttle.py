"""The throttle of failed sign-ins per client address.

Each sign-in attempt asks every service about the key (scopes.py), so without a limit the
console's sign-in form multiplies a key guesser's requests. After `limit` failed sign-ins
within `window` seconds from one address (an IPv6 client by its /64, which one subscriber
usually holds whole), further attempts from it are answered 429 with `Retry-After` and never
reach the services, until the oldest of those failures is `window` seconds old. Refused
attempts do not count, so an address that keeps trying gets `limit` probes a window, no more.

A successful sign-in resets nothing: otherwise a guesser holding one valid key of their own
could wipe the count with it every few guesses. Instead, a key that has signed in on this
console before is let through even while its address is throttled (its HMAC digest is kept
under a per-process secret, never the key), so a colleague's mistyping or a guesser behind
the same shop's NAT does not lock out the operators who work there. A key this console has
not yet seen succeed cannot be told from a guess without asking the services, which is what
the throttle withholds: from a throttled address it waits like a guess.

Client addresses are what uvicorn reports: behind a trusted proxy (`FORWARDED_ALLOW_IPS`),
the address the proxy forwarded.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable


def client_key(host: str | None) -> str:
    """The unit a throttle counts: an IPv4 address, an IPv6 /64, or the host as given."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:255]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def retry_after(wait: float) -> int:
    """Whole seconds for `Retry-After`: rounded up, at least 1."""
    return max(1, math.ceil(wait))


class SignInThrottle:
    def __init__(
        self,
        limit: int,
        window: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = 100_000,
        max_known_keys: int = 10_000,
    ) -> None:
        self.limit = limit  # 0: no throttle
        self.window = window
        self.clock = clock
        self.max_addresses = max_addresses
        self.max_known_keys = max_known_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._known: OrderedDict[bytes, None] = OrderedDict()
        self._secret = secrets.token_bytes(32)

    # --- failures per address ----------------------------------------------------------------

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def failures(self, host: str | None) -> int:
        """Failed sign-ins from the address within the window."""
        times = self._recent(client_key(host), self.clock())
        return len(times) if times else 0

    def wait(self, host: str | None) -> float:
        """0 when the address may try; else the seconds until it may again."""
        if self.limit <= 0:
            return 0.0
        now = self.clock()
        times = self._recent(client_key(host), now)
        if times is None or len(times) < self.limit:
            return 0.0
        # Once the failure that brought the count to the limit is a window old, one more try.
        return max(times[len(times) - self.limit] + self.window - now, 0.0)

    def failed(self, host: str | None) -> None:
        if self.limit <= 0:
            return
        key, now = client_key(host), self.clock()
        times = self._recent(key, now)
        if times is None:
            if len(self._failures) >= self.max_addresses:
                self._forget(now)
            times = self._failures[key] = deque()
        times.append(now)
        self._failures.move_to_end(key)

    def _forget(self, now: float) -> None:
        """Memory stays bounded whoever sends: the expired first, then the longest quiet."""
        for key in [k for k, t in self._failures.items() if t[-1] <= now - self.window]:
            del self._failures[key]
        while len(self._failures) >= self.max_addresses:
            self._failures.popitem(last=False)

    # --- keys that have signed in here -------------------------------------------------------

    def _digest(self, api_key: str) -> bytes:
        return hmac.new(self._secret, api_key.encode(), hashlib.sha256).digest()

    def remember(self, api_key: str) -> None:
        digest = self._digest(api_key)
        self._known[digest] = None
        self._known.move_to_end(digest)
        while len(self._known) > self.max_known_keys:
            self._known.popitem(last=False)

    def known(self, api_key: str) -> bool:
        return self._digest(api_key) in self._known
