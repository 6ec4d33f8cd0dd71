"""Identifiers: ULIDs that sort in the order this process made them."""

from __future__ import annotations

import os
import threading
import time

from ulid import ULID

_lock = threading.Lock()
_last = (0, 0)


def monotonic_ulid() -> str:
    """A ULID string; two made by this process in the same millisecond still sort in order."""
    global _last
    with _lock:
        ms = time.time_ns() // 1_000_000
        last_ms, last_random = _last
        if ms <= last_ms:
            ms, randomness = last_ms, last_random + 1
        else:
            randomness = int.from_bytes(os.urandom(10), "big") >> 1  # room to count up
        _last = (ms, randomness)
    return str(ULID.from_bytes(ms.to_bytes(6, "big") + randomness.to_bytes(10, "big")))
