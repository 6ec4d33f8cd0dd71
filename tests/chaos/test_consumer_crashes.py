"""Crashes of the member, coupon, notifier and segmenter consumers: each service runs as a real
process (`python -m loyalty_<service> serve`, with a broker and a database of its own) while its
stream arrives in chunks, and is SIGKILLed in some chunks, then started again: inside a consumer
transaction (mid-batch), between a batch's database commit and its offset commit (a gate in
front of the broker holds the offset commit back, so the batch is certainly redelivered), while
the outbox relay holds unsent rows, and at random. At the end its state equals that of a clean
single pass of the same stream (in process, on a fresh database), every handled event was
recorded once, nothing went to a dead-letter topic, and every outbox event reached its topic:
each event id at least once (a kill between the relay's send and its marking the rows sent
publishes them again, which the contract allows and consumers deduplicate), none that the
outbox does not hold.

The four services are crashed side by side: a restarted consumer waits for the killed one's
session to expire on its broker (10-18 s), and those waits overlap.
`make test` runs a small stream and 2 kills per service; `make chaos` a larger one and many kills
(LOYALTY_CHAOS_CRASH_MEMBERS, LOYALTY_CHAOS_KILLS, LOYALTY_CHAOS_SEED).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import pytest_asyncio
from loyalty_shared.clock import FixedClock
from loyalty_shared.db import create_engine, to_asyncpg_dsn
from loyalty_shared.events import decode_event
from loyalty_shared.kafka import apply_events
from loyalty_shared.testing import DatabaseFactory, start_service, until

from .consumers import (
    CONSUMERS,
    Consumer,
    NotifierConsumer,
    analyze,
    diff,
    halves,
    handled_types,
    observe,
    verify,
)
from .processes import (
    MODES,
    GatedBroker,
    ServiceProcess,
    applied_but_not_committed,
    kill_at_moment,
)
from .stream import env_int, read_all, record_figures
from .streams_other import Item, Publisher, Stream, consumed_everything

MEMBERS = env_int("LOYALTY_CHAOS_CRASH_MEMBERS", 24)
KILLS = env_int("LOYALTY_CHAOS_KILLS", 2)
SEED = env_int("LOYALTY_CHAOS_SEED", 20)
SERVICES = list(CONSUMERS)
# The member service writes outbox rows only when a tier changes: too few to catch its relay
# half-way; the others are killed in all four ways.
KILL_MODES = {"member": ("mid-batch", "after-db-commit", "random")}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300 + 45 * KILLS)]
# Migrations (alembic) keep global state: the reference services start one at a time.
_STARTING = asyncio.Lock()


def consumer_of(service: str) -> Consumer:
    # The processes run on the system clock: without quiet hours what the notifier defers
    # does not depend on the hour the test runs at.
    return NotifierConsumer(quiet_hours=False) if service == "notifier" else CONSUMERS[service]()


def chunks_of(stream: Stream, kills: int) -> list[tuple[int, list[Item]]]:
    """The stream in consecutive chunks, each phase cut apart, `kills + phases` of them in
    all (at least one per phase), more where a phase is longer."""
    phases = sorted({item.phase for item in stream.items})
    sizes = {p: len(stream.phase(p)) for p in phases}
    total = sum(sizes.values())
    pieces = {p: 1 for p in phases}
    for _ in range(kills):
        p = max(phases, key=lambda p: sizes[p] / (pieces[p] + 1) if total else 0)
        pieces[p] += 1
    out = []
    for p in phases:
        items = stream.phase(p)
        size = -(-len(items) // pieces[p])
        out += [(p, items[i : i + size]) for i in range(0, len(items), size)]
    return out


async def clean_pass(
    consumer: Consumer, databases: DatabaseFactory, stream: Stream
) -> dict[str, Any]:
    """The oracle: the stream applied once, in order, through the service's own handlers,
    inbox and transactions (batches of 50), in process on a fresh database."""
    async with _STARTING:
        service = await start_service(
            consumer.definition(),
            database_url=await databases.fresh(f"chaos_clean_{consumer.name}"),
            bootstrap="127.0.0.1:9",  # no broker: nothing is consumed or relayed by itself
            clock=FixedClock(stream.base),
            background=False,
        )
    try:
        runtime = service.runtime
        table = runtime.definition.handlers(runtime)  # type: ignore[misc]
        ctx = await consumer.setup(service.client, stream)
        for phase in sorted({item.phase for item in stream.items}):
            if phase > 0:
                async with runtime.engine.connect() as conn:
                    await consumer.between_phases(conn, ctx, stream)
            publisher = Publisher("unused", consumer.rewrite(ctx))
            for n, half in enumerate(halves(stream.phase(phase))):
                if phase > 0 or n > 0:
                    async with runtime.engine.connect() as conn:
                        await analyze(conn)
                events = [decode_event(publisher.encode(i)[2]) for i in half]
                for start in range(0, len(events), 50):
                    async with runtime.transaction() as conn:
                        await apply_events(
                            conn, runtime.consumer_group, table, events[start : start + 50]
                        )
        await consumer.finish(service.client, stream)
        async with runtime.engine.connect() as conn:
            observed = await observe(consumer, conn, ctx)
        observed["sample"] = await consumer.sample(service.client, ctx, stream)
        return observed
    finally:
        await service.stop()


async def crash(
    service: str, index: int, databases: DatabaseFactory, log_dir: Path, base: datetime
) -> dict[str, Any]:
    """Feed the service's real process its stream, killing it once per chunk; answer what its
    database, outbox, topics and dead-letter topics hold, and the kills."""
    consumer = consumer_of(service)
    rng = random.Random(SEED * 31 + index)
    stream = consumer.generate(SEED + 40 + index, MEMBERS, base)
    handled = handled_types(consumer)
    modes = KILL_MODES.get(service, MODES)
    started = time.monotonic()
    kills: list[dict[str, Any]] = []
    with GatedBroker() as broker:
        bootstrap = broker.bootstrap
        database_url = await databases.fresh(f"chaos_crash_{service}")
        process = ServiceProcess(service, database_url, bootstrap, log_dir, env=consumer.env())
        db = await asyncpg.connect(to_asyncpg_dsn(database_url))
        engine = create_engine(database_url)
        try:
            process.start()
            await process.wait_healthy()
            async with process.client() as client:
                ctx = await consumer.setup(client, stream)
            publisher = Publisher(bootstrap, consumer.rewrite(ctx))
            await publisher.ensure_topics(consumer.topics())
            published = 0  # handled events published so far
            phase = 0
            chunks = chunks_of(stream, KILLS)
            kill_after = {int((k + 0.5) * len(chunks) / KILLS) for k in range(KILLS)}
            for n, (chunk_phase, chunk) in enumerate(chunks):

                async def caught_up(target: int = published) -> bool:
                    return await db.fetchval("SELECT count(*) FROM processed_events") >= target

                # The restarted consumer first waits for the killed one's session to expire.
                await until(caught_up, f"{service} to catch up before chunk {n + 1}", 120)
                if chunk_phase != phase:
                    phase = chunk_phase
                    async with engine.connect() as conn:
                        await consumer.between_phases(conn, ctx, stream)
                    publisher.rewrite = consumer.rewrite(ctx)
                if n > 0:
                    await db.execute("ANALYZE")  # the statistics of a live database
                await publisher.publish(chunk)
                published += sum(1 for item in chunk if item.type in handled)
                if n not in kill_after:
                    continue
                mode = modes[(index + len(kills)) % len(modes)]
                hit = await kill_at_moment(process, db, mode, rng, broker.gate, timeout=20)
                kills.append(
                    {
                        "mode": mode if hit else f"{mode} (moment not seen: killed anyway)",
                        "processed": await db.fetchval("SELECT count(*) FROM processed_events"),
                        "of": published,
                        "redelivered": await applied_but_not_committed(
                            db, bootstrap, consumer.group, consumer.consumes
                        ),
                    }
                )
                process.start()
                await process.wait_healthy()

            async def done() -> bool:
                ends = publisher.ends
                if not await consumed_everything(
                    bootstrap, consumer.group, consumer.consumes, ends
                ):
                    return False
                return not await db.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")

            await until(done, f"{service} to consume everything and relay its outbox", 180)
            assert process.alive(), process.log_tail()
            async with process.client() as client:
                await consumer.finish(client, stream)
                observed_sample = await consumer.sample(client, ctx, stream)
            async with engine.connect() as conn:
                observed = await observe(consumer, conn, ctx)
            observed["sample"] = observed_sample
            observed["on_topics"] = Counter(
                orjson.loads(r.value)["id"] for r in await read_all(bootstrap, consumer.publishes)
            )
            dead = await read_all(bootstrap, [t for t in consumer.topics() if ".dlq." in t])
            observed["dead"] = Counter(decode_event(r.value).type for r in dead)
        finally:
            process.stop()
            await db.close()
            await engine.dispose()
    observed["consumer"] = consumer
    observed["kills"] = kills
    observed["seconds"] = round(time.monotonic() - started, 1)
    observed["stream"] = stream
    return observed


@pytest_asyncio.fixture(scope="module")
async def crashed(
    databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Every service crashed side by side; an outcome (or the error) per service."""
    # Times are built around the minute the test starts (the processes' clocks run on from it).
    base = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    outcomes = await asyncio.gather(
        *(
            crash(service, n, databases, tmp_path_factory.mktemp(f"crash-{service}"), base)
            for n, service in enumerate(SERVICES)
        ),
        return_exceptions=True,
    )
    # The clean passes once the processes are done: their work would slow the crashes down.
    for outcome in outcomes:
        if isinstance(outcome, dict):
            try:
                outcome["clean"] = await clean_pass(
                    outcome["consumer"], databases, outcome["stream"]
                )
            except Exception as exc:
                outcome["clean"] = exc
    return dict(zip(SERVICES, outcomes, strict=True))


@pytest.mark.parametrize("service", SERVICES)
async def test_sigkill_loses_nothing_and_doubles_nothing(service: str, crashed: dict[str, Any]):
    outcome = crashed[service]
    if isinstance(outcome, BaseException):
        raise outcome
    consumer: Consumer = outcome["consumer"]
    stream: Stream = outcome["stream"]
    clean = outcome["clean"]
    if isinstance(clean, BaseException):
        raise clean
    kills = outcome["kills"]
    assert len(kills) == KILLS
    assert not outcome["dead"], f"dead-lettered: {dict(outcome['dead'])}"
    for name, got in (("after the kills", outcome), ("clean pass", clean)):
        problems = verify(consumer, stream, stream.items, got, stream.base)
        assert not problems, f"{name}: {len(problems)} problems:\n" + "\n".join(problems[:25])
    differences = diff(clean["state"], outcome["state"])
    assert not differences, "the state after the kills differs from a clean pass:\n" + "\n".join(
        differences
    )
    assert outcome["outbox"] == clean["outbox"], (
        f"outbox facts: {dict(outcome['outbox'])} after the kills, {dict(clean['outbox'])} "
        "after a clean pass"
    )
    assert outcome["sample"] == clean["sample"], diff(clean["sample"], outcome["sample"])

    outbox_ids = {e["event_id"] for e in outcome["events"]}
    on_topics = outcome["on_topics"]
    missing = outbox_ids - set(on_topics)
    assert not missing, (
        f"{len(missing)} of {len(outbox_ids)} outbox events never reached the broker: "
        f"{sorted(missing)[:10]}; kills {kills}"
    )
    assert set(on_topics) - outbox_ids == set(), "events on the topics the outbox does not hold"
    record_figures(
        f"crashes: SIGKILL of the {service} service",
        {
            "members": len(stream.members),
            "events": len(stream.items),
            "kills": len(kills),
            "kills_mid_work": sum(1 for k in kills if k["processed"] < k["of"]),
            "kills_leaving_applied_events_to_redeliver": sum(1 for k in kills if k["redelivered"]),
            "outbox": dict(outcome["outbox_all"]),
            "outbox_events_published_again": sum(1 for n in on_topics.values() if n > 1),
            "seconds": outcome["seconds"],
            "kill_log": kills,
        },
    )
