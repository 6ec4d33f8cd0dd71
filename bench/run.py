"""The benchmark harness: each number next to its physical bound, measured in the same run.

    python bench/run.py [--quick] [--big] [--scenarios pipeline,latency,coupons,scale,nightly]
                        [--orders N] [--members M]

Scenarios 2-5 live in latency.py, coupons.py, scale.py and nightly.py (their docstrings say what
each measures); this file runs the chosen ones and writes one report.

Scenario 1, order pipeline: N `order.paid` events over M members are pre-loaded on
`loyalty.orders`; the points service consumes them until every balance is written. Next to it,
in the same run: (a) a raw aiokafka consumer reading the same topic (decode only), (b) a raw
asyncpg batch write of the same number of inbox + ledger rows with balance upserts (500 per
transaction, one statement per table), and (c) the naive way, one transaction and one offset
commit per event, on a sample. Writes bench/results/latest.json and latest.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import coupons
import latency
import nightly
import orjson
import scale
from aiokafka import AIOKafkaConsumer
from common import T0, Platform, Stopwatch, bench_member_id, cpu_seconds, paid_order
from loyalty_shared.db import EmbeddedCluster, ensure_database, to_asyncpg_dsn
from loyalty_shared.kafka import ensure_topics, make_producer
from loyalty_shared.kafka.broker import EmbeddedBroker, free_port
from loyalty_shared.observability import EVENTS_PROCESSED

RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = ["pipeline", "latency", "coupons", "scale", "nightly"]


def order_events(count: int, members: int) -> list[tuple[bytes, bytes]]:
    return [
        paid_order(
            f"bo{i:09d}",
            bench_member_id(i % members),
            i,
            1 + i // members,
            channel="pos" if i % 3 else "online",
        )
        for i in range(count)
    ]


async def produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> float:
    producer = make_producer(bootstrap, linger_ms=20)
    await producer.start()
    try:
        with Stopwatch() as sw:
            futures = []
            for key, value in messages:
                futures.append(await producer.send(topic, value, key=key))
                if len(futures) >= 5000:
                    await asyncio.gather(*futures)
                    futures = []
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sw.wall


async def raw_consume(bootstrap: str, topic: str, count: int) -> dict[str, float]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"raw-{time.time()}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=1000,
    )
    await consumer.start()
    try:
        seen = 0
        started: float | None = None
        cpu0 = cpu_seconds()
        while seen < count:
            batches = await consumer.getmany(timeout_ms=500, max_records=1000)
            for tp, records in batches.items():
                if started is None:
                    started, cpu0 = time.perf_counter(), cpu_seconds()
                for record in records:
                    orjson.loads(record.value)
                seen += len(records)
                await consumer.commit({tp: records[-1].offset + 1})
        assert started is not None
        wall = time.perf_counter() - started
        return {
            "events": seen,
            "seconds": wall,
            "per_second": seen / wall,
            "cpu_s_per_1000": (cpu_seconds() - cpu0) / seen * 1000,
        }
    finally:
        await consumer.stop()


async def raw_insert(dsn: str, count: int, members: int) -> dict[str, float]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS b_inbox (event_id text PRIMARY KEY);"
            "CREATE TABLE IF NOT EXISTS b_ledger (entry_id text PRIMARY KEY, "
            "member_id text, points bigint, created_at timestamptz);"
            "CREATE TABLE IF NOT EXISTS b_accounts (member_id text PRIMARY KEY, "
            "available bigint)"
        )
        with Stopwatch() as sw:
            for start in range(0, count, 500):
                ids = [f"e{i}" for i in range(start, min(start + 500, count))]
                member_ids = [bench_member_id(i % members) for i in range(start, start + len(ids))]
                per_member: dict[str, int] = {}
                for m in member_ids:
                    per_member[m] = per_member.get(m, 0) + 129
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO b_inbox SELECT * FROM unnest($1::text[]) "
                        "ON CONFLICT DO NOTHING",
                        ids,
                    )
                    await conn.execute(
                        "INSERT INTO b_ledger SELECT * FROM unnest($1::text[], $2::text[], "
                        "$3::bigint[], $4::timestamptz[])",
                        ids,
                        member_ids,
                        [129] * len(ids),
                        [T0] * len(ids),
                    )
                    keys = sorted(per_member)
                    await conn.execute(
                        "INSERT INTO b_accounts SELECT * FROM unnest($1::text[], $2::bigint[]) "
                        "ON CONFLICT (member_id) DO UPDATE SET available = b_accounts.available "
                        "+ EXCLUDED.available",
                        keys,
                        [per_member[k] for k in keys],
                    )
        return {
            "events": count,
            "seconds": sw.wall,
            "per_second": count / sw.wall,
            "cpu_s_per_1000": sw.cpu / count * 1000,
        }
    finally:
        await conn.close()


async def naive(dsn: str, bootstrap: str, topic: str, count: int) -> dict[str, float]:
    """One transaction and one offset commit per event: what batching saves."""
    conn = await asyncpg.connect(dsn)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"naive-{time.time()}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=1,
    )
    await consumer.start()
    try:
        seen = 0
        started: float | None = None
        cpu0 = 0.0
        while seen < count:
            record = await consumer.getone()
            if started is None:
                started, cpu0 = time.perf_counter(), cpu_seconds()
            event = orjson.loads(record.value)
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO b_inbox VALUES ($1) ON CONFLICT DO NOTHING", "n" + event["id"]
                )
                await conn.execute(
                    "INSERT INTO b_ledger VALUES ($1, $2, 129, $3)",
                    "n" + event["id"],
                    event["subject"],
                    T0,
                )
                await conn.execute(
                    "INSERT INTO b_accounts VALUES ($1, 129) ON CONFLICT (member_id) DO UPDATE "
                    "SET available = b_accounts.available + 129",
                    event["subject"],
                )
            from aiokafka import TopicPartition

            await consumer.commit(
                {TopicPartition(record.topic, record.partition): record.offset + 1}
            )
            seen += 1
        assert started is not None
        wall = time.perf_counter() - started
        return {
            "events": seen,
            "seconds": wall,
            "per_second": seen / wall,
            "cpu_s_per_1000": (cpu_seconds() - cpu0) / seen * 1000,
        }
    finally:
        await consumer.stop()
        await conn.close()


def processed_count() -> float:
    return sum(
        sample.value
        for metric in EVENTS_PROCESSED.collect()
        for sample in metric.samples
        if sample.name == "loyalty_events_processed_total"
        and sample.labels.get("service") == "points"
        and sample.labels.get("type") == "order.paid"
    )


async def points_pipeline(server_url: str, bootstrap: str, count: int) -> dict[str, float]:
    import loyalty_points.bootstrap
    from loyalty_shared.clock import FixedClock
    from loyalty_shared.testing import start_service

    database = f"bench_points_{int(time.time())}"
    await ensure_database(server_url, database)
    url = server_url.replace("/postgres?", f"/{database}?")
    before = processed_count()
    service = await start_service(
        loyalty_points.bootstrap.definition(),
        database_url=url,
        bootstrap=bootstrap,
        clock=FixedClock(T0 + timedelta(days=1)),
    )
    try:
        started: float | None = None
        cpu0 = 0.0
        deadline = time.monotonic() + 1800
        while processed_count() - before < count:
            if started is None and processed_count() > before:
                started, cpu0 = time.perf_counter(), cpu_seconds()
                print("the points service is consuming...", flush=True)  # profile.py's cue
            if time.monotonic() > deadline:
                raise RuntimeError("the points service did not finish in 30 minutes")
            await asyncio.sleep(0.05)
        assert started is not None
        wall = time.perf_counter() - started
        cpu = cpu_seconds() - cpu0
        async with service.runtime.engine.connect() as conn:
            from sqlalchemy import text

            members, pending = (
                await conn.execute(text("SELECT count(*), sum(pending) FROM accounts"))
            ).one()
        return {
            "events": count,
            "seconds": wall,
            "per_second": count / wall,
            "cpu_s_per_1000": cpu / count * 1000,
            "accounts": members,
            "pending_points": int(pending or 0),
        }
    finally:
        await service.stop()


async def pipeline(orders: int, members: int, naive_sample: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="loyalty-bench-"))
    cluster = EmbeddedCluster(root / "pg", delete_on_exit=True)
    try:
        with EmbeddedBroker(free_port()) as broker:
            server_url = cluster.url("postgres")
            topic = "loyalty.orders"
            await ensure_topics(broker.bootstrap, [topic, "loyalty.members", "loyalty.points"], 6)
            print(f"producing {orders} order.paid over {members} members...", flush=True)
            messages = order_events(orders, members)
            produce_s = await produce(broker.bootstrap, topic, messages)
            print("raw consumer bound...", flush=True)
            consume = await raw_consume(broker.bootstrap, topic, orders)
            await ensure_database(server_url, "bench_raw")
            dsn = to_asyncpg_dsn(server_url.replace("/postgres?", "/bench_raw?"))
            print("raw database bound...", flush=True)
            insert = await raw_insert(dsn, orders, members)
            print(f"naive per-event baseline on {naive_sample} events...", flush=True)
            slow = await naive(dsn, broker.bootstrap, topic, naive_sample)
            print("the points service...", flush=True)
            service = await points_pipeline(server_url, broker.bootstrap, orders)
            expected_pending = orders * 129
            bound = min(consume["per_second"], insert["per_second"])
            return {
                "orders": orders,
                "members": members,
                "produce_per_second": orders / produce_s,
                "raw_consumer": consume,
                "raw_database": insert,
                "naive_per_event": slow,
                "points_service": service,
                "bound_per_second": bound,
                "ratio_to_bound": service["per_second"] / bound,
                "goal_ratio": 0.5,
                "correct": service["pending_points"] == expected_pending
                and service["accounts"] == members,
            }
    finally:
        cluster.stop()


def markdown_pipeline(p: dict[str, Any]) -> list[str]:
    rows = [
        ("raw aiokafka consumer (decode only)", p["raw_consumer"]),
        ("raw asyncpg batches (inbox + ledger + balance)", p["raw_database"]),
        ("naive: one transaction + commit per event", p["naive_per_event"]),
        ("points service (the real pipeline)", p["points_service"]),
    ]
    return [
        f"## 1. Order pipeline: {p['orders']} order.paid over {p['members']} members",
        "",
        "| path | events/s | CPU s per 1000 events |",
        "|---|---:|---:|",
        *[f"| {name} | {r['per_second']:,.0f} | {r['cpu_s_per_1000']:.3f} |" for name, r in rows],
        "",
        f"Bound (the slower of the two raw paths): {p['bound_per_second']:,.0f} events/s. "
        f"Points service / bound = **{p['ratio_to_bound']:.2f}** (goal ≥ {p['goal_ratio']}). "
        f"Batching versus the naive way: "
        f"{p['points_service']['per_second'] / p['naive_per_event']['per_second']:.1f}x. "
        f"Balances correct: {p['correct']}.",
        "",
    ]


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Benchmark results ({result['when']})",
        "",
        f"Machine: {result['machine']}. Mode: {result['mode']}. "
        f"Scenarios: {', '.join(result['scenarios'])}.",
        "",
    ]
    if "pipeline" in result:
        lines += markdown_pipeline(result["pipeline"])
    if "latency" in result:
        lines += latency.markdown(result["latency"])
    if "coupons" in result:
        lines += coupons.markdown(result["coupons"])
    if "scale" in result:
        lines += scale.markdown(result["scale"])
    if "nightly" in result:
        lines += nightly.markdown(result["nightly"])
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under 3 minutes")
    parser.add_argument(
        "--big", action="store_true", help="1M members (scale) and 1M members / 5M lots (nightly)"
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, from {','.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument("--orders", type=int)
    parser.add_argument("--members", type=int)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenarios: {unknown}; choose from {SCENARIOS}")
    quick, big = args.quick, args.big and not args.quick
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if quick else ("full, big" if big else "full"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}, embedded PostgreSQL 18, tansu broker",
        "scenarios": [s for s in SCENARIOS if s in chosen],
    }
    correct = True
    if "pipeline" in chosen:
        orders = args.orders or (5000 if quick else 200_000)
        members = args.members or (500 if quick else 20_000)
        naive_sample = min(1000 if quick else 5000, orders)
        result["pipeline"] = asyncio.run(pipeline(orders, members, naive_sample))
        correct = result["pipeline"]["correct"]
    if "latency" in chosen or "coupons" in chosen:
        print("starting the platform (five services as processes)...", flush=True)
        stack = Platform().start()
        try:
            if "latency" in chosen:
                result["latency"] = asyncio.run(
                    latency.run(
                        stack,
                        rate=50 if quick else 500,
                        duration=10 if quick else 60,
                        members=100 if quick else 2000,
                    )
                )
            if "coupons" in chosen:
                result["coupons"] = asyncio.run(
                    coupons.run(stack, rate=100 if quick else 1000, duration=10 if quick else 60)
                )
        finally:
            stack.stop()
    if "scale" in chosen:
        sizes = [10_000, 100_000] + ([1_000_000] if big else [])
        result["scale"] = asyncio.run(scale.run(sizes, 3000 if quick else 20_000))
    if "nightly" in chosen:
        result["nightly"] = asyncio.run(
            nightly.run(10_000 if quick else (1_000_000 if big else 100_000))
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(result, indent=2) + "\n")
    report = markdown(result)
    (args.out / "latest.md").write_text(report)
    print(report)
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
