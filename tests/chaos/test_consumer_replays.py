"""Exactly-once effects over at-least-once delivery, for the member, coupon, notifier and
segmenter consumers: each service (in process, real broker and database) is fed a seeded stream
of the events it consumes, once cleanly into one fresh database, and twice over with random
duplicates, re-sent facts and members reordered among themselves (never a member's own events)
into another. The oracle for these services is the clean single pass: the second state must
equal it, and its outbox must hold as many facts of each type (nothing produced twice) and
consistent chains of state changes. Both passes must meet the plain-Python expectations of
consumers.py, dead-letter nothing and record every handled event once in processed_events.

The two passes of a service run side by side, each with a broker of its own.
Sizes: LOYALTY_CHAOS_MEMBERS (default 40 here), LOYALTY_CHAOS_SEED.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from loyalty_shared.clock import FixedClock
from loyalty_shared.events import decode_event
from loyalty_shared.kafka.broker import EmbeddedBroker, free_port
from loyalty_shared.testing import DatabaseFactory, start_service, until

from .consumers import CONSUMERS, Consumer, analyze, diff, halves, observe, verify
from .stream import Delivery, env_int, read_all, record_figures
from .streams_other import Publisher, Stream, clean, consumed_everything, twice_with_duplicates

MEMBERS = env_int("LOYALTY_CHAOS_MEMBERS", 40)
SEED = env_int("LOYALTY_CHAOS_SEED", 20)
# 04:00 UTC: noon in Shanghai, 04:00 in London, 23:00 in New York (quiet hours for two of them)
BASE = datetime(2026, 3, 2, 4, 0, tzinfo=UTC)

pytestmark = pytest.mark.timeout(300 + MEMBERS // 2)
# Migrations (alembic) keep global state: two services of one process start one at a time.
_STARTING = asyncio.Lock()


async def replay(
    consumer: Consumer,
    databases: DatabaseFactory,
    stream: Stream,
    delivery: Delivery,
    batch_size: int,
) -> dict[str, Any]:
    """Deliver onto a broker of this pass's own, phase by phase (each consumed before the next
    goes out, in two halves with fresh statistics in between), to the service on a fresh
    database with the clock at BASE; answer what it holds, what its API answers for a sample of
    members, and figures."""
    started = time.monotonic()
    items = delivery.facts
    with EmbeddedBroker(free_port()) as broker:
        async with _STARTING:
            service = await start_service(
                consumer.definition(),
                database_url=await databases.fresh(f"chaos_replay_{consumer.name}"),
                bootstrap=broker.bootstrap,
                clock=FixedClock(BASE),
                consumer_batch_size=batch_size,
            )
        try:
            ctx = await consumer.setup(service.client, stream)
            publisher = Publisher(broker.bootstrap, consumer.rewrite(ctx))
            await publisher.ensure_topics(consumer.topics())
            for phase in sorted({item.phase for item in items}):  # type: ignore[attr-defined]
                if phase > 0:
                    async with service.runtime.engine.connect() as conn:
                        await consumer.between_phases(conn, ctx, stream)
                part = [i for i in items if i.phase == phase]  # type: ignore[attr-defined]
                for n, half in enumerate(halves(part)):  # type: ignore[arg-type]
                    if phase > 0 or n > 0:
                        async with service.runtime.engine.connect() as conn:
                            await analyze(conn)
                    await publisher.publish(half)

                    async def done() -> bool:
                        return await consumed_everything(
                            broker.bootstrap, consumer.group, consumer.consumes, publisher.ends
                        )

                    await until(done, f"the {consumer.name} consumer to read phase {phase}", 240)
            await consumer.finish(service.client, stream)
            async with service.runtime.engine.connect() as conn:
                observed = await observe(consumer, conn, ctx)
            observed["sample"] = await consumer.sample(service.client, ctx, stream)
            dead = await read_all(broker.bootstrap, [t for t in consumer.topics() if ".dlq." in t])
        finally:
            await service.stop()
    observed["dead"] = Counter(decode_event(r.value).type for r in dead)
    observed["published"] = publisher.sent
    observed["seconds"] = round(time.monotonic() - started, 1)
    return observed


@pytest.mark.parametrize("service", list(CONSUMERS))
async def test_twice_with_duplicates_and_reorderings_equals_a_clean_single_pass(
    service: str, databases: DatabaseFactory
):
    consumer = CONSUMERS[service]()
    stream = consumer.generate(SEED + 11, MEMBERS, BASE)
    once = clean(stream)
    twice = twice_with_duplicates(stream, SEED + 11, resend=consumer.resend)
    assert twice.duplicates > len(stream.items)
    assert twice.resent > 0 or not consumer.resend

    # Smaller batches for the replay: duplicates fall both within one batch and across batches.
    first, second = await asyncio.gather(
        replay(consumer, databases, stream, once, batch_size=1000),
        replay(consumer, databases, stream, twice, batch_size=60),
    )
    for name, delivery, got in (("clean pass", once, first), ("replay", twice, second)):
        assert not got["dead"], f"{name}: dead-lettered {dict(got['dead'])}"
        problems = verify(consumer, stream, delivery.facts, got, BASE)  # type: ignore[arg-type]
        assert not problems, f"{name}: {len(problems)} problems:\n" + "\n".join(problems[:25])

    differences = diff(first["state"], second["state"])
    assert not differences, "the replay's state differs from the clean pass's:\n" + "\n".join(
        differences
    )
    assert second["outbox"] == first["outbox"], (
        f"outbox facts: {dict(second['outbox'])} after the replay, {dict(first['outbox'])} "
        "after the clean pass"
    )
    assert second["sample"] == first["sample"], diff(first["sample"], second["sample"])
    record_figures(
        f"replay: {service}, twice with duplicates and reorderings against a clean pass",
        {
            "members": len(stream.members),
            "events": len(stream.items),
            "delivered_in_replay": second["published"],
            "duplicates": twice.duplicates,
            "resent": twice.resent,
            "outbox_clean": dict(first["outbox_all"]),
            "outbox_replay": dict(second["outbox_all"]),
            "seconds_clean": first["seconds"],
            "seconds_replay": second["seconds"],
        },
    )
