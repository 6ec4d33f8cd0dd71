"""What the replays and the crashes need to know of each consumer other than points (member,
coupon, notifier, segmenter): its topics, its stream, how it is set up over its HTTP API, how
the stream's ids become its own, its observable state normalised so that two databases can be
compared (ids, codes and clock times that legitimately differ are left out or mapped back to
the stream's names), and what its outbox may hold.

The oracle for these services is a clean single pass of the same stream into a fresh database:
after any delivery (duplicates, re-sent facts, reorderings across members, SIGKILLs) the state
must equal it. Where a plain-Python expectation is cheap it is checked too (`expectations`).

Outbox events come in two kinds. Facts (a coupon issued, a notification suppressed) must be
as many as in the clean pass. Transitions of a member's state (a tier, a lifecycle stage, a
segment membership) are announced once per change the consumer sees, and a consumer that
receives a member's sign-up and first order in one batch rightly sees one change where one
that receives them in two batches sees two: for those the check is that each member's chain is
consistent (every event starts where the last one ended, none repeats a state, no membership
is entered twice without an exit) and ends in the state the database holds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime, time, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

import httpx
import orjson
from loyalty_shared.events import COUPONS, MEMBERS, NOTIFICATIONS, ORDERS, POINTS, SEGMENTS
from loyalty_shared.kafka import dlq_topic
from loyalty_shared.service import ServiceDefinition
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from .streams_other import (
    WELCOME_PLACEHOLDER,
    Item,
    Rewrite,
    Stream,
    coupon_stream,
    member_stream,
    notifier_stream,
    segmenter_stream,
)

State = dict[str, Any]


@dataclasses.dataclass
class Context:
    """What one database's service made of the stream's names: member ids (member service),
    welcome coupon codes (coupon service)."""

    members: dict[str, str] = dataclasses.field(default_factory=dict)  # stream's → service's
    codes: dict[str, str] = dataclasses.field(default_factory=dict)  # member → welcome code
    _back: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)

    def name_of(self, member_id: str | None) -> str | None:
        """The stream's name of a service's member id."""
        if member_id is None or not self.members:
            return member_id
        if len(self._back) != len(self.members):
            self._back = {v: k for k, v in self.members.items()}
        return self._back.get(member_id, member_id)


async def _rows(conn: AsyncConnection, sql: str, **params: Any) -> list[Any]:
    return list((await conn.execute(text(sql), params)).all())


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


async def outbox(conn: AsyncConnection) -> list[dict[str, Any]]:
    """The service's outbox, in seq order, decoded."""
    return [
        {"seq": r.seq, "event_id": r.event_id, "type": r.type, **orjson.loads(r.value)}
        for r in await _rows(conn, "SELECT seq, event_id, type, value FROM outbox ORDER BY seq")
    ]


class Consumer:
    """A consumer under test; subclasses fill in the service's particulars."""

    name: str
    consumes: tuple[str, ...]
    publishes: tuple[str, ...]
    resend = True  # the stream's re-sent facts are the same facts to this service
    transitions: tuple[str, ...] = ()  # outbox types checked as chains, not counts

    @property
    def group(self) -> str:
        return f"loyalty-{self.name}"

    def topics(self) -> list[str]:
        dlqs = [dlq_topic(t, self.group) for t in self.consumes]
        return list(dict.fromkeys([*self.consumes, *self.publishes, *dlqs]))

    def generate(self, seed: int, members: int, base: datetime) -> Stream:
        raise NotImplementedError

    def definition(self) -> ServiceDefinition:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """Extra environment of the real process."""
        return {}

    async def setup(self, client: httpx.AsyncClient, stream: Stream) -> Context:
        return Context()

    def rewrite(self, ctx: Context) -> Rewrite | None:
        return None

    async def between_phases(self, conn: AsyncConnection, ctx: Context, stream: Stream) -> None:
        return None

    async def finish(self, client: httpx.AsyncClient, stream: Stream) -> None:
        """After the stream: jobs the comparison needs, at a fixed as_of."""
        return None

    async def state(self, conn: AsyncConnection, ctx: Context) -> State:
        raise NotImplementedError

    async def sample(self, client: httpx.AsyncClient, ctx: Context, stream: Stream) -> State:
        """Some of the state as the HTTP API answers it (normalised like `state`)."""
        return {}

    def expectations(self, stream: Stream, state: State, now: datetime) -> list[str]:
        """Cheap plain-Python expectations the state must meet (`now`: the service's clock
        while it consumed, to the minute); problems found."""
        return []

    def fact_key(self, event: dict[str, Any]) -> Any:
        """What makes an outbox fact the same fact (two rows with one key: produced twice)."""
        return event["event_id"]

    def chain_problems(self, events: list[dict[str, Any]], state: State, ctx: Context) -> list[str]:
        return []

    def summarise_outbox(
        self, events: list[dict[str, Any]], state: State, ctx: Context
    ) -> tuple[Counter[str], list[str]]:
        """(per-type counts of the fact types, problems: facts produced twice, broken chains)."""
        problems: list[str] = []
        facts = [e for e in events if e["type"] not in self.transitions]
        counts = Counter(e["type"] for e in facts)
        keys = Counter((e["type"], _freeze(self.fact_key(e))) for e in facts)
        twice = [key for key, n in keys.items() if n > 1]
        if twice:
            problems.append(f"outbox facts produced more than once: {twice[:5]}")
        transitions = [e for e in events if e["type"] in self.transitions]
        problems += self.chain_problems(transitions, state, ctx)
        return counts, problems


def _freeze(value: Any) -> Any:
    return _json(value) if isinstance(value, dict | list) else value


def _chains(
    events: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]
) -> dict[Any, list[dict[str, Any]]]:
    chains: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for event in sorted(events, key=lambda e: e["seq"]):
        chains[key(event)].append(event)
    return chains


def _state_chain_problems(
    chains: dict[Any, list[dict[str, Any]]],
    old: str,
    new: str,
    start: Any,
    final: dict[Any, Any],
    what: str,
    rank: dict[str, int] | None = None,
) -> list[str]:
    problems = []
    for key, chain in sorted(chains.items(), key=lambda kv: str(kv[0])):
        at = start
        for event in chain:
            data = event["data"]
            if data.get(old) != at:
                problems.append(f"{what} {key}: {data.get(old)}->{data[new]} after {at}")
            if data.get(old) == data[new]:
                problems.append(f"{what} {key}: a change to the same {data[new]}")
            if rank is not None and rank[data[new]] <= rank.get(data.get(old), -1):
                problems.append(f"{what} {key}: {data.get(old)}->{data[new]} is no upgrade")
            at = data[new]
        if key in final and final[key] != at:
            problems.append(f"{what} {key}: the last change says {at}, the database {final[key]}")
    return problems


# ---------------------------------------------------------------------------------------------
# member: lifetime points for a lifetime_points tier ladder
# ---------------------------------------------------------------------------------------------

LADDER = [("bronze", 0, 1.0), ("silver", 1000, 1.2), ("gold", 3000, 1.5)]
RANK = {code: n for n, (code, _, _) in enumerate(LADDER)}


def qualified(points: int) -> str:
    return [code for code, threshold, _ in LADDER if points >= threshold][-1]


class MemberConsumer(Consumer):
    name = "member"
    consumes = (POINTS,)
    publishes = (MEMBERS, ORDERS)
    resend = False  # points.* events come from the points outbox, their ids never change
    transitions = ("member.tier_changed", "member.card_issued")

    def generate(self, seed: int, members: int, base: datetime) -> Stream:
        return member_stream(seed, members, base)

    def definition(self) -> ServiceDefinition:
        import loyalty_member.bootstrap

        return loyalty_member.bootstrap.definition()

    async def setup(self, client: httpx.AsyncClient, stream: Stream) -> Context:
        body = {
            "metric": "lifetime_points",
            "tiers": [
                {"code": c, "name": c.title(), "threshold": t, "points_multiplier": m}
                for c, t, m in LADDER
            ],
        }
        response = await client.put("/v1/tiers", json=body)
        assert response.status_code == 200, response.text
        ctx = Context()
        for n, key in enumerate(stream.members):
            response = await client.post("/v1/members", json={"phone": phone_of(key, n)})
            assert response.status_code == 201, response.text
            ctx.members[key] = response.json()["member_id"]
        return ctx

    def rewrite(self, ctx: Context) -> Rewrite:
        def rewrite(item: Item) -> tuple[str | None, Any]:
            member_id = ctx.members[item.member_id] if item.member_id else None
            return member_id, item.data.model_copy(update={"member_id": member_id})

        return rewrite

    async def state(self, conn: AsyncConnection, ctx: Context) -> State:
        name = ctx.name_of
        members = {
            name(r.member_id): r.tier
            for r in await _rows(conn, "SELECT member_id, tier FROM members")
        }
        lifetime = {
            name(r.member_id): r.lifetime_earned
            for r in await _rows(conn, "SELECT member_id, lifetime_earned FROM member_points")
        }
        cards = sorted(
            (name(r.member_id), r.kind, r.plan_code)
            for r in await _rows(conn, "SELECT member_id, kind, plan_code FROM cards")
        )
        return {"tiers": members, "lifetime_points": lifetime, "cards": cards}

    async def sample(self, client: httpx.AsyncClient, ctx: Context, stream: Stream) -> State:
        out = {}
        for key in stream.members[:: max(len(stream.members) // 15, 1)]:
            response = await client.get(f"/v1/members/{ctx.members[key]}/tier")
            assert response.status_code == 200, response.text
            body = response.json()
            out[key] = (body["tier"], body["value"], body["qualified_tier"])
        return out

    def expectations(self, stream: Stream, state: State, now: datetime) -> list[str]:
        """Lifetime points: credits less reversals of earnings. The tier: the highest one a
        credit reached, as each credit of a member was applied in its order (upgrades at once,
        never down outside tier-review)."""
        problems = []
        total: dict[str, int] = defaultdict(int)
        peak: dict[str, int] = defaultdict(int)
        for item in stream.items:
            m, data = item.member_id, cast(Any, item.data)
            if item.type == "points.credited":
                total[m] += data.points
                peak[m] = max(peak[m], total[m])
            elif item.type == "points.reversed" and data.reverses == "earn":
                total[m] -= data.points
        for m in stream.members:
            got = state["lifetime_points"].get(m)
            if got != total[m]:
                problems.append(f"{m}: lifetime points {got}, expected {total[m]}")
            tier = state["tiers"].get(m)
            if tier != qualified(peak[m]):
                problems.append(
                    f"{m}: tier {tier}, expected {qualified(peak[m])} (highest total after a "
                    f"credit {peak[m]}, total now {total[m]})"
                )
        return problems

    def chain_problems(self, events: list[dict[str, Any]], state: State, ctx: Context) -> list[str]:
        changes = [e for e in events if e["type"] == "member.tier_changed"]
        cards = [e for e in events if e["type"] == "member.card_issued"]
        final = {m: t for m, t in state["tiers"].items()}
        chains = _chains(changes, lambda e: ctx.name_of(e["data"]["member_id"]))
        problems = _state_chain_problems(
            chains, "old_tier", "new_tier", "bronze", final, "tier of", RANK
        )
        if len(cards) != len(changes):
            problems.append(f"{len(changes)} tier changes but {len(cards)} tier cards issued")
        return problems


def phone_of(key: str, n: int) -> str:
    """A mainland mobile number of the stream's n-th member (unique up to 10000 members)."""
    return f"139{zlib.crc32(key.encode()) % 10**4:04d}{n % 10**4:04d}"


# ---------------------------------------------------------------------------------------------
# coupon: campaign triggers, redemption by order.paid, release by cancels and full refunds
# ---------------------------------------------------------------------------------------------

BUDGET_CAMPAIGN = "CHAOS-SECOND"


def in_holdout(campaign_code: str, member_id: str, percent: float) -> bool:
    """The contract's deterministic control group, restated (a hash of campaign and member)."""
    digest = hashlib.sha256(f"{campaign_code}\x00{member_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 < round(percent * 100)


class CouponConsumer(Consumer):
    name = "coupon"
    consumes = (MEMBERS, ORDERS, SEGMENTS)
    publishes = (COUPONS,)
    HOLDOUT = 30.0

    def generate(self, seed: int, members: int, base: datetime) -> Stream:
        return coupon_stream(seed, members, base)

    def definition(self) -> ServiceDefinition:
        import loyalty_coupon.bootstrap

        return loyalty_coupon.bootstrap.definition()

    def templates(self, base: datetime) -> list[dict[str, Any]]:
        window = {
            "starts_at": (base - timedelta(days=10)).isoformat(),
            "ends_at": (base + timedelta(days=90)).isoformat(),
        }
        return [
            {**t, **window}
            for t in [
                {"code": "CHAOS-WELCOME", "name": "Welcome", "kind": "amount_off", "value": 1000},
                {"code": "CHAOS-GIFT", "name": "Gift", "kind": "gift", "gift_sku": "GIFT-1"},
                {
                    "code": "CHAOS-TIER",
                    "name": "Tier",
                    "kind": "amount_off",
                    "value": 2000,
                    "per_member_limit": 2,
                },
                {
                    "code": "CHAOS-STREAK",
                    "name": "Streak",
                    "kind": "free_shipping",
                    "per_member_limit": 3,
                },
                {
                    "code": "CHAOS-WINBACK",
                    "name": "Winback",
                    "kind": "percent_off",
                    "value": 10,
                    "max_discount_minor": 3000,
                    "per_member_limit": 2,
                },
                {"code": "CHAOS-FIRST", "name": "First", "kind": "amount_off", "value": 500},
                {"code": "CHAOS-SECOND", "name": "Second", "kind": "amount_off", "value": 800},
            ]
        ]

    def campaigns(self, members: int) -> list[dict[str, Any]]:
        return [
            {"code": "CHAOS-WELCOME", "template_codes": ["CHAOS-WELCOME"],
             "trigger": {"type": "member.registered"}},
            {"code": "CHAOS-WELCOME-GIFT", "template_codes": ["CHAOS-GIFT"],
             "trigger": {"type": "member.registered"}, "holdout_percent": self.HOLDOUT},
            {"code": "CHAOS-TIER", "template_codes": ["CHAOS-TIER"],
             "trigger": {"type": "tier_changed", "tier": "silver"}},
            {"code": "CHAOS-STREAK", "template_codes": ["CHAOS-STREAK"],
             "trigger": {"type": "checkin_streak", "days": 7}},
            {"code": "CHAOS-WINBACK", "template_codes": ["CHAOS-WINBACK"],
             "trigger": {"type": "segment.entered", "segment_code": "winback"}},
            {"code": "CHAOS-FIRST", "template_codes": ["CHAOS-FIRST"],
             "trigger": {"type": "first_order"}},
            {"code": BUDGET_CAMPAIGN, "template_codes": ["CHAOS-SECOND"],
             "trigger": {"type": "nth_order", "n": 2}, "budget": max(members // 6, 1)},
        ]  # fmt: skip

    async def setup(self, client: httpx.AsyncClient, stream: Stream) -> Context:
        for template in self.templates(stream.base):
            response = await client.post("/v1/coupon-templates", json=template)
            assert response.status_code == 201, response.text
        for campaign in self.campaigns(len(stream.members)):
            response = await client.post("/v1/campaigns", json=campaign)
            assert response.status_code == 201, response.text
        return Context()

    async def between_phases(self, conn: AsyncConnection, ctx: Context, stream: Stream) -> None:
        """The welcome coupons the sign-ups gave: orders of the next phase name them."""
        ctx.codes = {
            r.member_id: r.coupon_code
            for r in await _rows(
                conn,
                "SELECT member_id, coupon_code FROM coupons WHERE campaign_code = 'CHAOS-WELCOME'",
            )
        }
        missing = set(stream.members) - set(ctx.codes)
        assert not missing, f"no welcome coupon for {sorted(missing)[:5]}"

    def rewrite(self, ctx: Context) -> Rewrite:
        def rewrite(item: Item) -> tuple[str | None, Any]:
            codes = getattr(item.data, "coupon_codes", None)
            if not codes or WELCOME_PLACEHOLDER not in codes:
                return item.member_id, item.data
            real = [ctx.codes[item.member_id] if c == WELCOME_PLACEHOLDER else c for c in codes]
            return item.member_id, item.data.model_copy(update={"coupon_codes": real})

        return rewrite

    async def state(self, conn: AsyncConnection, ctx: Context) -> State:
        rows = await _rows(
            conn,
            "SELECT coupon_code, member_id, campaign_code, template_code, trigger_key, status, "
            "valid_from, valid_until, issued_via, trigger_event_id, order_id, redeemed_at "
            "FROM coupons",
        )
        # A coupon's code is drawn at random: it is named by what it was issued for.
        name = {r.coupon_code: (r.member_id, r.campaign_code, r.trigger_key) for r in rows}
        coupons = sorted(
            (
                r.member_id,
                r.campaign_code,
                r.trigger_key,
                r.template_code,
                r.status,
                r.valid_from,
                r.valid_until,
                r.issued_via,
                r.trigger_event_id,
                r.order_id,
                r.redeemed_at,
            )
            for r in rows
            if r.campaign_code != BUDGET_CAMPAIGN
        )
        budget = Counter(
            (r.status, r.order_id is not None) for r in rows if r.campaign_code == BUDGET_CAMPAIGN
        )
        redemptions = sorted(
            (name[r.coupon_code], r.member_id, r.order_id, r.status, r.source, r.release_reason)
            for r in await _rows(
                conn,
                "SELECT coupon_code, member_id, order_id, status, source, release_reason "
                "FROM coupon_redemptions",
            )
        )
        grants = []
        budget_grants: Counter[str] = Counter()
        for r in await _rows(
            conn,
            "SELECT campaign_code, member_id, trigger_key, outcome, coupons_issued, reasons, via, "
            "event_id FROM campaign_grants",
        ):
            if r.campaign_code == BUDGET_CAMPAIGN:
                budget_grants[r.outcome] += 1
            else:
                grants.append((*r[:6], tuple(r.reasons), r.via, r.event_id))
        counters = {
            **{
                f"template {r.code}": r.issued_count
                for r in await _rows(conn, "SELECT code, issued_count FROM coupon_templates")
            },
            **{
                f"campaign {r.code}": r.issued_count
                for r in await _rows(conn, "SELECT code, issued_count FROM campaigns")
            },
        }
        return {
            "coupons": coupons,
            "budget_campaign_coupons": dict(budget),
            "redemptions": redemptions,
            "grants": sorted(grants, key=repr),
            "budget_campaign_grants": dict(budget_grants),
            "counters": counters,
        }

    async def sample(self, client: httpx.AsyncClient, ctx: Context, stream: Stream) -> State:
        out = {}
        for key in stream.members[:: max(len(stream.members) // 15, 1)]:
            response = await client.get(f"/v1/members/{key}/coupons", params={"limit": 100})
            assert response.status_code == 200, response.text
            out[key] = sorted(
                (c["template_code"], c["campaign_code"], c["status"], c["valid_until"])
                for c in response.json()["items"]
                if c["campaign_code"] != BUDGET_CAMPAIGN
            )
        return out

    def fact_key(self, event: dict[str, Any]) -> Any:
        d = event["data"]
        if event["type"] == "coupon.issued":
            return d["coupon_code"]
        if event["type"] == "coupon.holdout_assigned":
            return (d["campaign_code"], d["member_id"], d["grant_key"])
        return event["event_id"]

    def expectations(self, stream: Stream, state: State, now: datetime) -> list[str]:
        """Per member: one welcome coupon; the gift or the control group (by the hash); a tier
        coupon per distinct silver upgrade, a streak coupon per 7th, 14th... check-in day, a
        win-back coupon per distinct segment entry (each up to its per-member limit); a first
        order coupon for a first paid order; the budget campaign issues no more than its
        budget. The welcome coupon's fate follows its member's orders in their order."""
        problems = []
        coupons: Counter[tuple[str, str]] = Counter(
            (c[0], c[1]) for c in state["coupons"]
        )  # (member, campaign)
        want: Counter[tuple[str, str]] = Counter()
        tiers: dict[str, set] = defaultdict(set)
        streaks: dict[str, set] = defaultdict(set)
        winbacks: dict[str, set] = defaultdict(set)
        second = set()
        paid: set[str] = set()
        welcome: dict[str, tuple[str, str | None]] = {}  # member → (status, order)
        for item in stream.items:
            m, d = item.member_id, cast(Any, item.data)
            if m is None:
                continue
            if item.type == "member.registered":
                want[(m, "CHAOS-WELCOME")] = 1
                welcome[m] = ("issued", None)
                if not in_holdout("CHAOS-WELCOME-GIFT", m, self.HOLDOUT):
                    want[(m, "CHAOS-WELCOME-GIFT")] = 1
            elif item.type == "member.tier_changed" and d.reason != "downgrade":
                tiers[m].add(d.occurred_at)
            elif item.type == "member.checked_in" and d.streak_days % 7 == 0:
                streaks[m].add(d.date)
            elif item.type == "segment.entered":
                winbacks[m].add(d.as_of)
            elif item.type == "order.paid":
                if d.order_id in paid:
                    continue  # the same order posted again: the same fact
                paid.add(d.order_id)
                if d.paid_order_count == 1:
                    want[(m, "CHAOS-FIRST")] = 1
                if d.paid_order_count == 2:
                    second.add(m)
                if WELCOME_PLACEHOLDER in d.coupon_codes and welcome[m][0] == "issued":
                    welcome[m] = ("redeemed", d.order_id)
            elif item.type in ("order.cancelled", "order.refunded"):
                undone = item.type == "order.cancelled" or d.fully_refunded
                if undone and welcome.get(m) == ("redeemed", d.order_id):
                    welcome[m] = ("issued", None)
        for m in stream.members:
            want[(m, "CHAOS-TIER")] = min(len(tiers[m]), 2)
            want[(m, "CHAOS-STREAK")] = min(len(streaks[m]), 3)
            want[(m, "CHAOS-WINBACK")] = min(len(winbacks[m]), 2)
        for key in sorted(set(want) | set(coupons)):
            if want[key] != coupons[key]:
                problems.append(f"{key}: {coupons[key]} coupons, expected {want[key]}")
        budget = max(len(stream.members) // 6, 1)
        issued = sum(state["budget_campaign_coupons"].values())
        if issued != min(budget, len(second)):
            problems.append(f"budget campaign issued {issued}, expected {min(budget, len(second))}")
        for c in state["coupons"]:
            if c[1] == "CHAOS-WELCOME" and (c[4], c[9]) != welcome[c[0]]:
                problems.append(f"{c[0]}: welcome coupon {(c[4], c[9])}, expected {welcome[c[0]]}")
        return problems


# ---------------------------------------------------------------------------------------------
# notifier: preferences, planned deliveries, payment reminders
# ---------------------------------------------------------------------------------------------

MESSAGE_KINDS = {
    "member.registered": "marketing",
    "points.credited": "transactional",
    "coupon.issued": "marketing",
    "member.tier_changed": "transactional",
    "order.shipped": "transactional",
    "order.delivered": "transactional",
    "member.winback": "marketing",
}
NOTIFIER_CHANNELS = ("inbox", "email", "sms", "wechat", "push")
QUIET = (time(22, 0), time(8, 0))


def in_quiet_hours(at: datetime, timezone: str) -> datetime | None:
    """When the member's quiet hours (22:00-08:00 local) that hold `at` end, else None."""
    local = at.astimezone(ZoneInfo(timezone))
    now = local.time()
    if now >= QUIET[0]:
        return datetime.combine(local.date() + timedelta(days=1), QUIET[1], tzinfo=local.tzinfo)
    if now < QUIET[1]:
        return datetime.combine(local.date(), QUIET[1], tzinfo=local.tzinfo)
    return None


class NotifierConsumer(Consumer):
    name = "notifier"
    consumes = (MEMBERS, ORDERS, POINTS, COUPONS, SEGMENTS)
    publishes = (NOTIFICATIONS,)

    def __init__(self, quiet_hours: bool = True) -> None:
        self.quiet_hours = quiet_hours

    def generate(self, seed: int, members: int, base: datetime) -> Stream:
        return notifier_stream(seed, members, base)

    def definition(self) -> ServiceDefinition:
        from loyalty_notifier.bootstrap import build
        from loyalty_notifier.config import NotifierSettings

        quiet = {} if self.quiet_hours else {"quiet_start": "00:00", "quiet_end": "00:00"}
        settings = NotifierSettings(
            member_url="http://member.invalid", member_api_key="unused", **quiet
        )
        return build(settings)[0]

    def env(self) -> dict[str, str]:
        # The real process runs on the system clock: no quiet hours, so what is deferred does
        # not depend on the hour the test runs at.
        quiet = (
            {}
            if self.quiet_hours
            else {"NOTIFIER_QUIET_START": "00:00", "NOTIFIER_QUIET_END": "00:00"}
        )
        return {"NOTIFIER_MEMBER_URL": "http://member.invalid", **quiet}

    async def state(self, conn: AsyncConnection, ctx: Context) -> State:
        preferences = {
            r.member_id: (
                _json(r.consents),
                r.quiet_mode,
                r.quiet_start,
                r.quiet_end,
                r.timezone,
                r.locale,
                r.erased_at,
            )
            for r in await _rows(
                conn,
                "SELECT member_id, consents, quiet_mode, quiet_start, quiet_end, timezone, "
                "locale, erased_at FROM preferences",
            )
        }
        deliveries = sorted(
            (
                r.member_id,
                r.event_id,
                r.event_type,
                r.channel,
                r.category,
                r.status,
                r.reason,
                r.attempts,
                r.locale,
                r.not_before,
                _json(r.context),
            )
            for r in await _rows(
                conn,
                "SELECT member_id, event_id, event_type, channel, category, status, reason, "
                "attempts, locale, not_before, context FROM deliveries",
            )
        )
        reminders = sorted(
            # A reminder a paid or cancelled order called off keeps only its status: how much
            # of the order.placed it remembers depends on whether both came in one batch.
            (r.order_id, r.member_id, r.status)
            + ((r.event_id, r.due_at, _json(r.context)) if r.status == "pending" else ())
            for r in await _rows(
                conn,
                "SELECT order_id, member_id, status, event_id, due_at, context "
                "FROM payment_reminders",
            )
        )
        inbox = sorted(
            tuple(r)
            for r in await _rows(
                conn,
                "SELECT member_id, event_id, event_type, category, title, body FROM inbox_messages",
            )
        )
        return {
            "preferences": preferences,
            "deliveries": deliveries,
            "payment_reminders": reminders,
            "inbox": inbox,
        }

    async def sample(self, client: httpx.AsyncClient, ctx: Context, stream: Stream) -> State:
        out = {}
        for key in stream.members[:: max(len(stream.members) // 15, 1)]:
            response = await client.get("/v1/deliveries", params={"member_id": key, "limit": 500})
            assert response.status_code == 200, response.text
            out[key] = sorted(
                (d["event_id"], d["event_type"], d["channel"], d["status"], d["reason"])
                for d in response.json()["items"]
            )
        return out

    def fact_key(self, event: dict[str, Any]) -> Any:
        return (event["type"], event["data"]["delivery_id"])

    def expectations(self, stream: Stream, state: State, now: datetime) -> list[str]:
        """One delivery per message and channel (every built-in kind has a template on all five
        channels), planned by the rules of contract §7 as the member's preferences stood when
        the event came: inbox and transactional always queued, marketing suppressed without
        consent, deferred in quiet hours (at `now`, the clock's time), else queued; an erasure
        suppresses what is still queued or deferred, and nothing is planned after it. A placed
        order is reminded unless paid or cancelled (or its member erased meanwhile)."""
        problems = []
        consents: dict[str, dict[str, bool]] = {}
        zones: dict[str, str] = {}
        erased: set[str] = set()
        want: dict[tuple[str, str, str], tuple[str, str, str | None]] = {}
        reminders: dict[str, tuple[str, str]] = {}
        planned: dict[str, list[tuple[str, str, str]]] = defaultdict(list)  # member's keys
        ordered: dict[str, list[str]] = defaultdict(list)  # member's placed orders
        for item in stream.items:  # phase by phase; preferences change only between phases
            m, d = item.member_id, cast(Any, item.data)
            if m is None:
                continue
            if item.type == "member.registered":
                consents[m] = {c: bool(v) for c, v in d.consents.items()}
                zones[m] = d.timezone
            elif item.type == "member.updated" and d.consents is not None:
                consents[m] = {c: bool(v) for c, v in d.consents.items()}
            elif item.type == "member.erased":
                erased.add(m)
                for key in planned[m]:
                    if want[key][1] in ("queued", "deferred"):
                        want[key] = (m, "suppressed", "member_erased")
                for order in ordered[m]:
                    if reminders[order] == (m, "pending"):
                        reminders[order] = (m, "cancelled")
            elif item.type == "order.placed":
                reminders.setdefault(d.order_id, (m, "pending"))
                ordered[m].append(d.order_id)
            elif item.type in ("order.paid", "order.cancelled"):
                reminders[d.order_id] = (m, "cancelled")
            kinds = [item.type] if item.type in MESSAGE_KINDS else []
            winback = ("easy_winback", "hard_winback")
            if item.type == "member.lifecycle_changed" and d.new_stage in winback:
                kinds.append("member.winback")
            if m in erased:
                continue
            for kind in kinds:
                for channel in NOTIFIER_CHANNELS:
                    key = (item.event_id, kind, channel)
                    planned[m].append(key)
                    if MESSAGE_KINDS[kind] == "transactional" or channel == "inbox":
                        want[key] = (m, "queued", None)
                    elif not consents.get(m, {}).get(channel, False):
                        want[key] = (m, "suppressed", "no_consent")
                    elif self.quiet_hours and in_quiet_hours(now, zones[m]):
                        want[key] = (m, "deferred", "quiet_hours")
                    else:
                        want[key] = (m, "queued", None)
        got = {(d[1], d[2], d[3]): (d[0], d[5], d[6]) for d in state["deliveries"]}
        if len(got) != len(state["deliveries"]):
            problems.append("more than one delivery for an event, message type and channel")
        for key in sorted(set(want) | set(got)):
            if want.get(key) != got.get(key):
                problems.append(f"delivery {key}: {got.get(key)}, expected {want.get(key)}")
        got_reminders = {r[0]: (r[1], r[2]) for r in state["payment_reminders"]}
        if got_reminders != reminders:
            wrong = sorted(k for k in set(got_reminders) | set(reminders)
                           if got_reminders.get(k) != reminders.get(k))  # fmt: skip
            problems.append(
                "payment reminders: "
                + ", ".join(f"{k} {got_reminders.get(k)} != {reminders.get(k)}" for k in wrong[:5])
            )
        return problems


# ---------------------------------------------------------------------------------------------
# segmenter: profiles, order facts, points and coupon facts, segment memberships
# ---------------------------------------------------------------------------------------------

SEGMENTS_DEFINED = [
    ("big", {"field": "spend_minor", "op": "gte", "value": 30000}),
    ("winback", {"field": "lifecycle_stage", "op": "in",
                 "value": ["easy_winback", "hard_winback"]}),
    ("loyal", {"all": [{"field": "orders_count", "op": "gte", "value": 3},
                       {"field": "buyer_weight", "op": "in", "value": ["medium", "heavy"]}]}),
    ("snacks", {"field": "preference_tags", "op": "contains", "value": "snacks"}),
    ("silver", {"field": "tier", "op": "eq", "value": "silver"}),
    ("points-rich", {"field": "points_available", "op": "gte", "value": 300}),
    ("champions", {"all": [{"field": "rfm.r", "op": "gte", "value": 4},
                           {"field": "rfm.f", "op": "gte", "value": 4}]}),
    ("lapsing", {"field": "rfm.recency_days", "op": "between", "value": [60, 200]}),
]  # fmt: skip
STAGE_DAYS = (("new", 45), ("cooling", 90), ("easy_winback", 180), ("hard_winback", 360))


def lifecycle_stage(first: datetime | None, last: datetime | None, as_of: datetime) -> str:
    """Contract §8's stages, restated: whole days since the first and last paid order."""
    if first is None or last is None:
        return "prospect"
    since_last = max((as_of - last) // timedelta(days=1), 0)
    if since_last <= 45:
        return "new" if (as_of - first) // timedelta(days=1) <= 45 else "active"
    for stage, days in STAGE_DAYS[1:]:
        if since_last <= days:
            return stage
    return "lost"


class SegmenterConsumer(Consumer):
    name = "segmenter"
    consumes = (MEMBERS, ORDERS, POINTS, COUPONS)
    publishes = (SEGMENTS,)
    transitions = ("member.lifecycle_changed", "segment.entered", "segment.exited")
    RECOMPUTE_AFTER = timedelta(hours=1)  # recompute's as_of, from the stream's base

    def generate(self, seed: int, members: int, base: datetime) -> Stream:
        return segmenter_stream(seed, members, base)

    def definition(self) -> ServiceDefinition:
        import loyalty_segmenter.bootstrap

        return loyalty_segmenter.bootstrap.definition()

    async def setup(self, client: httpx.AsyncClient, stream: Stream) -> Context:
        for code, rule in SEGMENTS_DEFINED:
            response = await client.post(
                "/v1/segments", json={"code": code, "name": code.title(), "rule": rule}
            )
            assert response.status_code == 201, response.text
        return Context()

    async def finish(self, client: httpx.AsyncClient, stream: Stream) -> None:
        """recompute at a fixed as_of: RFM scores, and the segments that read them or days."""
        as_of = stream.base + self.RECOMPUTE_AFTER
        response = await client.post(
            "/v1/admin/jobs/recompute/run", json={"as_of": as_of.isoformat()}
        )
        assert response.status_code == 200, response.text
        assert response.json()["counts"]["members_due"] == 0, response.json()

    async def state(self, conn: AsyncConnection, ctx: Context) -> State:
        skip = {"created_at", "updated_at", "evaluated_at", "stage_changed_at", "rfm_scored_at"}
        profiles = {}
        for r in await _rows(conn, "SELECT * FROM profiles"):
            values = {k: v for k, v in r._mapping.items() if k not in skip}
            profiles[r.member_id] = tuple(
                (k, _json(v) if isinstance(v, dict | list) else v)
                for k, v in sorted(values.items())
            )
        orders = sorted(
            tuple(_json(v) if isinstance(v, dict | list) else v for v in r)
            for r in await _rows(
                conn,
                "SELECT order_id, member_id, channel, store_id, currency, occurred_at, paid_minor, "
                "refunded_minor, cancelled, counted, net_minor, categories, coupon_codes "
                "FROM profile_orders",
            )
        )
        points = sorted(
            tuple(r)
            for r in await _rows(conn, "SELECT occurred_at, kind, points FROM points_movements")
        )
        coupons = sorted(tuple(r) for r in await _rows(conn, "SELECT * FROM coupon_facts"))
        holdouts = sorted(tuple(r) for r in await _rows(conn, "SELECT * FROM campaign_holdouts"))
        members = sorted(
            tuple(r)
            for r in await _rows(conn, "SELECT segment_code, member_id FROM segment_members")
        )
        return {
            "profiles": profiles,
            "profile_orders": orders,
            "points_movements": points,
            "coupon_facts": coupons,
            "campaign_holdouts": holdouts,
            "segment_members": members,
        }

    async def sample(self, client: httpx.AsyncClient, ctx: Context, stream: Stream) -> State:
        out: State = {}
        for key in stream.members[:: max(len(stream.members) // 15, 1)]:
            response = await client.get(f"/v1/profiles/{key}")
            assert response.status_code == 200, response.text
            body = response.json()
            for moving in ("evaluated_at", "stage_changed_at", "rfm_scored_at", "updated_at"):
                body.pop(moving, None)
            if isinstance(body.get("rfm"), dict):  # days since the last order: as of reading
                body["rfm"].pop("recency_days", None)
            out[key] = _json(body)
        for code, _ in SEGMENTS_DEFINED:
            response = await client.get(f"/v1/segments/{code}/members", params={"limit": 500})
            assert response.status_code == 200, response.text
            out[f"segment {code}"] = sorted(i["member_id"] for i in response.json()["items"])
        return out

    def expectations(self, stream: Stream, state: State, now: datetime) -> list[str]:
        """Per member: paid orders that still count (not cancelled, not fully refunded), net
        spend, first and last of them, and the lifecycle stage they give at base."""
        problems = []
        orders: dict[str, dict[str, Any]] = {}
        for item in stream.items:
            d: Any = item.data
            if item.type == "order.paid":
                fact = {"m": item.member_id, "at": d.occurred_at, "paid": d.paid_minor}
                orders.setdefault(d.order_id, {**fact, "refunded": 0, "cancelled": False})
            elif item.type == "order.refunded" and d.order_id in orders:
                o = orders[d.order_id]
                o["refunded"] = max(o["refunded"], d.refunded_total_minor)
            elif item.type == "order.cancelled" and d.order_id in orders:
                orders[d.order_id]["cancelled"] = True
        counted: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for o in orders.values():
            if o["m"] and not o["cancelled"] and (o["paid"] == 0 or o["refunded"] < o["paid"]):
                counted[o["m"]].append(o)
        for m in stream.members:
            profile = dict(state["profiles"].get(m, ()))
            mine = counted[m]
            first = min((o["at"] for o in mine), default=None)
            last = max((o["at"] for o in mine), default=None)
            want = {
                "orders_count": len(mine),
                "spend_minor": sum(o["paid"] - o["refunded"] for o in mine),
                "first_order_at": first,
                "last_order_at": last,
                "lifecycle_stage": lifecycle_stage(first, last, stream.base),
            }
            got = {k: profile.get(k) for k in want}
            if got != want:
                problems.append(f"{m}: {got} != expected {want}")
        return problems

    def chain_problems(self, events: list[dict[str, Any]], state: State, ctx: Context) -> list[str]:
        stages = [e for e in events if e["type"] == "member.lifecycle_changed"]
        final = {m: dict(p).get("lifecycle_stage") for m, p in state["profiles"].items()}
        problems = _state_chain_problems(
            _chains(stages, lambda e: e["data"]["member_id"]),
            "old_stage",
            "new_stage",
            None,
            final,
            "stage of",
        )
        inside = set(state["segment_members"])
        memberships = _chains(
            [e for e in events if e["type"] != "member.lifecycle_changed"],
            lambda e: (e["data"]["segment_code"], e["data"]["member_id"]),
        )
        for key, chain in sorted(memberships.items()):
            kinds = [e["type"].removeprefix("segment.") for e in chain]
            if any(a == b for a, b in itertools.pairwise(kinds)) or kinds[0] != "entered":
                problems.append(f"segment membership {key}: {kinds}")
            if (kinds[-1] == "entered") != (key in inside):
                problems.append(
                    f"segment membership {key}: ends {kinds[-1]}, in it: {key in inside}"
                )
        for key in inside - set(memberships):
            problems.append(f"segment membership {key} was never announced")
        return problems


CONSUMERS: dict[str, Callable[[], Consumer]] = {
    "member": MemberConsumer,
    "coupon": CouponConsumer,
    "notifier": NotifierConsumer,
    "segmenter": SegmenterConsumer,
}


def diff(a: Any, b: Any, path: str = "", limit: int = 12) -> list[str]:
    """Where two normalised states differ (at most `limit` places)."""
    out: list[str] = []
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=repr):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: {'missing' if k not in a else a[k]!r} vs "
                           f"{'missing' if k not in b else b[k]!r}")  # fmt: skip
            elif a[k] != b[k]:
                out += diff(a[k], b[k], f"{path}/{k}", limit - len(out))
            if len(out) >= limit:
                break
    elif isinstance(a, list) and isinstance(b, list):
        ca, cb = Counter(map(repr, a)), Counter(map(repr, b))
        only_a, only_b = ca - cb, cb - ca
        out.append(
            f"{path}: {sum(only_a.values())} only in the first {sorted(only_a)[:3]}, "
            f"{sum(only_b.values())} only in the second {sorted(only_b)[:3]}"
        )
    else:
        out.append(f"{path}: {a!r} vs {b!r}")
    return out[:limit]


async def analyze(conn: AsyncConnection) -> None:
    """The statistics autovacuum keeps on a live database: with them the planner joins
    otherwise than on fresh tables (it found a coupon bug that fresh tables hid)."""
    await conn.execute(text("ANALYZE"))
    await conn.commit()


def halves(items: list[Item]) -> list[list[Item]]:
    """A phase's deliveries in two, published one after the other, statistics in between."""
    middle = len(items) // 2
    return [part for part in (items[:middle], items[middle:]) if part]


async def observe(consumer: Consumer, conn: AsyncConnection, ctx: Context) -> dict[str, Any]:
    """A database's normalised state, outbox (fact counts, problems) and inbox of event ids."""
    state = await consumer.state(conn, ctx)
    events = await outbox(conn)
    processed = Counter(
        await conn.scalars(
            text("SELECT event_id FROM processed_events WHERE consumer_group = :g"),
            {"g": consumer.group},
        )
    )
    counts, problems = consumer.summarise_outbox(events, state, ctx)
    return {
        "state": state,
        "events": events,
        "outbox": counts,
        "outbox_all": Counter(e["type"] for e in events),
        "processed": processed,
        "problems": problems,
    }


def verify(
    consumer: Consumer,
    stream: Stream,
    delivered: Iterable[Item],
    observed: dict[str, Any],
    now: datetime,
) -> list[str]:
    """Every handled event delivered is recorded once in processed_events and nothing else is;
    the outbox holds no fact twice and consistent chains; the expectations hold."""
    handled = handled_types(consumer)
    want = {item.event_id for item in delivered if item.type in handled}
    processed = observed["processed"]
    problems = list(observed["problems"])
    if any(n > 1 for n in processed.values()):
        problems.append("an event id is in processed_events more than once")
    missing, extra = want - set(processed), set(processed) - want
    if missing or extra:
        problems.append(
            f"processed_events: {len(missing)} never processed {sorted(missing)[:5]}, "
            f"{len(extra)} unknown {sorted(extra)[:5]}"
        )
    return problems + consumer.expectations(stream, observed["state"], now)


def handled_types(consumer: Consumer) -> set[str]:
    """The event types the service's handlers apply (the others are skipped unrecorded)."""

    class _Runtime:  # the handler tables only keep the runtime for later
        clock = None

    table = consumer.definition().handlers(_Runtime())
    return set(table.by_type)
