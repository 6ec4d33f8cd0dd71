"""Scenario 5, nightly jobs over many lots and profiles, seeded set-based (INSERT ... SELECT
generate_series) in the services' own databases, then run through the admin API
(`POST /v1/admin/jobs/{job}/run {"as_of": ...}`, the service in this process):

- points `release-pending`: every member has 3 pending lots whose pending period is over;
- points `expire`: every member has 2 available lots past their `expires_at`;
- segmenter `recompute`: every member bought once 60 days ago and was last evaluated then, as
  `new`; the job finds them due (`next_transition_at`) and moves them to `cooling`, then
  re-ranks RFM over all buyers.

Each job's wall time, the rows it reports touched, the rows it wrote (ledger entries, outbox
events), CPU seconds of this process and of PostgreSQL, per 1000 rows.
"""

from __future__ import annotations

import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
from common import T0, CpuMeter
from loyalty_shared.db import EmbeddedCluster, ensure_database, to_asyncpg_dsn
from loyalty_shared.kafka.broker import EmbeddedBroker, free_port

PENDING_LOTS, EXPIRED_LOTS = 3, 2
AS_OF = T0


async def seed_points(dsn: str, members: int) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    started = time.perf_counter()
    try:
        per = PENDING_LOTS + EXPIRED_LOTS
        earned = AS_OF - timedelta(days=400)
        await conn.execute(
            "INSERT INTO accounts (member_id, available, pending, lifetime_earned, "
            "lifetime_redeemed, updated_at) SELECT 'nm' || lpad(g::text, 7, '0'), $3 * 100, "
            "$4 * 100, $5 * 100, 0, $1 FROM generate_series(0, $2 - 1) g",
            earned,
            members,
            EXPIRED_LOTS,
            PENDING_LOTS,
            per,
        )
        # lots k < PENDING_LOTS: pending, available_at due in the last 10 days, expiring in
        # a year; the others: available, expired in the last 10 days
        await conn.execute(
            "INSERT INTO points_lots (lot_id, member_id, points, remaining, state, earned_at, "
            "available_at, expires_at, rule) "
            "SELECT 'nl' || g || '-' || k, 'nm' || lpad(g::text, 7, '0'), 100, 100, "
            "CASE WHEN k < $3 THEN 'pending' ELSE 'available' END, "
            "$1::timestamptz - (g % 1000) * interval '10 seconds' + CASE WHEN k < $3 "
            "  THEN interval '-17 days' ELSE interval '-375 days' END, "
            "$1::timestamptz - (g % 1000) * interval '10 seconds' + CASE WHEN k < $3 "
            "  THEN interval '-10 days' ELSE interval '-368 days' END, "
            "$1::timestamptz - (g % 1000) * interval '10 seconds' + CASE WHEN k < $3 "
            "  THEN interval '348 days' ELSE interval '-10 days' END, "
            "'purchase' FROM generate_series(0, $2 - 1) g, generate_series(0, $4 - 1) k",
            AS_OF,
            members,
            PENDING_LOTS,
            per,
        )
        await conn.execute("ANALYZE")
        lots = await conn.fetchval("SELECT count(*) FROM points_lots")
    finally:
        await conn.close()
    return {"seed_seconds": time.perf_counter() - started, "lots": lots}


async def seed_profiles(dsn: str, members: int) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    started = time.perf_counter()
    bought = AS_OF - timedelta(days=60)
    try:
        await conn.execute(
            "INSERT INTO profile_orders (order_id, member_id, channel, currency, occurred_at, "
            "paid_minor, refunded_minor, cancelled, counted, net_minor, categories, "
            "coupon_codes, updated_at) SELECT 'no' || g, 'nm' || lpad(g::text, 7, '0'), 'pos', "
            "'CNY', $1, 12900, 0, false, true, 12900, '{}', '[]', $1 "
            "FROM generate_series(0, $2 - 1) g",
            bought,
            members,
        )
        await conn.execute(
            "INSERT INTO profiles (member_id, registered_at, points_available, points_pending, "
            "orders_count, first_order_at, last_order_at, spend_minor, orders_365d, "
            "spend_365d_minor, recent_spend_minor, earlier_spend_minor, window_due_at, "
            "category_spend, preference_tags, buyer_weight, lifecycle_stage, stage_changed_at, "
            "churn_risk, churn_reasons, churn_inputs, evaluated_at, next_transition_at, "
            "created_at, updated_at) SELECT 'nm' || lpad(g::text, 7, '0'), $1, 0, 0, 1, $1, $1, "
            "12900, 1, 12900, 12900, 0, $1::timestamptz + interval '90 days', '{}', '[]', "
            "'light', 'new', $1, "
            "0.0, '[]', '{}', $1, $1::timestamptz + interval '46 days', $1, $1 "
            "FROM generate_series(0, $2 - 1) g",
            bought,
            members,
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return {"seed_seconds": time.perf_counter() - started, "profiles": members}


async def count_rows(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        out = {"outbox": await conn.fetchval("SELECT count(*) FROM outbox")}
        if await conn.fetchval("SELECT to_regclass('ledger_entries') IS NOT NULL"):
            out["ledger_entries"] = await conn.fetchval("SELECT count(*) FROM ledger_entries")
        return out
    finally:
        await conn.close()


async def run_job(service: Any, dsn: str, job: str, pid: int | None) -> dict[str, Any]:
    before = await count_rows(dsn)
    meter = CpuMeter({"postgres": pid} if pid else {}).start()
    started = time.perf_counter()
    response = await service.client.post(
        f"/v1/admin/jobs/{job}/run", json={"as_of": AS_OF.isoformat()}, timeout=3600
    )
    wall = time.perf_counter() - started
    spent = meter.stop()
    assert response.status_code == 200, response.text
    counts = response.json()["counts"]
    after = await count_rows(dsn)
    touched = max([int(v) for v in counts.values() if isinstance(v, int)] or [0])
    return {
        "job": job,
        "counts": counts,
        "rows_written": {k: after[k] - before[k] for k in after},
        "seconds": wall,
        "rows_per_second": touched / wall if wall else 0.0,
        "cpu_s": {"service": spent["harness"], "postgres": spent.get("postgres", 0.0)},
        "cpu_s_per_1000_rows": {
            "service": spent["harness"] / max(touched, 1) * 1000,
            "postgres": spent.get("postgres", 0.0) / max(touched, 1) * 1000,
        },
    }


async def run(members: int) -> dict[str, Any]:
    import loyalty_points.bootstrap
    import loyalty_segmenter.bootstrap
    from loyalty_shared.clock import FixedClock
    from loyalty_shared.testing import start_service

    root = Path(tempfile.mkdtemp(prefix="loyalty-bench-nightly-"))
    cluster = EmbeddedCluster(root / "pg", delete_on_exit=True)
    server_url = cluster.url("postgres")
    result: dict[str, Any] = {"members": members, "as_of": AS_OF.isoformat(), "jobs": []}
    try:
        with EmbeddedBroker(free_port()) as broker:
            for name, definition, seed, jobs in (
                (
                    "points",
                    loyalty_points.bootstrap.definition(),
                    seed_points,
                    ["release-pending", "expire"],
                ),
                (
                    "segmenter",
                    loyalty_segmenter.bootstrap.definition(),
                    seed_profiles,
                    ["recompute"],
                ),
            ):
                database = f"bench_nightly_{name}"
                await ensure_database(server_url, database)
                url = server_url.replace("/postgres?", f"/{database}?")
                dsn = to_asyncpg_dsn(url)
                # the API without the consumer or the relay: the jobs' work only
                service = await start_service(
                    definition,
                    database_url=url,
                    bootstrap=broker.bootstrap,
                    clock=FixedClock(AS_OF),
                    background=False,
                )
                try:
                    print(f"nightly: seeding {name} for {members} members...", flush=True)
                    result[f"{name}_seed"] = await seed(dsn, members)
                    for job in jobs:
                        print(f"nightly: {name} {job}...", flush=True)
                        result["jobs"].append(
                            {"service": name, **await run_job(service, dsn, job, cluster.pid)}
                        )
                finally:
                    await service.stop()
    finally:
        cluster.stop()
    return result


def markdown(r: dict[str, Any]) -> list[str]:
    seed = r["points_seed"]
    lines = [
        f"## 5. Nightly jobs: {r['members']:,} members, {seed['lots']:,} lots, "
        f"{r['segmenter_seed']['profiles']:,} profiles due (as_of {r['as_of']})",
        "",
        "| job | counts (rows touched) | rows written | wall s | rows/s | CPU s per 1000 rows "
        "(service + PostgreSQL) |",
        "|---|---|---|---:|---:|---:|",
    ]
    for j in r["jobs"]:
        counts = ", ".join(f"{k} {v:,}" for k, v in j["counts"].items() if isinstance(v, int))
        written = ", ".join(f"{k} {v:,}" for k, v in j["rows_written"].items())
        cpu = j["cpu_s_per_1000_rows"]
        lines.append(
            f"| {j['service']} {j['job']} | {counts} | {written} | {j['seconds']:.1f} | "
            f"{j['rows_per_second']:,.0f} | {cpu['service']:.3f} + {cpu['postgres']:.3f} |"
        )
    lines += [
        "",
        f"Seeding (set-based): points {seed['seed_seconds']:.1f} s, segmenter "
        f"{r['segmenter_seed']['seed_seconds']:.1f} s. Every seeded lot and profile is due, so "
        "these are the costs of a night in which everything is due; a night in which little "
        "is due costs what is due (the jobs read through indexes on the due time).",
        "",
    ]
    return lines
