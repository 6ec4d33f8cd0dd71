"""Exactly-once effects over at-least-once delivery: a seeded stream of sign-ups and orders
published onto the real broker, to the points service on a fresh database, once cleanly, then
twice over with random duplicates, re-sent facts and members reordered among themselves; every
account equals the oracle's, every balance the sum of its ledger, every event applied once.
Then `release-pending` at a fixed time, against the oracle again."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import loyalty_points.bootstrap
import pytest
from loyalty_shared.kafka.broker import EmbeddedBroker, free_port
from loyalty_shared.testing import DatabaseFactory, RunningService, start_service, until

from .oracle import expected_accounts
from .stream import (
    WINDOW_START,
    Delivery,
    Publisher,
    Stream,
    check_points,
    consumed_everything,
    dead_letters,
    env_int,
    generate,
    handled_ids,
    record_figures,
    twice_with_duplicates,
)

MEMBERS = env_int("LOYALTY_CHAOS_MEMBERS", 300)
SEED = env_int("LOYALTY_CHAOS_SEED", 20)
# About half the purchase lots are due: orders of the window's first half.
RELEASE_AS_OF = WINDOW_START + timedelta(days=7, hours=84)


@pytest.fixture
def broker() -> Iterator[str]:
    """A broker of this test's own: its topics hold this stream and nothing else."""
    with EmbeddedBroker(free_port()) as running:
        yield running.bootstrap


async def replay(
    databases: DatabaseFactory, bootstrap: str, stream: Stream, delivery: Delivery, **settings
) -> dict:
    coverage: Counter[str] = Counter()
    expected = expected_accounts(stream.facts, coverage=coverage)
    handled = handled_ids(delivery.facts)
    assert expected_accounts(delivery.facts) == expected  # the oracle deduplicates too
    publisher = Publisher(bootstrap)
    await publisher.ensure_topics()
    points: RunningService = await start_service(
        loyalty_points.bootstrap.definition(),
        database_url=await databases.fresh("chaos_replay_points"),
        bootstrap=bootstrap,
        **settings,
    )
    started = time.monotonic()
    try:
        await publisher.publish(delivery.facts)

        async def done() -> bool:
            return await consumed_everything(bootstrap, publisher.ends)

        await until(done, "the points consumer to read the whole stream", 120)
        async with points.runtime.engine.connect() as conn:
            report = await check_points(conn, expected, handled)
        report.assert_ok()
        assert await dead_letters(bootstrap) == 0
        applied_in = time.monotonic() - started

        # The accounts answer what the database holds (a sample over HTTP).
        for member_id in stream.members[:: max(len(stream.members) // 20, 1)]:
            account = (await points.client.get(f"/v1/accounts/{member_id}")).json()
            want = expected[member_id]
            assert (account["available"], account["pending"], account["lifetime_earned"]) == (
                want.balances()
            )

        response = await points.client.post(
            "/v1/admin/jobs/release-pending/run", json={"as_of": RELEASE_AS_OF.isoformat()}
        )
        assert response.status_code == 200, response.text
        released = expected_accounts(stream.facts, release_as_of=RELEASE_AS_OF)
        async with points.runtime.engine.connect() as conn:
            after = await check_points(conn, released, handled)
        after.assert_ok()
        return {
            "events_published": publisher.sent,
            "distinct_events": len({f.event_id for f in delivery.facts}),
            "duplicates": delivery.duplicates,
            "resent": delivery.resent,
            "accounts": report.accounts,
            "entries": after.entries,
            "lots_released": response.json()["counts"]["lots_released"],
            "seconds": round(applied_in, 1),
            "rules_exercised": dict(coverage),
        }
    finally:
        await points.stop()


async def test_a_clean_single_pass_equals_the_oracle(databases: DatabaseFactory, broker: str):
    stream = generate(SEED, MEMBERS)
    figures = await replay(databases, broker, stream, Delivery(list(stream.facts)))
    record_figures("replay: clean single pass", figures)


async def test_twice_with_duplicates_and_reorderings_equals_the_oracle(
    databases: DatabaseFactory, broker: str
):
    stream = generate(SEED + 1, MEMBERS)
    delivery = twice_with_duplicates(stream, SEED + 1)
    assert delivery.duplicates > len(stream.facts) and delivery.resent > 0
    # Smaller consumer batches: duplicates fall both within one batch and across batches.
    figures = await replay(databases, broker, stream, delivery, consumer_batch_size=200)
    record_figures("replay: twice with duplicates and reorderings", figures)
