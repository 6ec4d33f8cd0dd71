"""`make demo`: a year of a synthetic retailer, replayed through the platform's public API.

1. Starts the platform as `make run` does (`python -m loyalty_shared.devstack`), with its own
   data directory (`.run/demo/`, emptied first), on free ports.
2. Sets up what a marketer would: coupon templates, a welcome pack, a first-order pack and a
   second-visit pack with 10 % holdout groups, the easy win-back segment and its campaign.
3. Generates a retailer with a fixed seed: members who sign up over the year (some were
   there before it), each with their own purchase rate (gamma distributed: many light buyers,
   a few heavy ones), a preferred channel (POS or web), preferred categories and a churn day
   for some; seasonality (Chinese New Year dip, 618, Double 11, December); walk-in guests;
   refunds (partial and full); daily check-ins by the app's regulars; coupon redemptions at the
   till when the member shows a coupon that fits the basket.
4. Replays it day by day, oldest first, over HTTP with many requests in flight: sign-ups, orders
   (backdated `occurred_at`), refunds, check-ins, then the nightly jobs with `as_of` at the end
   of each simulated day (points release and expiry, tier review, segment recompute).
5. Waits for the consumers to catch up, runs the jobs as of now, then asks the analytics APIs
   what a marketer looks at and prints it, and writes `.run/demo-report.html` (charts inline).

Options: `--members`, `--days`, `--quick` (small sizes), `--seed`, `--data-dir`, `--report`,
`--keep-running` (leave the platform up afterwards, to explore it). Only the standard library,
httpx and pygal.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx

REPO = Path(__file__).resolve().parents[1]
TZ = ZoneInfo("Asia/Shanghai")
KEY = "dev-key"
SERVICES = {"member": 1, "points": 2, "coupon": 3, "notifier": 4, "segmenter": 5}
STAGES = ["prospect", "new", "active", "cooling", "easy_winback", "hard_winback", "lost"]
CATEGORIES = {  # category: (median price in fen, spread)
    "snacks": (1290, 0.5),
    "beverages": (650, 0.4),
    "fresh": (2480, 0.6),
    "bakery": (1580, 0.4),
    "household": (3990, 0.7),
    "personal_care": (5990, 0.6),
}
CAMPAIGNS = ["WELCOME", "FIRST-ORDER", "SECOND-VISIT", "WINBACK"]
# A customer is a member who bought in the last 90 days (a grocer's view; the analytics' default
# of 360 days would count everyone who bought during a one-year replay as retained).
ACTIVE_DAYS = 90


# --------------------------------------------------------------------------- the retailer


@dataclass
class Member:
    index: int
    phone: str
    signup_day: int
    rate: float  # orders a year while active
    channel_online: float  # probability that an order is online
    churn_day: int | None
    categories: list[str]
    checkin_rate: float  # probability of a check-in on a day (0: not an app regular)
    consents: dict[str, bool]
    member_id: str | None = None


@dataclass
class Order:
    day: int
    member: Member | None  # None: a walk-in guest
    channel: str
    occurred_at: datetime
    lines: list[dict[str, Any]]
    total_minor: int
    refund: tuple[int, int] | None = None  # (days later, amount)
    order_id: str | None = None


@dataclass
class Plan:
    start: date
    days: int
    members: list[Member]
    signups: dict[int, list[Member]] = field(default_factory=lambda: defaultdict(list))
    orders: dict[int, list[Order]] = field(default_factory=lambda: defaultdict(list))
    checkins: dict[int, list[tuple[Member, datetime]]] = field(
        default_factory=lambda: defaultdict(list)
    )

    def moment(self, day: int, rng: random.Random, open_hour: int = 9) -> datetime:
        """A time of day `day` in opening hours (Shanghai), as UTC; never in the future."""
        local = datetime.combine(self.start + timedelta(days=day), datetime.min.time(), TZ)
        minutes = rng.randrange(open_hour * 60, 21 * 60 + 30)
        moment = (local + timedelta(minutes=minutes)).astimezone(UTC)
        return min(moment, datetime.now(UTC) - timedelta(minutes=rng.randrange(2, 120)))


def season(d: date) -> float:
    """How busy a day is, relative to an ordinary one."""
    factor = {1: 1.05, 2: 0.7, 3: 0.9, 4: 0.95, 5: 1.0, 6: 1.15, 7: 0.95, 8: 0.95, 9: 1.0,
              10: 1.05, 11: 1.25, 12: 1.35}[d.month]  # fmt: skip
    if (d.month, d.day) in {(6, 18), (11, 11), (12, 12)}:
        factor *= 3.0  # 618, Double 11, Double 12
    if d.weekday() >= 5:
        factor *= 1.3
    return factor


def generate(members: int, days: int, seed: int, today: date) -> Plan:
    rng = random.Random(seed)
    start = today - timedelta(days=days - 1)
    people: list[Member] = []
    phones: set[str] = set()
    for index in range(members):
        while True:
            phone = rng.choice(["135", "136", "138", "139", "150", "186", "187"]) + "".join(
                rng.choices("0123456789", k=8)
            )
            if phone not in phones:
                phones.add(phone)
                break
        # A third were members before the year; the others join over it, more later on.
        signup_day = 0 if rng.random() < 0.3 else int(days * math.sqrt(rng.random()))
        rate = rng.gammavariate(0.9, 5.5)  # orders a year: mean ~5, long tail of heavy buyers
        churn_day = None
        if rng.random() < 0.3:  # churners stop buying some time after they join
            churn_day = signup_day + int(rng.expovariate(1 / 90))
        prefs = rng.sample(list(CATEGORIES), k=rng.choice([1, 2, 2, 3]))
        regular = rng.random() < 0.015
        people.append(
            Member(
                index=index,
                phone=phone,
                signup_day=min(signup_day, days - 1),
                rate=rate,
                channel_online=rng.choice([0.05, 0.2, 0.5, 0.8]),
                churn_day=churn_day,
                categories=prefs,
                checkin_rate=rng.uniform(0.3, 0.8) if regular else 0.0,
                consents={"sms": rng.random() < 0.6, "email": rng.random() < 0.3},
            )
        )
    plan = Plan(start=start, days=days, members=people)
    for member in people:
        plan.signups[member.signup_day].append(member)

    for day in range(days):
        d = start + timedelta(days=day)
        busy = season(d)
        for member in people:
            if day < member.signup_day or (member.churn_day is not None and day > member.churn_day):
                continue
            if rng.random() < member.rate / 365 * busy:
                plan.orders[day].append(_order(plan, rng, day, member))
            if member.checkin_rate and rng.random() < member.checkin_rate:
                plan.checkins[day].append((member, plan.moment(day, rng, open_hour=7)))
        guests = _poisson(rng, members * 0.0015 * busy)
        for _ in range(guests):
            plan.orders[day].append(_order(plan, rng, day, None))
    return plan


def _poisson(rng: random.Random, mean: float) -> int:
    threshold, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p < threshold:
            return k
        k += 1


def _order(plan: Plan, rng: random.Random, day: int, member: Member | None) -> Order:
    online = member is not None and rng.random() < member.channel_online
    wanted = member.categories if member else list(CATEGORIES)
    lines = []
    for _ in range(rng.choice([1, 1, 2, 2, 3, 4] if member else [1, 1, 1, 2])):
        category = rng.choice(wanted) if rng.random() < 0.8 else rng.choice(list(CATEGORIES))
        median, spread = CATEGORIES[category]
        price = max(100, int(rng.lognormvariate(math.log(median), spread)))
        lines.append(
            {
                "sku": f"{category[:3].upper()}-{rng.randrange(1, 60):04d}",
                "category": category,
                "quantity": rng.choice([1, 1, 1, 2, 2, 3]),
                "unit_price_minor": price,
            }
        )
    total = sum(line["quantity"] * line["unit_price_minor"] for line in lines)
    if online:
        total += 800 if total < 9900 else 0  # shipping
    order = Order(
        day=day,
        member=member,
        channel="online" if online else "pos",
        occurred_at=plan.moment(day, rng),
        lines=lines,
        total_minor=total,
    )
    if member is not None and rng.random() < 0.04:
        later = rng.randrange(1, 15)
        amount = total if rng.random() < 0.5 else max(1, int(total * rng.uniform(0.2, 0.6)))
        if day + later < plan.days:
            order.refund = (later, amount)
    return order


# --------------------------------------------------------------------------- the platform


def free_port_base() -> int:
    for _ in range(50):
        base = random.randrange(20000, 40000, 10)
        ok = True
        for offset in (1, 2, 3, 4, 5, 6, 9):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", base + offset))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free ports")


class Platform:
    """`make run`'s stack in the background, its output in a log file."""

    def __init__(self, data_dir: Path, port_base: int) -> None:
        self.data_dir = data_dir
        self.port_base = port_base
        self.log_path = data_dir / "platform.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "LOYALTY_DATA_DIR": str(self.data_dir),
            "LOYALTY_PORT_BASE": str(self.port_base),
            "LOYALTY_KAFKA_PORT": str(self.port_base + 9),
            "LOYALTY_LOG_LEVEL": os.environ.get("LOYALTY_LOG_LEVEL", "WARNING"),
        }
        env.pop("LOYALTY_API_KEYS", None)
        env.pop("LOYALTY_KAFKA_BOOTSTRAP", None)
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "loyalty_shared.devstack"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            if "press Ctrl-C to stop" in text:
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.5)
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the platform did not come up:\n{tail}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.port_base + SERVICES[service]}"


class Api:
    def __init__(self, platform: Platform, concurrency: int) -> None:
        limits = httpx.Limits(
            max_connections=concurrency * 2, max_keepalive_connections=concurrency
        )
        headers = {"Authorization": f"Bearer {KEY}"}
        self.clients = {
            name: httpx.AsyncClient(
                base_url=platform.url(name), headers=headers, timeout=120, limits=limits
            )
            for name in SERVICES
        }
        self.gate = asyncio.Semaphore(concurrency)
        self.calls = 0
        self.errors: Counter[str] = Counter()
        self.latency: Counter[str] = Counter()
        self.latency_n: Counter[str] = Counter()

    async def close(self) -> None:
        for client in self.clients.values():
            await client.aclose()

    async def call(
        self, service: str, method: str, path: str, body: Any = None, **params: Any
    ) -> tuple[int, Any]:
        async with self.gate:
            for attempt in range(5):
                try:
                    began = time.monotonic()
                    response = await self.clients[service].request(
                        method, path, json=body, params=params or None
                    )
                    self.latency[f"{method} {service}"] += time.monotonic() - began
                    self.latency_n[f"{method} {service}"] += 1
                except httpx.TransportError:
                    await asyncio.sleep(0.5 * (attempt + 1))
                    continue
                self.calls += 1
                if response.status_code in (429, 503) and attempt < 4:
                    await asyncio.sleep(0.5 * (attempt + 1))
                    continue
                if response.status_code >= 400:
                    self.errors[f"{method} {service} {response.status_code}"] += 1
                return response.status_code, response.json() if response.content else None
        self.errors[f"{method} {service} unreachable"] += 1
        return 0, None

    async def get(self, service: str, path: str, **params: Any) -> Any:
        status, body = await self.call(service, "GET", path, **params)
        if status != 200:
            raise RuntimeError(f"GET {service}{path}: {status} {body}")
        return body

    async def post(self, service: str, path: str, body: Any) -> tuple[int, Any]:
        return await self.call(service, "POST", path, body)

    async def job(self, service: str, job: str, as_of: datetime) -> dict[str, Any]:
        """Run a job as of a time; a failed run is run again, as an operator re-runs a night."""
        for _ in range(3):
            status, body = await self.post(
                service, f"/v1/admin/jobs/{job}/run", {"as_of": iso(as_of)}
            )
            if status == 200 and body:
                return dict(body.get("counts", {}))
            await asyncio.sleep(0.5)
        return {}

    async def metrics(self, service: str) -> dict[str, float]:
        async with self.gate:
            text = (await self.clients[service].get("/metrics")).text
        out: dict[str, float] = defaultdict(float)
        for line in text.splitlines():
            if line.startswith(
                ("loyalty_consumer_lag_messages{", "loyalty_outbox_backlog_events{")
            ):
                name = line.split("{", 1)[0]
                out[name] += float(line.rsplit(" ", 1)[1])
            elif line.startswith("loyalty_events_processed_total{"):
                out["processed"] += float(line.rsplit(" ", 1)[1])
        return out


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


# --------------------------------------------------------------------------- the replay


async def set_up(api: Api) -> None:
    templates = [
        {"code": "NEW-20OFF", "name": "20 yuan off 100", "kind": "amount_off", "value": 2000,
         "min_spend_minor": 10000, "valid_days": 30},
        {"code": "SNACKS-15", "name": "15% off snacks", "kind": "percent_off", "value": 15,
         "max_discount_minor": 3000, "categories": ["snacks"], "valid_days": 30,
         "per_member_limit": 5},
        {"code": "AGAIN-10", "name": "10 yuan off your next visit", "kind": "amount_off",
         "value": 1000, "min_spend_minor": 5000, "valid_days": 30, "per_member_limit": 5},
        {"code": "BACK-30", "name": "We miss you", "kind": "amount_off", "value": 3000,
         "min_spend_minor": 15000, "valid_days": 30, "per_member_limit": 3},
    ]  # fmt: skip
    for template in templates:
        await must(api.post("coupon", "/v1/coupon-templates", template))
    await must(
        api.post(
            "segmenter",
            "/v1/segments",
            {
                "code": "easy-winback",
                "name": "Easy win-back (dormant 91-180 days)",
                "rule": {"field": "lifecycle_stage", "op": "eq", "value": "easy_winback"},
            },
        )
    )
    campaigns = [
        {"code": "WELCOME", "name": "Welcome pack", "template_codes": ["NEW-20OFF"],
         "trigger": {"type": "member.registered"}},
        {"code": "FIRST-ORDER", "name": "New-customer pack", "template_codes": ["SNACKS-15"],
         "trigger": {"type": "first_order"}, "holdout_percent": 10},
        {"code": "SECOND-VISIT", "name": "Second visit", "template_codes": ["AGAIN-10"],
         "trigger": {"type": "nth_order", "n": 2}, "holdout_percent": 10},
        {"code": "WINBACK", "name": "Win-back", "template_codes": ["BACK-30"],
         "trigger": {"type": "segment.entered", "segment_code": "easy-winback"},
         "holdout_percent": 10},
    ]  # fmt: skip
    for campaign in campaigns:
        await must(api.post("coupon", "/v1/campaigns", campaign))


async def must(call: Any) -> Any:
    status, body = await call
    if status not in (200, 201, 202):
        raise RuntimeError(f"set-up refused: {status} {body}")
    return body


class Stats:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()


async def sign_up(api: Api, member: Member, stats: Stats) -> None:
    status, body = await api.post(
        "member",
        "/v1/members",
        {
            "phone": member.phone,
            "channel": "online" if member.channel_online > 0.5 else "pos",
            "store_id": None if member.channel_online > 0.5 else "store-sh-001",
            "consents": member.consents,
        },
    )
    if status == 201:
        member.member_id = body["member_id"]
        stats.counts["sign-ups"] += 1
    elif status == 409:
        member.member_id = body.get("member_id")


async def place(api: Api, order: Order, stats: Stats, rng: random.Random) -> None:
    member_id = order.member.member_id if order.member else None
    body: dict[str, Any] = {
        "channel": order.channel,
        "external_id": f"{order.channel.upper()}-{order.day:03d}-{rng.randrange(10**10):010d}",
        "store_id": "store-sh-001" if order.channel == "pos" else None,
        "occurred_at": iso(order.occurred_at),
        "status": "paid",
        "currency": "CNY",
        "total_minor": order.total_minor,
        "paid_minor": order.total_minor,
        "lines": order.lines,
    }
    if member_id:
        body["member_id"] = member_id
    status, placed = await api.post("member", "/v1/orders", body)
    if status not in (200, 202):
        return
    order.order_id = placed["order_id"]
    stats.counts["orders"] += 1
    stats.counts["guest orders" if member_id is None else "member orders"] += 1
    if member_id and rng.random() < 0.25:  # the member shows the app at the till
        await redeem_best(api, member_id, order, stats)


async def redeem_best(api: Api, member_id: str, order: Order, stats: Stats) -> None:
    status, wallet = await api.call(
        "coupon", "GET", f"/v1/members/{member_id}/coupons", status="issued"
    )
    if status != 200 or not wallet["items"]:
        return
    codes = [c["coupon_code"] for c in wallet["items"]][:5]
    status, checked = await api.post(
        "coupon",
        "/v1/validations",
        {
            "member_id": member_id,
            "total_minor": order.total_minor,
            "lines": order.lines,
            "coupon_codes": codes,
        },
    )
    if status != 200:
        return
    valid = [i for i in checked["items"] if i["valid"]]
    if not valid:
        return
    best = max(valid, key=lambda i: i["discount_minor"] or 0)
    status, _ = await api.post(
        "coupon",
        "/v1/redemptions",
        {
            "coupon_code": best["coupon_code"],
            "member_id": member_id,
            "order_id": order.order_id,
            "total_minor": order.total_minor,
            "lines": order.lines,
        },
    )
    if status == 201:
        stats.counts["coupons redeemed"] += 1


async def refund(api: Api, order: Order, stats: Stats, when: datetime) -> None:
    assert order.refund is not None
    if order.order_id is None:
        return
    status, _ = await api.post(
        "member",
        f"/v1/orders/{order.order_id}/refunds",
        {
            "external_id": f"RF-{order.order_id}",
            "amount_minor": order.refund[1],
            "occurred_at": iso(when),
        },
    )
    if status in (200, 202):
        stats.counts["refunds"] += 1


async def check_in(api: Api, member: Member, when: datetime, stats: Stats) -> None:
    if member.member_id is None:
        return
    status, _ = await api.post(
        "member", f"/v1/members/{member.member_id}/check-ins", {"occurred_at": iso(when)}
    )
    if status == 201:
        stats.counts["check-ins"] += 1


NIGHTLY = [
    ("points", "release-pending"),
    ("points", "expire"),
    ("member", "tier-review"),
    ("segmenter", "recompute"),
]


async def nightly(api: Api, as_of: datetime, stats: Stats) -> None:
    results = await asyncio.gather(*(api.job(s, j, as_of) for s, j in NIGHTLY))
    for (_, job), counts in zip(NIGHTLY, results, strict=True):
        stats.counts[f"job {job}"] += 1
        if job == "recompute":
            stats.counts["stage changes (nightly)"] += int(counts.get("stage_changes", 0))


class Progress:
    def __init__(self, total: int, width: int = 30) -> None:
        self.total, self.width, self.started = total, width, time.monotonic()
        self.tty = sys.stdout.isatty()
        self.last_line = 0.0

    def show(self, done: int, label: str) -> None:
        now = time.monotonic()
        if not self.tty and done < self.total and now - self.last_line < 5:
            return
        self.last_line = now
        filled = int(self.width * done / self.total)
        elapsed = now - self.started
        eta = elapsed / done * (self.total - done) if done else 0
        bar = "#" * filled + "." * (self.width - filled)
        line = f"[{bar}] {done}/{self.total} days  {label}  {elapsed:5.0f}s, ~{eta:4.0f}s left"
        if self.tty:
            print("\r" + line.ljust(110), end="", flush=True)
        else:
            print(line, flush=True)

    def finish(self) -> None:
        if self.tty:
            print(flush=True)


def day_start(plan: Plan, day: int) -> datetime:
    return datetime.combine(plan.start + timedelta(days=day), datetime.min.time(), TZ)


async def member_chain(
    api: Api, actions: list[tuple[datetime, int, Any]], stats: Stats, rng: random.Random
) -> None:
    """One member's doings of a stretch of days, one after the other in business time (so
    their first order comes before their second and a refund after its order)."""
    for _, _, action in sorted(actions, key=lambda a: (a[0], a[1])):
        await action()


async def replay(api: Api, plan: Plan, seed: int, window: int) -> Stats:
    """Day by day, `window` days at a time: within a window every member's sign-up, orders,
    check-ins and refunds run in their own chain, in business-time order, while all members
    run side by side; then the window's nights are run in order (in the background, while the
    next window's traffic goes in)."""
    rng = random.Random(seed + 1)
    stats = Stats()
    refunds: dict[int, list[Order]] = defaultdict(list)
    progress = Progress(plan.days)
    nights: asyncio.Task[None] | None = None
    cutoff = datetime.now(UTC) - timedelta(minutes=1)

    async def run_nights(days: list[int]) -> None:
        for day in days:
            night = datetime.combine(plan.start + timedelta(days=day + 1), datetime.min.time(), TZ)
            await nightly(api, min(night, datetime.now(UTC)), stats)

    for first in range(0, plan.days, window):
        days = list(range(first, min(first + window, plan.days)))
        chains: dict[int, list[tuple[datetime, int, Any]]] = defaultdict(list)
        guests = []
        for day in days:
            for member in plan.signups.get(day, []):
                chains[member.index].append(
                    (day_start(plan, day), 0, lambda m=member: sign_up(api, m, stats))
                )
            for order in plan.orders.get(day, []):
                if order.member is None:
                    guests.append(place(api, order, stats, rng))
                    continue
                chains[order.member.index].append(
                    (order.occurred_at, 1, lambda o=order: place(api, o, stats, rng))
                )
                if order.refund is not None:
                    refunds[day + order.refund[0]].append(order)
            for order in refunds.pop(day, []):
                assert order.member is not None and order.refund is not None
                when = min(order.occurred_at + timedelta(days=order.refund[0]), cutoff)
                chains[order.member.index].append(
                    (when, 2, lambda o=order, w=when: refund(api, o, stats, w))
                )
            for member, when in plan.checkins.get(day, []):
                chains[member.index].append(
                    (when, 3, lambda m=member, w=when: check_in(api, m, w, stats))
                )
        await asyncio.gather(
            *(member_chain(api, actions, stats, rng) for actions in chains.values()), *guests
        )
        if nights is not None:
            await nights
        nights = asyncio.create_task(run_nights(days))
        last = plan.start + timedelta(days=days[-1])
        progress.show(days[-1] + 1, f"{last.isoformat()}  orders {stats.counts['orders']:>6}")
    if nights is not None:
        await nights
    progress.finish()
    return stats


async def catch_up(api: Api, timeout: float) -> bool:
    """Wait until every consumer has caught up and every outbox is empty."""
    deadline = time.monotonic() + timeout
    quiet_since: float | None = None
    last = -1.0
    while time.monotonic() < deadline:
        readings = await asyncio.gather(*(api.metrics(s) for s in SERVICES))
        lag = sum(
            r["loyalty_consumer_lag_messages"] + r["loyalty_outbox_backlog_events"]
            for r in readings
        )
        processed = sum(r["processed"] for r in readings)
        if lag == 0 and processed == last:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 3:
                return True
        else:
            quiet_since = None
        last = processed
        await asyncio.sleep(1)
    return False


# --------------------------------------------------------------------------- the report


async def gather_report(api: Api, plan: Plan) -> dict[str, Any]:
    now = datetime.now(UTC)
    start = datetime.combine(plan.start, datetime.min.time(), TZ)
    first_month = plan.start.replace(day=1)
    months = []
    m = first_month
    while m <= now.astimezone(TZ).date():
        months.append(m)
        m = (m + timedelta(days=32)).replace(day=1)
    get = api.get
    report: dict[str, Any] = {}
    report["lifecycle"] = await get("segmenter", "/v1/analytics/lifecycle")
    report["leaky_bucket"] = await get(
        "segmenter",
        "/v1/analytics/leaky-bucket",
        start_month=months[0].strftime("%Y-%m"),
        end_month=months[-1].strftime("%Y-%m"),
        timezone="Asia/Shanghai",
        active_days=ACTIVE_DAYS,
    )
    report["retention"] = await get(
        "segmenter",
        "/v1/analytics/retention",
        start=iso(start),
        end=iso(now),
        active_days=ACTIVE_DAYS,
    )
    report["repeat"] = await get(
        "segmenter", "/v1/analytics/repeat-purchase", start=iso(start), end=iso(now)
    )
    report["members_vs_guests"] = await get(
        "segmenter", "/v1/analytics/members-vs-guests", start=iso(start), end=iso(now)
    )
    report["points_liability"] = await get(
        "segmenter", "/v1/analytics/points-liability", start=iso(start), end=iso(now)
    )
    report["ledger_liability"] = await get("points", "/v1/reports/liability")
    campaigns = {}
    for code in CAMPAIGNS:
        status, results = await api.call("segmenter", "GET", f"/v1/analytics/campaigns/{code}")
        coupon_side = await get("coupon", f"/v1/campaigns/{code}")
        campaigns[code] = {"analytics": results if status == 200 else None, "coupon": coupon_side}
    report["campaigns"] = campaigns
    return report


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _yuan(minor: Any) -> str:
    return "-" if minor is None else f"¥{minor / 100:,.2f}"


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """The figures the printout and the HTML share, pulled out of the analytics answers."""
    stages = report["lifecycle"].get("lifecycle_stages") or {}
    bucket = [
        {
            "month": row["month"],
            "start": row.get("customers_at_start"),
            "end": row.get("customers_at_end"),
            "new": row.get("new") or 0,
            "reactivated": row.get("reactivated") or 0,
            "gained": row.get("gained") or 0,
            "lost": row.get("lost") or 0,
            "retention": row.get("retention_rate"),
            "churn": row.get("churn_rate"),
        }
        for row in report["leaky_bucket"].get("items") or []
    ]
    return {"stages": {stage: int(stages.get(stage) or 0) for stage in STAGES}, "bucket": bucket}


def print_report(report: dict[str, Any], summary: dict[str, Any], stats: Stats) -> None:
    print()
    print("Members by lifecycle stage (now)")
    total = sum(summary["stages"].values()) or 1
    for stage, count in summary["stages"].items():
        bar = "#" * round(40 * count / total)
        print(f"  {stage:<13} {count:>6}  {bar}")
    print()
    print("  month    customers  gained (new + back)      lost  retention %")
    for row in summary["bucket"]:
        gained = f"{_num(row['gained'])} ({_num(row['new'])} + {_num(row['reactivated'])})"
        print(
            f"  {row['month']}  {_num(row['end']):>8}  {gained:<22} {_num(row['lost']):>6}"
            f"  {_num(row['retention']):>10}"
        )
    retention = report["retention"]
    print(
        f"Over the whole period: S {retention['S']}, E {retention['E']}, N {retention['N']}, "
        f"retention {_num(retention['retention_rate'])} %, churn {_num(retention['churn_rate'])} %"
    )
    print()
    repeat = report["repeat"]
    print(f"Repeat purchase rate over the period: {_num(repeat.get('repeat_purchase_rate'))} %")
    mvg = report["members_vs_guests"]
    print(
        "Spend per order: members "
        f"{_yuan((mvg.get('members') or {}).get('spend_per_order_minor'))}, guests "
        f"{_yuan((mvg.get('guests') or {}).get('spend_per_order_minor'))} "
        f"(x{_num(mvg.get('spend_per_order_ratio'), 2)})"
    )
    ledger = report["ledger_liability"]["points"]
    print(
        f"Points liability: {_num(ledger.get('outstanding'))} outstanding "
        f"({_num(ledger.get('available'))} available, {_num(ledger.get('pending'))} pending)"
    )
    print()
    print("Campaign        issued  redeemed  rate %  receivers resp. %  holdout resp. %")
    for code, data in report["campaigns"].items():
        a = data["analytics"] or {}
        receivers = a.get("receivers") or {}
        holdout = a.get("holdout") or {}
        print(
            f"  {code:<13} {_num(a.get('issued', 0)):>6}  {_num(a.get('redeemed', 0)):>8}"
            f"  {_num(a.get('redemption_rate')):>6}  {_num(receivers.get('response_rate')):>17}"
            f"  {_num(holdout.get('response_rate')):>15}"
        )
    print()
    print("Replayed: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.counts.items())))


def chart(kind: str, title: str, **options: Any) -> Any:
    import pygal
    from pygal.style import Style

    style = Style(
        background="white",
        plot_background="white",
        font_family="system-ui, sans-serif",
        colors=("#2563eb", "#16a34a", "#dc2626", "#f59e0b", "#7c3aed", "#0891b2", "#6b7280"),
        title_font_size=16,
        label_font_size=11,
        major_label_font_size=11,
        legend_font_size=12,
    )
    factory = getattr(pygal, kind)
    return factory(
        title=title,
        style=style,
        js=[],
        disable_xml_declaration=True,
        width=760,
        height=380,
        explicit_size=False,
        legend_at_bottom=True,
        print_values=False,
        **options,
    )


def write_html(
    path: Path, report: dict[str, Any], summary: dict[str, Any], stats: Stats, meta: dict[str, Any]
) -> None:
    stages = summary["stages"]
    lifecycle_chart = chart("HorizontalBar", "Members by lifecycle stage")
    for stage, count in stages.items():
        lifecycle_chart.add(stage, count)

    bucket = summary["bucket"]
    months = [row["month"] for row in bucket]
    bucket_chart = chart(
        "Bar", "Leaky bucket: customers gained and lost per month", x_label_rotation=30
    )
    bucket_chart.x_labels = months
    bucket_chart.add("new", [row["new"] for row in bucket])
    bucket_chart.add("reactivated", [row["reactivated"] for row in bucket])
    bucket_chart.add("lost", [-(row["lost"] or 0) for row in bucket])
    customers_chart = chart("Line", "Customers at month end", x_label_rotation=30)
    customers_chart.x_labels = months
    customers_chart.add("customers", [row["end"] for row in bucket])

    retention_chart = chart("Line", "Retention and churn rate by month (%)", x_label_rotation=30)
    retention_chart.x_labels = months
    retention_chart.add("retention %", [row["retention"] for row in bucket])
    retention_chart.add("churn %", [row["churn"] for row in bucket])

    ledger = report["ledger_liability"]
    points = ledger["points"]
    liability_chart = chart("Pie", "Points liability now", inner_radius=0.45)
    liability_chart.add("available", max(0, points.get("available") or 0))
    liability_chart.add("pending", max(0, points.get("pending") or 0))
    expired = ledger.get("expired_by_month") or []

    campaign_chart = chart("Bar", "Campaigns: coupons issued and redeemed")
    campaign_chart.x_labels = list(report["campaigns"])
    issued = [(d["analytics"] or {}).get("issued", 0) for d in report["campaigns"].values()]
    redeemed = [(d["analytics"] or {}).get("redeemed", 0) for d in report["campaigns"].values()]
    campaign_chart.add("issued", issued)
    campaign_chart.add("redeemed", redeemed)

    def svg(c: Any) -> str:
        return c.render(is_unicode=True)

    rows = []
    for code, data in report["campaigns"].items():
        a = data["analytics"] or {}
        receivers, holdout = a.get("receivers") or {}, a.get("holdout") or {}
        lift = a.get("lift") or {}
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(v))}</td>"
                for v in (
                    code,
                    (data["coupon"] or {}).get("name", ""),
                    _num(a.get("issued", 0)),
                    _num(a.get("redeemed", 0)),
                    _num(a.get("redemption_rate")),
                    _yuan(a.get("discount_minor")),
                    _num(receivers.get("members")),
                    _num(receivers.get("response_rate")),
                    _num(holdout.get("members")),
                    _num(holdout.get("response_rate")),
                    _yuan(lift.get("revenue_per_member_minor")),
                )
            )
            + "</tr>"
        )
    bucket_rows = "".join(
        f"<tr><td>{r['month']}</td><td>{_num(r['start'])}</td><td>{_num(r['new'])}</td>"
        f"<td>{_num(r['reactivated'])}</td><td>{_num(r['lost'])}</td><td>{_num(r['end'])}</td>"
        f"<td>{_num(r['retention'])}</td></tr>"
        for r in bucket
    )
    repeat = report["repeat"]
    retention = report["retention"]
    mvg = report["members_vs_guests"]
    liability_points = report["points_liability"]
    total_members = sum(stages.values())
    stage_cards = "".join(
        f"<div class='card'><div class='n'>{_num(stages[s])}</div><div>{s.replace('_', ' ')}</div>"
        f"<div class='pct'>{100 * stages[s] / (total_members or 1):.0f} %</div></div>"
        for s in STAGES
    )
    mvg_rows = "".join(
        f"<tr><td>{group}</td><td>{_num(g.get('orders'))}</td>"
        f"<td>{_yuan(g.get('revenue_minor'))}</td><td>{_yuan(g.get('spend_per_order_minor'))}</td>"
        f"<td>{_num(g.get('buyers'))}</td><td>{_num(g.get('orders_per_buyer'), 2)}</td></tr>"
        for group in ("members", "guests")
        if isinstance(g := mvg.get(group) or {}, dict)
    )
    expired_rows = "".join(
        f"<tr><td>expired in {html.escape(str(e.get('month')))}</td>"
        f"<td>{_num(e.get('points'))}</td></tr>"
        for e in expired
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Loyalty demo: a year of a synthetic retailer</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #111; }}
h1 {{ margin-bottom: 0.2rem; }} .sub {{ color: #555; margin-top: 0; }}
section {{ margin: 2rem 0; }} table {{ border-collapse: collapse; font-size: 0.9rem; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 0.3rem 0.6rem; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
.cards {{ display: flex; gap: 0.6rem; flex-wrap: wrap; }}
.card {{ border: 1px solid #ddd; border-radius: 8px; padding: 0.6rem 1rem; min-width: 7rem; }}
.card .n {{ font-size: 1.6rem; font-weight: 600; }} .card .pct {{ color: #555; }}
.grid {{ display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }}
.note {{ color: #555; font-size: 0.85rem; }} svg {{ max-width: 100%; height: auto; }}
</style></head><body>
<h1>A year of a synthetic retailer</h1>
<p class="sub">{html.escape(meta["line"])}</p>

<section><h2>Members by lifecycle stage</h2>
<div class="cards">{stage_cards}</div>
{svg(lifecycle_chart)}
<p class="note">new: first order in the last 45 days; active: earlier first order, last within
45 days; cooling: 46-90 days since the last order; easy win-back 91-180; hard win-back
181-360; lost: over 360; prospect: no paid order yet.</p></section>

<section><h2>Retention and the leaky bucket</h2>
<div class="grid">{svg(bucket_chart)}{svg(customers_chart)}</div>
{svg(retention_chart)}
<table><tr><th>month</th><th>customers at start</th><th>new</th><th>reactivated</th>
<th>lost</th><th>customers at end</th><th>retention %</th></tr>{bucket_rows}</table>
<p class="note">A customer is a member with a paid order in the 90 days before. Retention
= (E &minus; N) / S &times; 100; lost = S &minus; (E &minus; N). Repeat purchase rate over
the period: {_num(repeat.get("repeat_purchase_rate"))} %; over the whole period
S {retention["S"]}, E {retention["E"]}, N {retention["N"]}: retention
{_num(retention["retention_rate"])} %.</p></section>

<section><h2>Points liability</h2>
<div class="grid">{svg(liability_chart)}
<table><tr><th>figure</th><th>points</th></tr>
<tr><td>available</td><td>{_num(points.get("available"))}</td></tr>
<tr><td>pending</td><td>{_num(points.get("pending"))}</td></tr>
<tr><td>negative balances</td><td>{_num(points.get("negative_balances"))}</td></tr>
<tr><td>outstanding</td><td>{_num(points.get("outstanding"))}</td></tr>
<tr><td>redemption rate (segmenter) %</td>
<td>{_num(liability_points.get("redemption_rate"))}</td></tr>
{expired_rows}</table></div></section>

<section><h2>Campaign results</h2>
{svg(campaign_chart)}
<table><tr><th>campaign</th><th>name</th><th>issued</th><th>redeemed</th><th>rate %</th>
<th>discount</th><th>receivers</th><th>resp. %</th><th>holdout</th><th>resp. %</th>
<th>revenue / member lift</th></tr>{"".join(rows)}</table>
<p class="note">Receivers and the 10 % holdout are each measured over the 30 days from their
coupon (or holdout assignment). The coupon service issues on its own clock, so in this
backdated replay every coupon is issued during the replay, and the response windows open after
the replayed orders: the response and lift columns stay near zero here; on a live platform
they fill in over the following 30 days.</p></section>

<section><h2>Members versus guests</h2>
<table><tr><th>group</th><th>orders</th><th>revenue</th><th>spend per order</th>
<th>buyers</th><th>orders per buyer</th></tr>{mvg_rows}</table>
<p class="note">Spend per order, members against guests:
x{_num(mvg.get("spend_per_order_ratio"), 2)}.</p></section>

<section class="note"><h2>About this run</h2>
<p>{html.escape(", ".join(f"{k}: {v}" for k, v in sorted(stats.counts.items())))}</p>
<p>{html.escape(meta["timing"])}</p></section>
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")


# --------------------------------------------------------------------------- main


async def run(args: argparse.Namespace, platform: Platform) -> int:
    started = time.monotonic()
    today = datetime.now(TZ).date()
    plan = generate(args.members, args.days, args.seed, today)
    n_orders = sum(len(v) for v in plan.orders.values())
    n_checkins = sum(len(v) for v in plan.checkins.values())
    print(
        f"[demo] {len(plan.members)} members, {n_orders} orders, {n_checkins} check-ins over "
        f"{args.days} days from {plan.start} (seed {args.seed})",
        flush=True,
    )
    api = Api(platform, args.concurrency)
    try:
        await set_up(api)
        replay_started = time.monotonic()
        stats = await replay(api, plan, args.seed, args.window)
        replay_seconds = time.monotonic() - replay_started
        print(f"[demo] replayed in {replay_seconds:.0f}s; waiting for the consumers", flush=True)
        caught_up = await catch_up(api, args.settle_timeout)
        await nightly(api, datetime.now(UTC), stats)
        await catch_up(api, 30)
        report = await gather_report(api, plan)
        summary = summarise(report)
        total = time.monotonic() - started
        meta = {
            "line": (
                f"{len(plan.members):,} members, {stats.counts['orders']:,} orders "
                f"({stats.counts['guest orders']:,} by guests), {stats.counts['refunds']:,} "
                f"refunds and {stats.counts['check-ins']:,} check-ins from {plan.start} to "
                f"{today}, replayed through the public API (seed {args.seed})."
            ),
            "timing": (
                f"Replay {replay_seconds:.0f}s, {api.calls:,} HTTP calls; total "
                f"{total:.0f}s after the platform came up"
                + ("" if caught_up else "; the consumers had not fully caught up")
                + (f"; refused calls: {dict(api.errors)}" if api.errors else "")
            ),
        }
        print_report(report, summary, stats)
        write_html(Path(args.report), report, summary, stats, meta)
        (Path(args.report).with_suffix(".json")).write_text(json.dumps(report, indent=1))
        print(f"\n[demo] {meta['timing']}")
        print(f"[demo] report: {args.report}")
        return 0
    finally:
        await api.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=None, help="members (default 2000)")
    parser.add_argument("--days", type=int, default=None, help="days replayed (default 365)")
    parser.add_argument("--quick", action="store_true", help="small sizes: 300 members, 90 days")
    parser.add_argument("--seed", type=int, default=20261124)
    parser.add_argument("--concurrency", type=int, default=24, help="requests in flight")
    parser.add_argument("--window", type=int, default=7, help="days replayed side by side")
    parser.add_argument("--data-dir", default=str(REPO / ".run" / "demo"))
    parser.add_argument("--report", default=str(REPO / ".run" / "demo-report.html"))
    parser.add_argument("--port-base", type=int, default=None, help="default: free ports")
    parser.add_argument("--settle-timeout", type=float, default=240)
    parser.add_argument("--keep-running", action="store_true", help="leave the platform up")
    args = parser.parse_args(argv)
    if args.members is None:
        args.members = 300 if args.quick else 2000
    if args.days is None:
        args.days = 90 if args.quick else 365
    data_dir = Path(args.data_dir).resolve()
    if data_dir.exists():
        shutil.rmtree(data_dir)
    platform = Platform(data_dir, args.port_base or free_port_base())
    print(f"[demo] starting the platform (data in {data_dir}) ...", flush=True)
    up = time.monotonic()
    platform.start()
    print(f"[demo] the platform is up in {time.monotonic() - up:.0f}s", flush=True)
    code = 1
    try:
        code = asyncio.run(run(args, platform))
    except KeyboardInterrupt:
        print("\n[demo] interrupted", flush=True)
        code = 130
    finally:
        if args.keep_running and code == 0:
            print(
                f"[demo] the platform keeps running: member API {platform.url('member')}, "
                f"key dev-key; stop it with: kill -INT -{platform.process.pid}"  # type: ignore[union-attr]
            )
        else:
            platform.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
