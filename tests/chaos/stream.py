"""The chaos suite's order stream: a seeded random stream of sign-ups and orders, the ways of
delivering it (clean, twice with duplicates and cross-member reorderings), publishing it onto the
real broker as CloudEvents keyed by member, waiting until the points consumer has read all of it,
and checking the points database against the oracle.

Sizes come from the environment so that `make test` runs small streams and `make chaos` large
ones: LOYALTY_CHAOS_MEMBERS, LOYALTY_CHAOS_CRASH_MEMBERS, LOYALTY_CHAOS_KILLS, LOYALTY_CHAOS_SEED.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from loyalty_shared.events import MEMBERS, ORDERS, POINTS, make_event
from loyalty_shared.events.members import MemberRegistered
from loyalty_shared.events.orders import OrderCancelled, OrderPaid, OrderPlaced, OrderRefunded
from loyalty_shared.kafka import dlq_topic, ensure_topics, make_producer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from .oracle import Expected, Fact

GROUP = "loyalty-points"
CONSUMED = (MEMBERS, ORDERS)
HANDLED_KINDS = {"signup", "paid", "refund", "cancel"}  # order.placed is not the points' business
PARTITIONS = 6

# Every order falls in one week around a member day (the 20th in Asia/Shanghai runs from
# 2031-03-19T16:00Z to 2031-03-20T16:00Z), far enough ahead that no purchase lot becomes
# available by itself while the tests run: only release-pending with an explicit as_of releases.
WINDOW_START = datetime(2031, 3, 16, tzinfo=UTC)
WINDOW = timedelta(days=7)
SHANGHAI_MIDNIGHTS = [datetime(2031, 3, d, 16, tzinfo=UTC) for d in range(15, 23)]


def record_figures(test: str, figures: dict[str, Any]) -> None:
    """Print a test's figures; append them as a JSON line to LOYALTY_CHAOS_FIGURES if set."""
    print(f"\n{test}: {figures}")
    path = os.environ.get("LOYALTY_CHAOS_FIGURES")
    if path:
        line = {"test": test, "at": datetime.now(UTC).isoformat(timespec="seconds"), **figures}
        with open(path, "a") as out:
            out.write(json.dumps(line) + "\n")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Stream:
    facts: list[Fact]  # the clean single pass, in time order (each member's in its own order)
    members: list[str]

    def handled_ids(self) -> set[str]:
        return handled_ids(self.facts)


def handled_ids(facts: Iterable[Fact]) -> set[str]:
    """The ids of the events the points consumer records (every type it handles)."""
    return {f.event_id for f in facts if f.kind in HANDLED_KINDS}


class _Ids:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.n = 0

    def __call__(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.seed}-{self.n:07d}"


def _order_time(rng: random.Random, busy_day: datetime | None) -> datetime:
    roll = rng.random()
    if roll < 0.12:  # close to a Shanghai midnight: the member day's edges
        edge = rng.choice(SHANGHAI_MIDNIGHTS[3:7])
        return edge + timedelta(seconds=rng.randint(-180, 180))
    if busy_day is not None and roll < 0.7:  # a big spender buying a lot on one day
        return busy_day + timedelta(seconds=rng.randint(0, 86399))
    return WINDOW_START + timedelta(seconds=rng.randint(0, int(WINDOW.total_seconds()) - 1))


def _paid_amount(rng: random.Random, whale: bool) -> int:
    if whale:
        return rng.randint(150_000, 1_400_000)
    roll = rng.random()
    if roll < 0.08:
        return rng.randint(0, 99)  # earns nothing
    if roll < 0.2:
        return rng.randint(1, 600) * 100  # exact hundreds
    return rng.randint(100, 60_000)


def generate(seed: int, members: int, *, guests: int | None = None) -> Stream:
    """A clean stream: each member signs up, then places 1 to 12 orders; some orders are refunded
    in part or in full (in one or several refunds), some cancelled after payment (perhaps after
    partial refunds), some placed and cancelled unpaid; a few guest orders with no member."""
    rng = random.Random(seed)
    ids = _Ids(seed)
    per_member: list[list[Fact]] = []
    member_ids: list[str] = []
    for i in range(members):
        member_id = f"m{seed}x{i:06d}"
        member_ids.append(member_id)
        whale = rng.random() < 0.07
        busy_day = SHANGHAI_MIDNIGHTS[rng.randint(1, 6)] if whale else None
        registered = WINDOW_START - timedelta(seconds=rng.randint(60, 3 * 86400))
        facts = [Fact(ids("e"), "signup", member_id, registered)]
        for _ in range(rng.randint(1, 12)):
            facts.extend(_order_facts(rng, ids, member_id, whale, busy_day))
        facts.sort(key=lambda f: f.at)  # stable: a refund never precedes its own payment
        per_member.append(facts)
    for _ in range(members // 20 if guests is None else guests):
        per_member.append(_order_facts(rng, ids, None, False, None))
    stream = [fact for facts in per_member for fact in facts]
    stream.sort(key=lambda f: f.at)
    return Stream(stream, member_ids)


def _order_facts(
    rng: random.Random,
    ids: _Ids,
    member_id: str | None,
    whale: bool,
    busy_day: datetime | None,
) -> list[Fact]:
    order_id = ids("o")
    at = _order_time(rng, busy_day)
    paid = _paid_amount(rng, whale)
    total = paid + rng.choice([0, 0, 0, rng.randint(1, 3000)])
    common = {"member_id": member_id, "order_id": order_id, "total_minor": total}
    facts: list[Fact] = []
    if rng.random() < 0.3:
        facts.append(
            Fact(ids("e"), "placed", at=at - timedelta(minutes=rng.randint(1, 30)), **common)
        )
    if rng.random() < 0.07:  # placed, never paid, cancelled
        if not facts:
            facts.append(Fact(ids("e"), "placed", at=at, paid_minor=paid, **common))
        facts.append(
            Fact(
                ids("e"),
                "cancel",
                at=at + timedelta(hours=rng.randint(1, 48)),
                previous_status="placed",
                **common,
            )
        )
        return facts
    facts.append(Fact(ids("e"), "paid", at=at, paid_minor=paid, **common))
    later = at
    refunded = 0
    roll = rng.random()
    refunds = 0
    if roll < 0.22:
        refunds = rng.randint(1, 3)
    elif roll < 0.3:
        refunds = -1  # one refund of everything
    for n in range(abs(refunds)):
        if refunded >= paid:
            break
        last = n == abs(refunds) - 1
        amount = paid - refunded if refunds < 0 else rng.randint(1, paid - refunded)
        if last and refunds > 0 and rng.random() < 0.3:
            amount = paid - refunded  # the last of several takes the rest
        refunded += amount
        later = later + timedelta(minutes=rng.randint(5, 3 * 24 * 60))
        facts.append(
            Fact(
                ids("e"),
                "refund",
                at=later,
                paid_minor=paid,
                refunded_total_minor=refunded,
                amount_minor=amount,
                refund_id=ids("r"),
                **common,
            )
        )
    if rng.random() < 0.1 and refunded < paid:
        later = later + timedelta(minutes=rng.randint(5, 2 * 24 * 60))
        facts.append(
            Fact(
                ids("e"),
                "cancel",
                at=later,
                paid_minor=paid,
                refunded_total_minor=refunded,
                previous_status=rng.choice(["paid", "paid", "shipped", "delivered"]),
                **common,
            )
        )
    return facts


# ---------------------------------------------------------------------------------------------
# Deliveries
# ---------------------------------------------------------------------------------------------


def _queues(facts: Sequence[Fact]) -> list[list[Fact]]:
    """Each key's facts in their order (a member's, or a guest order's)."""
    by_key: dict[str, list[Fact]] = defaultdict(list)
    for fact in facts:
        by_key[fact.member_id or fact.order_id or fact.event_id].append(fact)
    return list(by_key.values())


def interleave(rng: random.Random, queues: list[list[Fact]]) -> list[Fact]:
    """A random merge: members are reordered among themselves, each member's own facts keep
    their order (they share a partition in Kafka)."""
    heads = [0] * len(queues)
    live = [i for i, q in enumerate(queues) if q]
    out: list[Fact] = []
    while live:
        # weighted by what is left, so long queues do not all end up last
        k = rng.choices(range(len(live)), weights=[len(queues[i]) - heads[i] for i in live])[0]
        i = live[k]
        out.append(queues[i][heads[i]])
        heads[i] += 1
        if heads[i] == len(queues[i]):
            live.pop(k)
    return out


@dataclasses.dataclass
class Delivery:
    facts: list[Fact]
    duplicates: int = 0  # the same event id again
    resent: int = 0  # the same business fact again under a new event id


def twice_with_duplicates(stream: Stream, seed: int) -> Delivery:
    """The whole stream twice, with random duplicates and re-sent facts, members interleaved at
    random in each pass; each member's own events stay in order."""
    rng = random.Random(seed * 7919 + 1)
    ids = _Ids(seed)
    ids.seed = seed * 1000 + 999
    first: list[list[Fact]] = []
    duplicates = resent = 0
    for queue in _queues(stream.facts):
        queue = list(queue)
        for fact in list(queue):
            roll = rng.random()
            if roll < 0.12:  # redelivered: the same event, later in the member's sequence
                at = rng.randint(queue.index(fact) + 1, len(queue))
                queue.insert(at, fact)
                duplicates += 1
            elif roll < 0.15 and fact.kind in ("paid", "refund", "cancel"):
                # posted again by the source: a new event id for the same order fact
                at = rng.randint(queue.index(fact) + 1, len(queue))
                queue.insert(at, dataclasses.replace(fact, event_id=ids("x")))
                resent += 1
        first.append(queue)
    second = interleave(rng, _queues(stream.facts))
    return Delivery(interleave(rng, first) + second, duplicates + len(second), resent)


# ---------------------------------------------------------------------------------------------
# Events and the broker
# ---------------------------------------------------------------------------------------------


def to_event(fact: Fact) -> tuple[str, bytes, bytes]:
    """(topic, key, value) of the CloudEvent that carries a fact."""
    member_id = fact.member_id
    order = {
        "order_id": fact.order_id,
        "channel": "pos",
        "external_id": f"POS-{fact.order_id}",
        "store_id": "store-chaos-1",
        "member_id": member_id,
        "occurred_at": fact.at,
    }
    data: Any
    if fact.kind == "signup":
        assert member_id is not None
        type_ = "member.registered"
        data = MemberRegistered(
            member_id=member_id,
            card_no=f"88{zlib.crc32(member_id.encode()):011d}",
            tier="bronze",
            referral_code=member_id[-6:].upper(),
            channel="pos",
            timezone="Asia/Shanghai",
            registered_at=fact.at,
        )
    elif fact.kind == "placed":
        type_ = "order.placed"
        data = OrderPlaced(**order, total_minor=fact.total_minor, paid_minor=fact.paid_minor)
    elif fact.kind == "paid":
        type_ = "order.paid"
        data = OrderPaid(
            **order,
            total_minor=fact.total_minor,
            paid_minor=fact.paid_minor,
            member_tier="bronze" if member_id else None,
            member_tier_multiplier=1.0 if member_id else None,
        )
    elif fact.kind == "refund":
        type_ = "order.refunded"
        data = OrderRefunded(
            **{**order, "external_id": f"RF-{fact.refund_id}"},
            refund_id=fact.refund_id,
            order_external_id=f"POS-{fact.order_id}",
            amount_minor=fact.amount_minor,
            refunded_total_minor=fact.refunded_total_minor,
            paid_minor=fact.paid_minor,
            total_minor=fact.total_minor,
        )
    elif fact.kind == "cancel":
        type_ = "order.cancelled"
        data = OrderCancelled(
            **order,
            previous_status=fact.previous_status,
            total_minor=fact.total_minor,
            paid_minor=fact.paid_minor,
            refunded_total_minor=fact.refunded_total_minor,
        )
    else:
        raise ValueError(fact.kind)
    key = member_id or fact.order_id
    event = make_event(
        type_,
        data,
        subject=member_id,
        source="loyalty/member",
        time=fact.at,
        key=key,
        event_id=fact.event_id,
    )
    return event.topic, event.key.encode(), event.encode()


class Publisher:
    """Publishes facts as CloudEvents keyed by member; each event is encoded once. Keeps the end
    offset of every partition it wrote to, from the broker's acknowledgements."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.encoded: dict[str, tuple[str, bytes, bytes]] = {}
        self.sent = 0
        self.ends: dict[TopicPartition, int] = {}

    async def ensure_topics(self) -> None:
        topics = [MEMBERS, ORDERS, POINTS] + [dlq_topic(t, GROUP) for t in CONSUMED]
        await ensure_topics(self.bootstrap, topics, PARTITIONS)

    def encode(self, fact: Any) -> tuple[str, bytes, bytes]:
        return to_event(fact)

    async def publish(self, facts: Iterable[Any]) -> int:
        """Publish facts (anything with an `event_id` that `encode` turns into a message)."""
        producer = make_producer(self.bootstrap)
        await producer.start()
        try:
            futures = []
            for fact in facts:
                message = self.encoded.get(fact.event_id)
                if message is None:
                    message = self.encoded[fact.event_id] = self.encode(fact)
                topic, key, value = message
                futures.append(await producer.send(topic, value, key=key))
            for meta in await asyncio.gather(*futures):
                tp = TopicPartition(meta.topic, meta.partition)
                self.ends[tp] = max(self.ends.get(tp, 0), meta.offset + 1)
        finally:
            await producer.stop()
        self.sent += len(futures)
        return len(futures)


async def read_all(
    bootstrap: str, topics: Iterable[str], start: dict[TopicPartition, int] | None = None
) -> list[Any]:
    """Every record of the topics, from `start` where given (else the beginning), read until
    the topics stay quiet. (Not up to `end_offsets`: the embedded broker answers ListOffsets
    with the base offset of a partition's last batch + 1, short of the true end when that batch
    holds several records. Fetching is right.)"""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    records: list[Any] = []
    try:
        await consumer._client.force_metadata_update()
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or set())
        ]
        if not partitions:
            return []
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, (start or {}).get(tp, 0))
        quiet = 0
        async with asyncio.timeout(120):
            while quiet < 3:
                batch = await consumer.getmany(timeout_ms=300, max_records=5000)
                got = [record for part in batch.values() for record in part]
                records.extend(got)
                quiet = 0 if got else quiet + 1
    finally:
        await consumer.stop()
    return records


async def committed_offsets(
    bootstrap: str, group: str = GROUP, topics: Iterable[str] = CONSUMED
) -> dict[TopicPartition, int]:
    """A group's committed offsets on the topics it reads. (A consumer of the group that
    subscribes to nothing never joins it: it only asks the coordinator.)"""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or set())
        ]
        offsets = {tp: await consumer.committed(tp) for tp in partitions}
        return {tp: offset for tp, offset in offsets.items() if offset is not None}
    finally:
        await consumer.stop()


async def consumed_everything(bootstrap: str, ends: dict[TopicPartition, int]) -> bool:
    """The points group has committed offsets at the end of every partition published to."""
    committed = await committed_offsets(bootstrap)
    return all(committed.get(tp, 0) >= end for tp, end in ends.items())


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Report:
    accounts: int = 0
    entries: int = 0
    processed: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)

    def add(self, problem: str) -> None:
        self.problems.append(problem)

    def assert_ok(self) -> None:
        if self.problems:
            shown = "\n  ".join(self.problems[:25])
            more = f"\n  ... and {len(self.problems) - 25} more" if len(self.problems) > 25 else ""
            raise AssertionError(f"{len(self.problems)} problems:\n  {shown}{more}")


async def check_points(
    conn: AsyncConnection, expected: dict[str, Expected], handled_ids: set[str]
) -> Report:
    """Every account equals the oracle; every balance equals the sum of its ledger entries;
    every event was recorded once and applied once (entries per source event)."""
    report = Report()
    accounts = {
        row.member_id: (row.available, row.pending, row.lifetime_earned)
        for row in await conn.execute(
            text("SELECT member_id, available, pending, lifetime_earned FROM accounts")
        )
    }
    report.accounts = len(accounts)
    for member_id, want in sorted(expected.items()):
        got = accounts.get(member_id)
        if got != want.balances():
            report.add(
                f"{member_id}: (available, pending, lifetime) {got} != oracle {want.balances()}"
            )
    for member_id in sorted(set(accounts) - set(expected)):
        report.add(f"{member_id}: an account the oracle does not know: {accounts[member_id]}")

    sums = await conn.execute(
        text(
            "SELECT member_id,"
            " coalesce(sum(points) FILTER (WHERE bucket = 'available'), 0) AS available,"
            " coalesce(sum(points) FILTER (WHERE bucket = 'pending'), 0)"
            "   - coalesce(sum(points) FILTER (WHERE kind = 'release'), 0) AS pending,"
            " coalesce(sum(points) FILTER (WHERE kind IN ('earn', 'reverse')), 0) AS lifetime"
            " FROM ledger_entries GROUP BY member_id"
        )
    )
    for row in sums:
        balance = accounts.get(row.member_id)
        if balance != (row.available, row.pending, row.lifetime):
            report.add(
                f"{row.member_id}: balances {balance} != ledger sums "
                f"{(row.available, row.pending, row.lifetime)}"
            )

    entries: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)
    for row in await conn.execute(
        text("SELECT member_id, kind, source_event_id FROM ledger_entries")
    ):
        entries[row.member_id][(row.kind, row.source_event_id)] += 1
        report.entries += 1
    for member_id in sorted(set(entries) | set(expected)):
        counted = entries.get(member_id, Counter())
        twice = sorted(key for key, n in counted.items() if n > 1)
        if twice:
            report.add(f"{member_id}: applied more than once: {twice[:5]}")
        want = expected[member_id].entries if member_id in expected else set()
        if set(counted) != want:
            report.add(
                f"{member_id}: entries missing {sorted(want - set(counted))[:5]}, "
                f"unexpected {sorted(set(counted) - want)[:5]}"
            )
    twice_earned = (
        await conn.execute(
            text(
                "SELECT order_id, count(*) FROM ledger_entries WHERE kind = 'earn' "
                "AND order_id IS NOT NULL GROUP BY order_id HAVING count(*) > 1"
            )
        )
    ).all()
    for row in twice_earned:
        report.add(f"order {row.order_id} earned {row[1]} times")

    processed = Counter(
        row.event_id
        for row in await conn.execute(
            text("SELECT event_id FROM processed_events WHERE consumer_group = :g"), {"g": GROUP}
        )
    )
    report.processed = len(processed)
    if any(n > 1 for n in processed.values()):
        report.add("an event id is in processed_events more than once")
    if set(processed) != handled_ids:
        missing = handled_ids - set(processed)
        extra = set(processed) - handled_ids
        report.add(
            f"processed_events: {len(missing)} events never processed {sorted(missing)[:5]}, "
            f"{len(extra)} unknown {sorted(extra)[:5]}"
        )
    return report


async def dead_letters(bootstrap: str) -> int:
    return len(await read_all(bootstrap, [dlq_topic(t, GROUP) for t in CONSUMED]))
