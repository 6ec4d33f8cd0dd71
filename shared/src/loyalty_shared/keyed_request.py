"""The transaction of a request sent with an Idempotency-Key, held open until its answer is stored.

Contract §3: the stored answer commits in the same transaction as the request's effect, so a
retry after any crash finds either that answer or no effect at all. While a keyed request runs,
`Runtime.transaction()` does not commit when its block ends: it hands its transaction to the
request's `KeyedRequest`, and the write guard (`idempotency.py`) stores the answer on that
connection and commits both together, before the response leaves.

A request whose work takes several transactions (a saga step, then a call to another service)
commits each earlier one when the next begins: only the last carries the answer, and the earlier
steps must be safe to run again, as they already are for a client that retries without a key.
Reads in the request (`Runtime.reading()`) see the held transaction's writes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncConnection

_current: ContextVar[KeyedRequest | None] = ContextVar("loyalty_keyed_request", default=None)


@dataclass
class KeyedRequest:
    """The held transaction of one keyed request (at most one at a time)."""

    owner: asyncio.Task[object] | None = field(default_factory=asyncio.current_task)
    held: AsyncConnection | None = None
    closed: bool = False

    async def hold(self, conn: AsyncConnection) -> None:
        """Keep `conn`'s open transaction for the answer; an earlier held one commits now."""
        await self.commit_held()
        self.held = conn

    async def commit_held(self) -> None:
        conn, self.held = self.held, None
        if conn is not None:
            try:
                await conn.commit()
            finally:
                await conn.close()

    def take(self) -> AsyncConnection | None:
        """The held connection, now the caller's to commit or roll back and close."""
        conn, self.held = self.held, None
        return conn

    async def rollback(self) -> None:
        conn, self.held = self.held, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.rollback()
            with contextlib.suppress(Exception):
                await conn.close()


def current() -> KeyedRequest | None:
    """The keyed request this code runs for, if any: only in the request's own task, so work it
    spawned to run on after the answer (a background task inherits the context) commits as any
    other work does."""
    keyed = _current.get()
    if keyed is None or keyed.closed or keyed.owner is not asyncio.current_task():
        return None
    return keyed


@contextlib.contextmanager
def running(keyed: KeyedRequest) -> Iterator[KeyedRequest]:
    token = _current.set(keyed)
    try:
        yield keyed
    finally:
        _current.reset(token)
        keyed.closed = True
