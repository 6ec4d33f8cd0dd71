"""Scenario 3, coupon redemption: a template, a manual campaign and N coupons bulk-issued through
the coupon API, then validations and redemptions at a fixed rate, open-loop, against the coupon
service running as a process. Every 50th redemption deliberately redeems a coupon redeemed a
moment earlier: those must answer 409 `coupon_already_redeemed`; anything else that is not
200 (validation) / 201 (redemption) is an error.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import orjson
from common import CpuMeter, Platform, open_loop, per_1000, summary_ms

GOAL_P99_MS = 20.0
DOUBLE_EVERY = 50  # every 50th redemption is a deliberate double (2 %)
DOUBLE_LAG = 101  # it redeems the coupon of the pair 101 pairs before (never a double itself)


async def issue(platform: Platform, coupons: int) -> tuple[str, list[tuple[str, str]], float]:
    run_id = uuid.uuid4().hex[:8]
    pool = platform.pool("coupon", limit=4)
    try:
        template, campaign = f"BENCH-5OFF-{run_id}", f"BENCH-{run_id}"
        status, body = await pool.call(
            "POST",
            "/v1/coupon-templates",
            {
                "code": template,
                "name": "5 yuan off",
                "kind": "amount_off",
                "value": 500,
                "min_spend_minor": 1000,
                "valid_days": 30,
            },
        )
        assert status == 201, body
        status, body = await pool.call(
            "POST",
            "/v1/campaigns",
            {"code": campaign, "template_codes": [template], "trigger": {"type": "manual"}},
        )
        assert status == 201, body
        started = time.perf_counter()
        for start in range(0, coupons, 50_000):
            member_ids = [f"bc{run_id}{i:07d}" for i in range(start, min(coupons, start + 50_000))]
            status, body = await pool.call(
                "POST", f"/v1/campaigns/{campaign}/issue", {"member_ids": member_ids}
            )
            assert status == 202, body
            job_id = body["job_id"]
            while True:
                status, job = await pool.call("GET", f"/v1/jobs/{job_id}")
                if job["status"] in ("completed", "failed"):
                    break
                await asyncio.sleep(0.25)
            assert job["status"] == "completed", job
        issue_s = time.perf_counter() - started
    finally:
        pool.close()
    conn = await asyncpg.connect(platform.dsn("coupon"))
    try:
        rows = await conn.fetch(
            "SELECT coupon_code, member_id FROM coupons WHERE campaign_code = $1 "
            "ORDER BY member_id",
            campaign,
        )
    finally:
        await conn.close()
    return campaign, [(r["coupon_code"], r["member_id"]) for r in rows], issue_s


async def run(platform: Platform, rate: float, duration: float) -> dict[str, Any]:
    pairs = int(rate * duration) // 2 + 1
    print(f"coupons: issuing {pairs} coupons through a manual campaign...", flush=True)
    _, coupons, issue_s = await issue(platform, pairs)
    assert len(coupons) >= pairs, f"issued {len(coupons)} of {pairs}"
    pool = platform.pool("coupon")
    doubles: set[int] = set()

    def request(i: int) -> bytes:
        pair = i // 2
        code, member_id = coupons[pair]
        if i % 2 == 0:
            return pool.encode(
                "POST",
                "/v1/validations",
                {"member_id": member_id, "total_minor": 12900, "coupon_codes": [code]},
            )
        if pair % DOUBLE_EVERY == DOUBLE_EVERY - 1 and pair >= DOUBLE_LAG:
            doubles.add(i)
            code, member_id = coupons[pair - DOUBLE_LAG]
        return pool.encode(
            "POST",
            "/v1/redemptions",
            {
                "coupon_code": code,
                "member_id": member_id,
                "order_id": f"BR-{i}",
                "total_minor": 12900,
            },
        )

    print(f"coupons: {rate:.0f} requests/s open-loop for {duration:.0f} s...", flush=True)
    meter = CpuMeter(platform.pids()).start()
    outcomes, wall = await open_loop(pool, rate, duration, request)
    spent = meter.stop()
    pool.close()
    errors: dict[str, int] = {}
    expected_409 = invalid = 0
    validations, redemptions = [], []
    # A coupon redeemed twice on purpose must answer one 201 and one 409, in either order:
    # behind a deep queue the deliberate double may overtake the first redemption.
    by_coupon: dict[int, list[int]] = {}
    for o in outcomes:
        latency = o.done - o.scheduled
        if o.index % 2 == 0:
            validations.append(latency)
            if o.status != 200:
                errors[f"validation {o.status}"] = errors.get(f"validation {o.status}", 0) + 1
            elif not orjson.loads(o.body)["items"][0]["valid"]:
                invalid += 1
            continue
        redemptions.append(latency)
        pair = o.index // 2
        target = pair - DOUBLE_LAG if o.index in doubles else pair
        if target % DOUBLE_EVERY == DOUBLE_EVERY - 1 - DOUBLE_LAG % DOUBLE_EVERY and (
            2 * (target + DOUBLE_LAG) + 1 in doubles
        ):
            by_coupon.setdefault(target, []).append(o.status)
        elif o.status != 201:
            errors[f"redemption {o.status}"] = errors.get(f"redemption {o.status}", 0) + 1
    for statuses in by_coupon.values():
        if sorted(statuses) == [201, 409]:
            expected_409 += 1
        else:
            key = "double redemption answered " + "+".join(map(str, sorted(statuses)))
            errors[key] = errors.get(key, 0) + 1
    every = summary_ms([o.done - o.scheduled for o in outcomes])
    result = {
        "rate_target": rate,
        "duration_s": duration,
        "coupons_issued": len(coupons),
        "issue_seconds": issue_s,
        "issue_per_second": len(coupons) / issue_s,
        "requests": len(outcomes),
        "achieved_rate": len(outcomes) / wall,
        "all": every,
        "validations": summary_ms(validations),
        "redemptions": summary_ms(redemptions),
        "deliberate_doubles": len(doubles),
        "expected_409": expected_409,
        "validations_not_valid": invalid,
        "errors": errors,
        "peak_connections": pool.peak,
        "goal_p99_ms": GOAL_P99_MS,
        "cpu_s": spent,
        "cpu_s_per_1000_requests": per_1000(spent, len(outcomes)),
    }
    result["goal_met"] = every["p99_ms"] < GOAL_P99_MS and not errors
    return result


def markdown(r: dict[str, Any]) -> list[str]:
    def row(name: str, s: dict[str, float], goal: str = "") -> str:
        return (
            f"| {name} | {s['count']} | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} | "
            f"{s['p99_ms']:.1f} | {s['max_ms']:.1f} | {goal} |"
        )

    cpu = r["cpu_s_per_1000_requests"]
    return [
        f"## 3. Coupon validation + redemption at {r['rate_target']:.0f} requests/s for "
        f"{r['duration_s']:.0f} s (open loop)",
        "",
        f"{r['coupons_issued']} coupons bulk-issued through the API in {r['issue_seconds']:.1f} s "
        f"({r['issue_per_second']:,.0f}/s). Achieved {r['achieved_rate']:.1f} requests/s; "
        f"deliberate double redemptions {r['deliberate_doubles']}, answered 409: "
        f"{r['expected_409']}; errors beyond those: {r['errors'] or 'none'}; validations "
        f"answering not valid: {r['validations_not_valid']}.",
        "",
        "| latency (ms, scheduled send → answer) | n | p50 | p95 | p99 | max | goal |",
        "|---|---:|---:|---:|---:|---:|---|",
        row(
            "validations and redemptions",
            r["all"],
            f"p99 < {r['goal_p99_ms']:.0f}: **{'met' if r['goal_met'] else 'not met'}**",
        ),
        row("validations", r["validations"]),
        row("redemptions", r["redemptions"]),
        "",
        "CPU seconds per 1000 requests: "
        + ", ".join(f"{k} {v:.3f}" for k, v in cpu.items() if k != "total")
        + f"; **total {cpu['total']:.3f}** (wall {1000 / max(r['achieved_rate'], 1e-9):.2f} s "
        "per 1000 at the achieved rate).",
        "",
    ]
