"""Idempotency-Key under crashes (contract §3): the points service runs as a real process and is
SIGKILLed around keyed requests that spend or grant points; the same key retried after more than
a minute must find either the first answer or no effect at all, never a second effect.

- The answer is lost: a proxy between client and service kills the service the moment the
  response's first bytes come back (so the effect has committed) and drops the connection; the
  client retries after the service is back, its key's row aged by two minutes: the first answer,
  replayed, and one effect.
- The request is killed while it runs: the test holds the account's row lock, so the request
  waits inside its transaction; retries meanwhile answer 409 `idempotency_key_in_progress`, even
  with the key's row aged past a minute; then SIGKILL, and after the restart a retry runs the
  request once.
- Back to back: the same request twice in a row with one key, over a real socket, answers the
  first answer twice (it was stored before the response left), never a 409.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from loyalty_shared.db import to_asyncpg_dsn
from loyalty_shared.kafka.broker import EmbeddedBroker, free_port
from loyalty_shared.testing import DatabaseFactory, until

from .processes import PointsProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MEMBER = "m-idem-crash"


@pytest.fixture
def broker() -> Iterator[str]:
    with EmbeddedBroker(free_port()) as running:
        yield running.bootstrap


class KillOnAnswer:
    """A TCP proxy to the service that, when the service starts to answer, SIGKILLs it and
    closes the client's connection without passing a byte on."""

    def __init__(self, service: PointsProcess) -> None:
        self.service = service
        self.port = free_port()
        self.killed = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> KillOnAnswer:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _connection(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter):
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.service.port)

        async def forward_request() -> None:
            while data := await client_r.read(65536):
                up_w.write(data)
                await up_w.drain()

        forwarding = asyncio.create_task(forward_request())
        await up_r.read(1)  # the service has committed and begun its answer
        assert self.service.process is not None
        os.kill(self.service.process.pid, signal.SIGKILL)
        self.service.process.wait()
        self.killed.set()
        forwarding.cancel()
        client_w.transport.abort()
        up_w.transport.abort()


async def _age_keys(db: asyncpg.Connection) -> None:
    """As if more than a minute had passed since the keys were first used."""
    await db.execute("UPDATE idempotency_keys SET created_at = created_at - interval '2 minutes'")


async def _entries(db: asyncpg.Connection, kind: str) -> int:
    return await db.fetchval(
        "SELECT count(*) FROM ledger_entries WHERE member_id = $1 AND kind = $2", MEMBER, kind
    )


OPERATIONS = {
    # name: (path, body, the ledger entry kind each effect writes)
    "redemption": (
        "/v1/redemptions",
        {"member_id": MEMBER, "points": 70, "reason": "tea"},
        "redeem",
    ),
    "adjustment": (
        f"/v1/accounts/{MEMBER}/adjustments",
        {"points": 30, "reason": "goodwill"},
        "adjust",
    ),
}


async def test_a_keyed_request_is_one_effect_and_one_answer_whatever_the_crash(
    databases: DatabaseFactory, broker: str, tmp_path: Path
):
    database_url = await databases.fresh("chaos_idempotency")
    points = PointsProcess(database_url, broker, tmp_path)
    points.start()
    await points.wait_healthy()
    db = await asyncpg.connect(to_asyncpg_dsn(database_url))
    try:
        async with points.client() as client:
            grant = await client.post(
                f"/v1/accounts/{MEMBER}/adjustments",
                json={"points": 1000, "reason": "opening balance"},
            )
            assert grant.status_code == 201, grant.text
        baseline = {kind: await _entries(db, kind) for kind in ("redeem", "adjust")}

        # 1. The answer is lost after the commit; the retry after a minute replays it.
        for name, (path, body, kind) in OPERATIONS.items():
            key = {"Idempotency-Key": f"lost-answer-{name}"}
            async with KillOnAnswer(points) as proxy:
                async with httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{proxy.port}", headers=points.client().headers
                ) as through_proxy:
                    with pytest.raises(httpx.HTTPError):
                        await through_proxy.post(path, json=body, headers=key)
                await asyncio.wait_for(proxy.killed.wait(), 10)
            assert await _entries(db, kind) == baseline[kind] + 1  # the effect committed
            await _age_keys(db)
            points.start()
            await points.wait_healthy()
            async with points.client() as client:
                retry = await client.post(path, json=body, headers=key)
                again = await client.post(path, json=body, headers=key)
            assert retry.status_code == 201, retry.text
            assert retry.headers.get("idempotent-replayed") == "true"
            assert again.json() == retry.json()
            assert await _entries(db, kind) == baseline[kind] + 1, f"{name} ran twice"
            baseline[kind] += 1

        # 2. Killed while it runs: 409 however long it runs, then after the crash it runs once.
        path, body, kind = OPERATIONS["redemption"]
        key = {"Idempotency-Key": "killed-while-running"}
        holder = await asyncpg.connect(to_asyncpg_dsn(database_url))
        lock = holder.transaction()
        await lock.start()
        await holder.execute("SELECT 1 FROM accounts WHERE member_id = $1 FOR UPDATE", MEMBER)
        async with points.client() as client:
            first = asyncio.create_task(client.post(path, json=body, headers=key))
            await until(
                lambda: db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                ),
                "the redemption waiting on the account's lock",
                timeout=20,
            )
            for aged in (False, True):
                if aged:
                    await _age_keys(db)
                    await asyncio.sleep(4)  # the lease is renewed while the request runs
                waiting = await client.post(path, json=body, headers=key)
                assert waiting.status_code == 409, waiting.text
                assert waiting.json()["code"] == "idempotency_key_in_progress"
                assert int(waiting.headers["retry-after"]) >= 1
            points.kill()
            with pytest.raises(httpx.HTTPError):
                await first
        await lock.rollback()
        await holder.close()
        assert await _entries(db, kind) == baseline[kind]  # the killed run left nothing
        points.start()
        await points.wait_healthy()
        async with points.client() as client:

            async def retried() -> httpx.Response | None:
                response = await client.post(path, json=body, headers=key)
                return None if response.status_code == 409 else response

            # the dead run's lease lapses within seconds; then the retry runs the request
            answer = await until(retried, "the dead run's lease to lapse", timeout=30)
            assert answer.status_code == 201, answer.text
            assert "idempotent-replayed" not in answer.headers
            replay = await client.post(path, json=body, headers=key)
            assert replay.json() == answer.json()
        assert await _entries(db, kind) == baseline[kind] + 1
        baseline[kind] += 1

        # 3. Back to back over a real socket: the first answer twice, never a 409.
        async with points.client() as client:
            for n in range(20):
                key = {"Idempotency-Key": f"back-to-back-{n}"}
                small = {**body, "points": 1}
                one = await client.post(path, json=small, headers=key)
                two = await client.post(path, json=small, headers=key)
                assert one.status_code == two.status_code == 201, (one.text, two.text)
                assert two.json() == one.json()
        assert await _entries(db, kind) == baseline[kind] + 20
    finally:
        await db.close()
        points.stop()
