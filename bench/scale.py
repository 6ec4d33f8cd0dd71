"""Scenario 4, scale of cost: the same stream of `order.paid` events consumed by the points
service and by the segmenter (each in this process, its real consumer) with 10k, 100k (and with
--big 1M) members already present, seeded set-based in their databases (accounts with a lot and
an entry each; registered profiles). The events touch the same number of distinct members at
every size, spread over all the members present, so only the member count changes: events/s
and CPU seconds per 1000 events (this process, and PostgreSQL) must not grow with it.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
from common import T0, CpuMeter, bench_member_id, cpu_seconds, paid_order
from loyalty_shared.db import EmbeddedCluster, ensure_database, to_asyncpg_dsn
from loyalty_shared.kafka import ensure_topics, make_producer
from loyalty_shared.kafka.broker import EmbeddedBroker, free_port
from loyalty_shared.observability import EVENTS_PROCESSED

SEGMENTS = [
    ("heavy", {"field": "buyer_weight", "op": "eq", "value": "heavy"}),
    (
        "new-big-spenders",
        {
            "all": [
                {"field": "lifecycle_stage", "op": "eq", "value": "new"},
                {"field": "spend_minor", "op": "gte", "value": 20000},
            ]
        },
    ),
    ("at-risk", {"field": "churn_risk", "op": "gte", "value": 0.5}),
]


def events_for(count: int, members: int, distinct: int) -> list[tuple[bytes, bytes]]:
    """`count` orders over `distinct` members spread evenly over the `members` present."""
    stride = members // distinct
    return [
        paid_order(
            f"bs{members}-{i:09d}", bench_member_id((i % distinct) * stride), i, 1 + i // distinct
        )
        for i in range(count)
    ]


def processed(service: str) -> float:
    return sum(
        sample.value
        for metric in EVENTS_PROCESSED.collect()
        for sample in metric.samples
        if sample.name == "loyalty_events_processed_total"
        and sample.labels.get("service") == service
        and sample.labels.get("type") == "order.paid"
    )


async def seed_points(dsn: str, members: int) -> float:
    conn = await asyncpg.connect(dsn)
    started = time.perf_counter()
    try:
        await conn.execute(
            "INSERT INTO accounts (member_id, available, pending, lifetime_earned, "
            "lifetime_redeemed, updated_at) SELECT 'bm' || lpad(g::text, 7, '0'), 100, 0, 100, "
            "0, $1 FROM generate_series(0, $2 - 1) g",
            T0 - timedelta(days=30),
            members,
        )
        await conn.execute(
            "INSERT INTO points_lots (lot_id, member_id, points, remaining, state, earned_at, "
            "available_at, expires_at, rule) SELECT 'sl' || g, 'bm' || lpad(g::text, 7, '0'), "
            "100, 100, 'available', $1, $1, $1::timestamptz + interval '365 days', 'signup' "
            "FROM generate_series(0, $2 - 1) g",
            T0 - timedelta(days=30),
            members,
        )
        await conn.execute(
            "INSERT INTO ledger_entries (entry_id, member_id, kind, bucket, points, reason, rule, "
            "lot_id, created_at, occurred_at, capped_points) SELECT 'se' || g, "
            "'bm' || lpad(g::text, 7, '0'), 'earn', 'available', 100, 'sign-up', 'signup', "
            "'sl' || g, $1, $1, 0 FROM generate_series(0, $2 - 1) g",
            T0 - timedelta(days=30),
            members,
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def seed_profiles(dsn: str, members: int) -> float:
    conn = await asyncpg.connect(dsn)
    started = time.perf_counter()
    try:
        await conn.execute(
            "INSERT INTO profiles (member_id, registered_at, points_available, points_pending, "
            "orders_count, spend_minor, orders_365d, spend_365d_minor, recent_spend_minor, "
            "earlier_spend_minor, category_spend, preference_tags, buyer_weight, "
            "lifecycle_stage, stage_changed_at, churn_reasons, churn_inputs, evaluated_at, "
            "created_at, updated_at) SELECT 'bm' || lpad(g::text, 7, '0'), $1, 100, 0, 0, 0, 0, "
            "0, 0, 0, '{}', '[]', 'none', 'prospect', $1, '[]', '{}', $1, $1, $1 "
            "FROM generate_series(0, $2 - 1) g",
            T0 - timedelta(days=30),
            members,
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def consume(
    service_name: str,
    definition: Any,
    url: str,
    bootstrap: str,
    count: int,
    postgres_pid: int | None,
) -> dict[str, float]:
    from loyalty_shared.clock import FixedClock
    from loyalty_shared.testing import start_service

    before = processed(service_name)
    service = await start_service(
        definition, database_url=url, bootstrap=bootstrap, clock=FixedClock(T0 + timedelta(days=1))
    )
    try:
        meter: CpuMeter | None = None
        started = 0.0
        deadline = time.monotonic() + 1800
        while processed(service_name) - before < count:
            if meter is None and processed(service_name) > before:
                started = time.perf_counter()
                meter = CpuMeter({"postgres": postgres_pid} if postgres_pid else {}).start()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {service_name} service did not finish in 30 minutes")
            await asyncio.sleep(0.05)
        assert meter is not None
        wall = time.perf_counter() - started
        spent = meter.stop()
        return {
            "events": count,
            "seconds": wall,
            "per_second": count / wall,
            "cpu_s_per_1000": spent["harness"] / count * 1000,
            "db_cpu_s_per_1000": spent.get("postgres", 0.0) / count * 1000,
        }
    finally:
        await service.stop()


async def one_size(
    cluster: EmbeddedCluster, members: int, events: int, distinct: int
) -> dict[str, Any]:
    import loyalty_points.bootstrap
    import loyalty_segmenter.bootstrap
    from loyalty_shared.testing import start_service

    server_url = cluster.url("postgres")
    result: dict[str, Any] = {"members": members}
    with EmbeddedBroker(free_port()) as broker:
        topics = ["loyalty.orders", "loyalty.members", "loyalty.points", "loyalty.coupons"]
        await ensure_topics(broker.bootstrap, topics, 6)
        producer = make_producer(broker.bootstrap, linger_ms=20)
        await producer.start()
        try:
            futures = [
                await producer.send("loyalty.orders", value, key=key)
                for key, value in events_for(events, members, distinct)
            ]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        for name, definition, seed in (
            ("points", loyalty_points.bootstrap.definition(), seed_points),
            ("segmenter", loyalty_segmenter.bootstrap.definition(), seed_profiles),
        ):
            database = f"bench_scale_{name}_{members}"
            await ensure_database(server_url, database)
            url = server_url.replace("/postgres?", f"/{database}?")
            # migrate (and create the segments) without consuming, seed, then consume
            setup = await start_service(
                definition, database_url=url, bootstrap=broker.bootstrap, background=False
            )
            try:
                print(f"scale: {name}, seeding {members} members...", flush=True)
                seed_s = await seed(to_asyncpg_dsn(url), members)
                if name == "segmenter":
                    for code, rule in SEGMENTS:
                        response = await setup.client.post(
                            "/v1/segments", json={"code": code, "name": code, "rule": rule}
                        )
                        assert response.status_code == 201, response.text
            finally:
                await setup.stop()
            print(f"scale: {name} consuming {events} events with {members} present...", flush=True)
            figures = await consume(name, definition, url, broker.bootstrap, events, cluster.pid)
            result[name] = {**figures, "seed_seconds": seed_s}
    return result


async def run(sizes: list[int], events: int) -> dict[str, Any]:
    distinct = min(events // 2, min(sizes))
    root = Path(tempfile.mkdtemp(prefix="loyalty-bench-scale-"))
    cluster = EmbeddedCluster(root / "pg", delete_on_exit=True)
    cpu0 = cpu_seconds()
    try:
        rows = [await one_size(cluster, members, events, distinct) for members in sizes]
    finally:
        cluster.stop()
    out: dict[str, Any] = {"events": events, "distinct_members": distinct, "sizes": rows}
    for name in ("points", "segmenter"):
        first, last = rows[0][name], rows[-1][name]
        cost = (
            first["cpu_s_per_1000"] + first["db_cpu_s_per_1000"],
            last["cpu_s_per_1000"] + last["db_cpu_s_per_1000"],
        )
        out[f"{name}_cost_growth"] = cost[1] / cost[0]
        out[f"{name}_throughput_ratio"] = last["per_second"] / first["per_second"]
    out["harness_cpu_s"] = cpu_seconds() - cpu0
    return out


def markdown(r: dict[str, Any]) -> list[str]:
    lines = [
        f"## 4. Scale of cost: {r['events']} order.paid over {r['distinct_members']} distinct "
        "members, with N members present",
        "",
        "| service | members present | events/s | CPU s per 1000 events (service) | "
        "PostgreSQL CPU s per 1000 | wall s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("points", "segmenter"):
        for row in r["sizes"]:
            f = row[name]
            lines.append(
                f"| {name} | {row['members']:,} | {f['per_second']:,.0f} | "
                f"{f['cpu_s_per_1000']:.3f} | {f['db_cpu_s_per_1000']:.3f} | {f['seconds']:.1f} |"
            )
    lines += [
        "",
        "Goal: the cost per event does not grow with the members present. Largest / smallest "
        f"size, CPU per event (service + PostgreSQL): points **{r['points_cost_growth']:.2f}x**, "
        f"segmenter **{r['segmenter_cost_growth']:.2f}x**; throughput: points "
        f"{r['points_throughput_ratio']:.2f}x, segmenter {r['segmenter_throughput_ratio']:.2f}x.",
        "",
    ]
    return lines
