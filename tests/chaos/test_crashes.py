"""Crashes: the points service runs as a real process (`python -m loyalty_points serve`) while
the order stream arrives, and is SIGKILLed at chosen moments, then started again, several times:
inside a consumer transaction (mid-batch), just after a batch's database commit (before its Kafka
offset commit, so the batch comes again), while the outbox relay holds unsent rows, and at random.
At the end every account equals the oracle, no event was applied twice, nothing went to the
dead-letter topics, and every `points.*` event of the outbox reached the broker.

`make test` runs a small stream and a few kills; `make chaos` a larger one and many kills
(LOYALTY_CHAOS_CRASH_MEMBERS, LOYALTY_CHAOS_KILLS, LOYALTY_CHAOS_SEED). A restarted consumer
waits for the killed one's session to expire on the broker (10-18 s) before it gets partitions,
which is what each kill costs.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import orjson
import pytest
from loyalty_shared.db import create_engine, to_asyncpg_dsn
from loyalty_shared.events import POINTS
from loyalty_shared.kafka.broker import EmbeddedBroker, free_port
from loyalty_shared.testing import DatabaseFactory, until

from .oracle import expected_accounts
from .processes import MODES, PointsProcess, applied_but_not_committed, wait_for_moment
from .stream import (
    Publisher,
    check_points,
    consumed_everything,
    dead_letters,
    env_int,
    generate,
    handled_ids,
    read_all,
    record_figures,
)

MEMBERS = env_int("LOYALTY_CHAOS_CRASH_MEMBERS", 50)
KILLS = env_int("LOYALTY_CHAOS_KILLS", 3)
SEED = env_int("LOYALTY_CHAOS_SEED", 20)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240 + 60 * KILLS)]


@pytest.fixture
def broker() -> Iterator[str]:
    with EmbeddedBroker(free_port()) as running:
        yield running.bootstrap


async def test_sigkill_at_random_moments_loses_nothing_and_doubles_nothing(
    databases: DatabaseFactory, broker: str, tmp_path: Path
):
    rng = random.Random(SEED)
    stream = generate(SEED + 2, MEMBERS)
    expected = expected_accounts(stream.facts)
    handled = handled_ids(stream.facts)
    publisher = Publisher(broker)
    await publisher.ensure_topics()
    database_url = await databases.fresh("chaos_crash_points")
    points = PointsProcess(database_url, broker, tmp_path)
    # The stream in consecutive chunks, one published before each kill: there is always work
    # in flight to be killed in, and each member's events still arrive in their order.
    size = -(-len(stream.facts) // (KILLS + 1))
    chunks = [stream.facts[i : i + size] for i in range(0, len(stream.facts), size)]
    started = time.monotonic()
    kills: list[dict] = []
    db = await asyncpg.connect(to_asyncpg_dsn(database_url))
    try:
        points.start()
        await points.wait_healthy()
        published = 0  # handled events published so far
        for n in range(KILLS):
            # Let the service catch up with what it has (the restarted consumer first waits for
            # the killed one's session to expire), then give it a chunk and kill it in there.
            async def caught_up(target: int = published) -> bool:
                return await db.fetchval("SELECT count(*) FROM processed_events") >= target

            await until(caught_up, f"the service to catch up before kill {n + 1}", 90)
            chunk = chunks[n] if n < len(chunks) else []
            await publisher.publish(chunk)
            published += len(handled_ids(chunk))
            mode = MODES[n % len(MODES)] if n < len(MODES) else rng.choice(MODES)
            hit = await wait_for_moment(db, mode, rng)
            points.kill()
            kills.append(
                {
                    "mode": mode if hit else f"{mode} (moment not seen: killed anyway)",
                    "processed": await db.fetchval("SELECT count(*) FROM processed_events"),
                    "of": published,
                    "redelivered": await applied_but_not_committed(db, broker),
                }
            )
            points.start()
            await points.wait_healthy()
        for chunk in chunks[KILLS:]:
            await publisher.publish(chunk)

        async def done() -> bool:
            if not await consumed_everything(broker, publisher.ends):
                return False
            return not await db.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")

        await until(done, "the restarted service to consume everything and relay its outbox", 120)
        assert points.alive(), points.log_tail()

        engine = create_engine(database_url)
        try:
            async with engine.connect() as conn:
                report = await check_points(conn, expected, handled)
        finally:
            await engine.dispose()
        report.assert_ok()
        assert await dead_letters(broker) == 0

        # Every points.* event the service wrote reached the broker (some more than once).
        outbox_ids = {row["event_id"] for row in await db.fetch("SELECT event_id FROM outbox")}
        on_topic = Counter(orjson.loads(r.value)["id"] for r in await read_all(broker, [POINTS]))
        missing = outbox_ids - set(on_topic)
        if missing:
            rows = await db.fetch(
                "SELECT seq, key, type, created_at, sent_at FROM outbox "
                "WHERE event_id = ANY($1::text[]) ORDER BY seq",
                list(missing),
            )
            total = await db.fetchval("SELECT count(*) FROM outbox")
            raise AssertionError(
                f"{len(missing)} of {total} outbox events never reached the broker "
                f"({len(on_topic)} on it); seqs {[r['seq'] for r in rows][:40]}; "
                f"first {dict(rows[0])}; last {dict(rows[-1])}; kills {kills}"
            )
        assert set(on_topic) - outbox_ids == set()
        figures = {
            "events": len(stream.facts),
            "accounts": report.accounts,
            "ledger_entries": report.entries,
            "kills": len(kills),
            "kills_mid_work": sum(1 for k in kills if k["processed"] < k["of"]),
            "kills_leaving_applied_events_to_redeliver": sum(1 for k in kills if k["redelivered"]),
            "points_events": len(outbox_ids),
            "points_events_published_again": sum(1 for n in on_topic.values() if n > 1),
            "seconds": round(time.monotonic() - started, 1),
        }
        figures["kill_log"] = kills
        record_figures("crashes: SIGKILL of the points service", figures)
    finally:
        points.stop()
        await db.close()
