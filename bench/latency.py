"""Scenario 2, end-to-end latency: paid orders posted open-loop to the member service of the
platform running as processes; latency from the order's acceptance to its points balance being
written, from timestamps the services record themselves (one PostgreSQL cluster, one clock):

- start: `outbox.created_at` of the `order.paid` event in the member database: `now()` of the
  transaction that accepted the order (the HTTP request, after parsing and authentication);
- end: `processed_events.processed_at` of the same event id in the points database: `now()` of
  the transaction that applied the event and wrote the balance (it commits right after).

Client-side figures (scheduled send to answer, and scheduled send to the points transaction)
stand next to them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import orjson
from common import CpuMeter, Platform, closed_loop, open_loop, per_1000, summary_ms

GOAL_P99_MS = 250.0


async def register_members(platform: Platform, count: int, prefix: str) -> list[str]:
    pool = platform.pool("member", limit=32)

    async def one(i: int) -> str:
        status, body = await pool.call(
            "POST", "/v1/members", {"phone": f"{prefix}{i:08d}", "channel": "pos"}
        )
        if status not in (200, 201, 409):
            raise RuntimeError(f"sign-up answered {status}: {body}")
        return str(body["member_id"])

    try:
        return list(await closed_loop([lambda i=i: one(i) for i in range(count)], 16))
    finally:
        pool.close()


async def run(platform: Platform, rate: float, duration: float, members: int) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    print(f"latency: signing up {members} members...", flush=True)
    member_ids = await register_members(platform, members, "139")
    await platform.wait_processed("points", "member.registered", members, 120)
    await asyncio.sleep(2)  # let the neighbours settle the sign-ups too
    pool = platform.pool("member")

    def order(i: int) -> bytes:
        return pool.encode(
            "POST",
            "/v1/orders",
            {
                "channel": "pos",
                "external_id": f"BL-{run_id}-{i}",
                "store_id": "store-bench",
                "member_id": member_ids[i % len(member_ids)],
                "status": "paid",
                "currency": "CNY",
                "total_minor": 12900,
                "paid_minor": 12900,
                "lines": [
                    {"sku": "SNK-1", "category": "snacks", "quantity": 1, "unit_price_minor": 12900}
                ],
            },
        )

    print(f"latency: {rate:.0f} orders/s open-loop for {duration:.0f} s...", flush=True)
    wall_offset = time.time() - time.perf_counter()
    meter = CpuMeter(platform.pids()).start()
    outcomes, wall = await open_loop(pool, rate, duration, order)
    accepted = [o for o in outcomes if o.status == 202]
    _, drain_s = await platform.wait_processed(
        "points", "order.paid", len(accepted), timeout=max(60.0, duration * 2)
    )
    spent = meter.stop()
    pool.close()
    errors: dict[str, int] = {}
    for o in outcomes:
        if o.status != 202:
            errors[str(o.status)] = errors.get(str(o.status), 0) + 1
    order_sent = {}
    for o in accepted:
        order_sent[orjson.loads(o.body)["order_id"]] = o.scheduled + wall_offset

    member_db = await asyncpg.connect(platform.dsn("member"))
    points_db = await asyncpg.connect(platform.dsn("points"))
    try:
        created = {
            r["event_id"]: (r["created_at"], orjson.loads(r["value"])["data"]["order_id"])
            for r in await member_db.fetch(
                "SELECT event_id, created_at, value FROM outbox WHERE type = 'order.paid'"
            )
        }
        processed = {
            r["event_id"]: r["at"]
            for r in await points_db.fetch(
                "SELECT event_id, min(processed_at) AS at FROM processed_events "
                "WHERE type = 'order.paid' GROUP BY event_id"
            )
        }
    finally:
        await member_db.close()
        await points_db.close()
    service_side, client_to_balance = [], []
    for event_id, (created_at, order_id) in created.items():
        done = processed.get(event_id)
        if done is None or order_id not in order_sent:
            continue
        service_side.append((done - created_at).total_seconds())
        client_to_balance.append(done.timestamp() - order_sent[order_id])
    http = summary_ms([o.done - o.scheduled for o in accepted])
    result = {
        "rate_target": rate,
        "duration_s": duration,
        "members": members,
        "requests": len(outcomes),
        "accepted_202": len(accepted),
        "achieved_rate": len(outcomes) / wall,
        "accepted_rate": len(accepted) / wall,
        "http_errors": errors,
        "peak_connections": pool.peak,
        "balances_written": len(service_side),
        "missing_after_drain": len(accepted) - len(service_side),
        "drain_after_last_answer_s": drain_s,
        "accept_to_balance": summary_ms(service_side),
        "http_answer": http,
        "client_send_to_balance": summary_ms(client_to_balance),
        "goal_p99_ms": GOAL_P99_MS,
        "cpu_s": spent,
        "cpu_s_per_1000_orders": per_1000(spent, len(accepted)),
    }
    result["goal_met"] = result["accept_to_balance"]["p99_ms"] < GOAL_P99_MS and not errors
    return result


def markdown(r: dict[str, Any]) -> list[str]:
    def row(name: str, s: dict[str, float], goal: str) -> str:
        return (
            f"| {name} | {s['count']} | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} | "
            f"{s['p99_ms']:.1f} | {s['max_ms']:.1f} | {goal} |"
        )

    cpu = r["cpu_s_per_1000_orders"]
    return [
        f"## 2. End-to-end latency: POST /v1/orders at {r['rate_target']:.0f}/s for "
        f"{r['duration_s']:.0f} s (open loop, {r['members']} members)",
        "",
        f"Achieved {r['achieved_rate']:.1f} requests/s ({r['accepted_rate']:.1f} accepted/s); "
        f"HTTP errors: {r['http_errors'] or 'none'}; balances written "
        f"{r['balances_written']}/{r['accepted_202']} "
        f"(the last {r['drain_after_last_answer_s']:.1f} s after the last answer).",
        "",
        "| latency (ms) | n | p50 | p95 | p99 | max | goal |",
        "|---|---:|---:|---:|---:|---:|---|",
        row(
            "order accepted → balance written (service timestamps)",
            r["accept_to_balance"],
            f"p99 < {r['goal_p99_ms']:.0f}: **{'met' if r['goal_met'] else 'not met'}**",
        ),
        row("HTTP: scheduled send → 202 (client)", r["http_answer"], ""),
        row("scheduled send → balance written", r["client_send_to_balance"], ""),
        "",
        "CPU seconds per 1000 orders: "
        + ", ".join(f"{k} {v:.3f}" for k, v in cpu.items() if k != "total")
        + f"; **total {cpu['total']:.3f}** (wall {1000 / max(r['accepted_rate'], 1e-9):.2f} s "
        "per 1000 at the achieved rate).",
        "",
    ]
