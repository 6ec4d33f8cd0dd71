"""Exact money at every edge: the edges stream (`edges_stream.py`) to the points service, in
process on a real broker and a fresh database, with a clock the test sets, phase by phase, with
its jobs and HTTP writes, against the lot-level oracle (`oracle_edges.py`) after every phase and
job: every account as `GET /v1/accounts/{id}` answers it at the clock (available, pending,
lifetime earned and redeemed, expiring by local date, tier), every redemption's answer (201 with
its `available_after`, 422 `insufficient_points`, 409 `member_erased`, and nothing changed when
refused), every balance the sum of its ledger; at the end every earn entry of every ledger (its
points, dates and `calculation`), every reversal and release by the event that caused it, the
balances in the database, each event once in `processed_events`, nothing dead-lettered.

Once cleanly and once with duplicates, re-sent facts, members reordered among themselves and
earlier phases' events delivered again. The checks collect what differs and the test fails once,
at the end, with every kind of difference and a few examples of each (member ids carry their
roles, so a difference says which edge it is)."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import loyalty_points.bootstrap
import pytest
from loyalty_shared.clock import FixedClock
from loyalty_shared.kafka.broker import EmbeddedBroker, free_port
from loyalty_shared.testing import DatabaseFactory, RunningService, start_service, until
from sqlalchemy import text

from .edges_stream import (
    MEMBERS,
    SEED,
    Cancel,
    Check,
    Plan,
    Publish,
    Redeem,
    Refusals,
    RunJob,
    SetClock,
    Spend,
    TopUp,
    build,
    handled_ids,
    missing_edges,
    to_event,
    with_duplicates,
)
from .oracle_edges import AccountView, Book, EdgeFact, Redemption, Refused, floor_points, product
from .stream import (
    GROUP,
    Delivery,
    Publisher,
    consumed_everything,
    dead_letters,
    record_figures,
)

FACTOR_KINDS = {"tier", "member_day", "card", "campaign"}
SHOWN = 5  # examples per kind of difference


@pytest.fixture
def broker() -> Iterator[str]:
    """A broker of this test's own: its topics hold this stream and nothing else."""
    with EmbeddedBroker(free_port()) as running:
        yield running.bootstrap


class EdgePublisher(Publisher):
    def encode(self, fact: Any) -> tuple[str, bytes, bytes]:
        return to_event(fact)


class Findings:
    """What the service answered otherwise than the oracle: by check, every message."""

    def __init__(self) -> None:
        self.by_check: dict[str, list[str]] = defaultdict(list)

    def add(self, check: str, message: str) -> None:
        self.by_check[check].append(message)

    def counts(self) -> dict[str, int]:
        return {check: len(messages) for check, messages in self.by_check.items()}

    def report(self) -> str:
        lines = []
        for check, messages in self.by_check.items():
            lines.append(f"{check}: {len(messages)}")
            lines.extend(f"    {message}" for message in messages[:SHOWN])
        return "\n".join(lines)


def _expiring(items: list[dict[str, Any]]) -> tuple[tuple[date, int], ...]:
    return tuple((date.fromisoformat(item["on"]), item["points"]) for item in items)


def _fmt(expiring: tuple[tuple[date, int], ...]) -> str:
    return "[" + ", ".join(f"{on.isoformat()}: {points}" for on, points in expiring) + "]"


class Run:
    """One pass of a plan through the service, checked against an oracle of its own (fed
    the deliveries as they went out, so it also proves the oracle order-independent)."""

    def __init__(
        self, plan: Plan, points: RunningService, clock: FixedClock, bootstrap: str, variant: str
    ) -> None:
        self.plan = plan
        self.points = points
        self.client = points.client
        self.clock = clock
        self.bootstrap = bootstrap
        self.variant = variant
        self.publisher = EdgePublisher(bootstrap)
        self.book = Book()
        self.findings = Findings()
        self.redemptions: dict[str, Redemption] = {}
        self.redemption_ids: dict[str, str] = {}
        self.handled: set[str] = set()
        self.kinds: dict[str, str] = {}
        self.earlier: list[EdgeFact] = []
        self.figures: Counter[str] = Counter()

    def who(self, member_id: str) -> str:
        return f"{member_id} [{self.plan.profiles[member_id].roles()}]"

    async def run(self) -> None:
        await self.publisher.ensure_topics()
        for n, step in enumerate(self.plan.steps):
            if isinstance(step, Publish):
                await self.publish(n, step)
            elif isinstance(step, SetClock):
                self.clock.set(step.at)
            elif isinstance(step, RunJob):
                await self.job(step)
            elif isinstance(step, Redeem):
                await self.redeem(step)
            elif isinstance(step, Cancel):
                await self.cancel(step)
            elif isinstance(step, TopUp | Spend):
                await self.money(step)
            elif isinstance(step, Refusals):
                await self.refusals(step)
            elif isinstance(step, Check):
                await self.check(step)

    # -- steps --------------------------------------------------------------------------------

    async def publish(self, n: int, step: Publish) -> None:
        assert self.clock.now() == step.now
        if self.variant == "clean":
            delivery = Delivery(list(step.facts))
        else:
            seed = self.plan.seed * 100 + n
            delivery = with_duplicates(step.facts, self.plan.members, seed, self.earlier)
        await self.publisher.publish(delivery.facts)

        async def done() -> bool:
            return await consumed_everything(self.bootstrap, self.publisher.ends)

        await until(done, f"the points consumer to read phase {step.name}", 180)
        for fact in delivery.facts:
            self.book.apply(fact, step.now)
            self.kinds[fact.event_id] = fact.kind
        self.handled |= handled_ids(delivery.facts)
        self.earlier.extend(step.facts)
        self.figures["events published"] += len(delivery.facts)
        self.figures["duplicates"] += delivery.duplicates
        self.figures["resent"] += delivery.resent

    async def job(self, step: RunJob) -> None:
        response = await self.client.post(
            f"/v1/admin/jobs/{step.job}/run", json={"as_of": step.as_of.isoformat()}
        )
        if response.status_code != 200:
            self.findings.add("jobs run", f"{step.job} at {step.as_of}: {response.text[:200]}")
        if step.job == "release-pending":
            self.book.release(step.as_of)
        else:
            self.book.expire(step.as_of)
        self.figures[f"{step.job} runs"] += 1

    async def snapshot(self, member_id: str, stored_value: bool = False) -> Any:
        account = (await self.client.get(f"/v1/accounts/{member_id}")).json()
        ledger = await self.ledger(member_id)
        if not stored_value:
            return account, ledger
        value = (await self.client.get(f"/v1/stored-value/{member_id}")).json()
        return account, ledger, value

    async def ledger(self, member_id: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        cursor = None
        for _ in range(1000):
            params: dict[str, Any] = {"limit": 50}
            if cursor:
                params["cursor"] = cursor
            response = await self.client.get(f"/v1/accounts/{member_id}/ledger", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            entries.extend(page["items"])
            cursor = page["next_cursor"]
            if not cursor:
                break
        return entries

    async def redeem(self, step: Redeem) -> None:
        who = self.who(step.member_id)
        outcome = self.book.redeem(step.member_id, step.points, step.now)
        if isinstance(outcome, Refused):  # the oracle agrees with the plan it made
            assert (outcome.status, outcome.code) == (step.expect, step.code), step
        else:
            assert step.expect == 201, step
            self.redemptions[step.key] = outcome
        before = await self.snapshot(step.member_id) if step.expect != 201 else None
        response = await self.client.post(
            "/v1/redemptions",
            json={"member_id": step.member_id, "points": step.points, "reason": "edge test"},
            headers={"Idempotency-Key": step.key},
        )
        body = response.json()
        self.figures["redemptions"] += 1
        if step.expect == 201:
            if response.status_code != 201:
                self.findings.add(
                    "redemption accepted",
                    f"{who}: {step.points} at {step.now:%m-%d} -> {response.status_code} "
                    f"{body.get('code')} (oracle: 201, available after {step.available_after})",
                )
                return
            self.redemption_ids[step.key] = body["redemption_id"]
            if body.get("available_after") != step.available_after:
                self.findings.add(
                    "redemption: available_after",
                    f"{who}: {step.points} -> {body.get('available_after')} "
                    f"!= oracle {step.available_after}",
                )
            return
        want = self.book.account(step.member_id, step.now)
        if response.status_code != step.expect or body.get("code") != step.code:
            self.findings.add(
                f"redemption refused: {step.code}",
                f"{who}: {step.points} at {step.now:%m-%d} -> {response.status_code} "
                f"{body.get('code')}; oracle: {step.expect} {step.code} (available "
                f"{want.available}, {self.book.expired_unexpired(step.member_id, step.now)} "
                "more only in expired lots)",
            )
            return
        if await self.snapshot(step.member_id) != before:
            self.findings.add("a refused redemption changes nothing", f"{who}: it changed")

    async def cancel(self, step: Cancel) -> None:
        redemption = self.redemptions.pop(step.key)
        expired = sum(n for lot, n in redemption.portions if lot.expires_at <= step.now)
        self.book.cancel(redemption, step.now)
        redemption_id = self.redemption_ids.get(step.key)
        if redemption_id is None:
            return  # the service refused it (a finding already)
        response = await self.client.post(f"/v1/redemptions/{redemption_id}/cancel")
        self.figures["cancels"] += 1
        self.figures["cancelled points of expired lots"] += expired
        if response.status_code != 200:
            self.findings.add(
                "redemption cancelled",
                f"{self.who(step.member_id)}: -> {response.status_code} {response.text[:200]}",
            )

    async def money(self, step: TopUp | Spend) -> None:
        if isinstance(step, TopUp):
            path = f"/v1/stored-value/{step.member_id}/top-ups"
            body: dict[str, Any] = {
                "external_id": step.external_id,
                "amount_minor": step.amount_minor,
            }
        else:
            path = f"/v1/stored-value/{step.member_id}/spends"
            body = {"amount_minor": step.amount_minor, "reason": "edge test"}
        response = await self.client.post(path, json=body)
        if response.status_code != 201:
            self.findings.add(
                "stored value before the erasure",
                f"{self.who(step.member_id)}: {path} -> {response.status_code} "
                f"{response.text[:200]}",
            )

    async def refusals(self, step: Refusals) -> None:
        mid = step.member_id
        before = await self.snapshot(mid, stored_value=True)
        attempts = [
            (
                "redemption",
                "/v1/redemptions",
                {"member_id": mid, "points": step.points, "reason": "after erasure"},
            ),
            ("adjustment", f"/v1/accounts/{mid}/adjustments", {"points": 10, "reason": "goodwill"}),
            (
                "top-up",
                f"/v1/stored-value/{mid}/top-ups",
                {"external_id": f"TU-{mid}-2", "amount_minor": 1000},
            ),
            ("spend", f"/v1/stored-value/{mid}/spends", {"amount_minor": 100, "reason": "x"}),
        ]
        for what, path, body in attempts:
            response = await self.client.post(path, json=body)
            code = response.json().get("code") if response.content else None
            if (response.status_code, code) != (409, "member_erased"):
                self.findings.add(
                    f"erased: {what} refused with 409 member_erased",
                    f"{self.who(mid)}: {path} {body} -> {response.status_code} {code}",
                )
        after = await self.snapshot(mid, stored_value=True)
        if after != before:
            changed = [
                name
                for name, old, new in zip(
                    ("account", "ledger", "stored value"), before, after, strict=True
                )
                if old != new
            ]
            account, value = after[0], after[2]
            self.findings.add(
                "erased: account, ledger and stored value unchanged",
                f"{self.who(mid)}: {', '.join(changed)} changed (available "
                f"{before[0]['available']} -> {account['available']}, stored value "
                f"{before[2].get('balance_minor')} -> {value.get('balance_minor')})",
            )

    # -- checks -------------------------------------------------------------------------------

    async def check(self, step: Check) -> None:
        snapshot = self.plan.snapshots[step.label]
        for member_id in self.plan.members:
            want = self.book.account(member_id, step.now)
            # the oracle fed this delivery holds what the plan's oracle held: not a finding
            # about the service, a broken claim of the stream (order-independence)
            assert want == snapshot[member_id], (step.label, member_id, want, snapshot[member_id])
            response = await self.client.get(f"/v1/accounts/{member_id}")
            if response.status_code != 200:
                self.findings.add(
                    f"{step.label}: the account answers",
                    f"{self.who(member_id)}: {response.status_code} {response.text[:200]}",
                )
                continue
            self.compare(step, member_id, response.json(), want)
        async with self.points.runtime.engine.connect() as conn:
            await self.balances_are_ledger_sums(step, conn)
            if step.final:
                await self.final_database(step, conn)
        if step.final:
            for member_id in self.plan.members:
                entries = await self.ledger(member_id)
                self.compare_ledger(member_id, entries)
                self.figures["ledger entries"] += len(entries)
            dead = await dead_letters(self.bootstrap)
            if dead:
                self.findings.add("nothing dead-lettered", f"{dead} dead letters")
        self.figures["checks"] += 1

    def compare(self, step: Check, member_id: str, got: dict[str, Any], want: AccountView) -> None:
        who = self.who(member_id)
        label = step.label
        for name in ("available", "pending", "lifetime_earned", "lifetime_redeemed", "tier"):
            if got.get(name) == getattr(want, name):
                continue
            hint = ""
            if name == "available":
                alt = self.book.account(member_id, step.now, counting_expired=True).available
                if got[name] == alt:
                    hint = " (= counting lots past their expires_at)"
            self.findings.add(
                f"{label}: account.{name}",
                f"{who}: {got.get(name)} != oracle {getattr(want, name)}{hint}",
            )
        got_expiring = _expiring(got.get("expiring", []))
        if self.book.members[member_id].split_debt:
            same = sum(p for _, p in got_expiring) == sum(p for _, p in want.expiring)
        else:
            same = got_expiring == want.expiring
        if not same:
            hint = ""
            for utc_dates, counting, name in (
                (True, False, "UTC dates"),
                (False, True, "counting lots past their expires_at"),
                (True, True, "UTC dates, counting lots past their expires_at"),
            ):
                alt = self.book.account(
                    member_id, step.now, utc_dates=utc_dates, counting_expired=counting
                )
                if got_expiring == alt.expiring:
                    hint = f" (= {name})"
                    break
            self.findings.add(
                f"{label}: account.expiring",
                f"{who}: {_fmt(got_expiring)} != oracle {_fmt(want.expiring)}{hint}",
            )

    async def balances_are_ledger_sums(self, step: Check, conn: Any) -> None:
        accounts = {
            row.member_id: (row.available, row.pending, row.lifetime_earned)
            for row in await conn.execute(
                text("SELECT member_id, available, pending, lifetime_earned FROM accounts")
            )
        }
        sums = await conn.execute(
            text(
                "SELECT member_id,"
                " coalesce(sum(points) FILTER (WHERE bucket = 'available'), 0) AS available,"
                " coalesce(sum(points) FILTER (WHERE bucket = 'pending'), 0)"
                "   - coalesce(sum(points) FILTER (WHERE kind = 'release'), 0) AS pending,"
                # a cancelled redemption is a `reverse` of rule `redemption`, not earnings; a
                # grant by hand counts as earned (the stream makes none, unless the service
                # takes one after an erasure)
                " coalesce(sum(points) FILTER (WHERE kind = 'earn' OR (kind = 'reverse'"
                "   AND coalesce(rule, '') <> 'redemption') OR (kind = 'adjust' AND points > 0)),"
                "   0) AS lifetime"
                " FROM ledger_entries GROUP BY member_id"
            )
        )
        for row in sums:
            balance = accounts.get(row.member_id)
            if balance != (row.available, row.pending, row.lifetime):
                self.findings.add(
                    f"{step.label}: db balances = ledger sums",
                    f"{self.who(row.member_id)}: (available, pending, lifetime) {balance} "
                    f"!= ledger sums {(row.available, row.pending, row.lifetime)}",
                )

    async def final_database(self, step: Check, conn: Any) -> None:
        """After every job has run up to the clock, the stored balances are the oracle's."""
        rows = await conn.execute(
            text("SELECT member_id, available, pending, lifetime_earned FROM accounts")
        )
        stored = {row.member_id: (row.available, row.pending, row.lifetime_earned) for row in rows}
        for member_id in self.plan.members:
            want = self.book.account(member_id, step.now)
            expect = (want.available, want.pending, want.lifetime_earned)
            if stored.get(member_id) != expect:
                self.findings.add(
                    "final: db accounts (available, pending, lifetime) = oracle",
                    f"{self.who(member_id)}: {stored.get(member_id)} != oracle {expect}",
                )
        processed = Counter(
            row.event_id
            for row in await conn.execute(
                text("SELECT event_id FROM processed_events WHERE consumer_group = :g"),
                {"g": GROUP},
            )
        )
        twice = [event_id for event_id, n in processed.items() if n > 1]
        if twice:
            self.findings.add("each event once in processed_events", f"twice: {twice[:5]}")
        missing = self.handled - set(processed)
        extra = set(processed) - self.handled
        if missing or extra:
            kinds = Counter(self.kinds.get(event_id, "?") for event_id in missing)
            self.findings.add(
                "each event once in processed_events",
                f"{len(missing)} never recorded (by kind {dict(kinds)}: "
                f"{sorted(missing)[:3]}), {len(extra)} unknown {sorted(extra)[:3]}",
            )
        self.figures["processed events"] = len(processed)

    def compare_ledger(self, member_id: str, entries: list[dict[str, Any]]) -> None:
        who = self.who(member_id)
        member = self.book.members[member_id]
        lots = {lot.key: lot for lot in member.lots}
        ids = Counter(entry["entry_id"] for entry in entries)
        if any(n > 1 for n in ids.values()):
            self.findings.add("ledger: pages hold each entry once", f"{who}: an entry twice")
        earns: dict[str, list[dict[str, Any]]] = defaultdict(list)
        reversed_: Counter[str] = Counter()
        released: Counter[str] = Counter()
        releases: Counter[str] = Counter()
        for entry in entries:
            source = (entry.get("source") or {}).get("event_id")
            if entry["kind"] == "earn":
                earns[source].append(entry)
            elif entry["kind"] == "reverse" and source:
                reversed_[source] -= entry["points"]
            elif entry["kind"] == "release" and source:
                released[source] += entry["points"]
                releases[source] += 1
        for event_id in sorted(set(earns) | set(member.earned)):
            got, want = earns.get(event_id, []), member.earned.get(event_id)
            if want is None or not got:
                self.findings.add(
                    "ledger: one earn entry per earning event",
                    f"{who}: event {event_id} ({self.kinds.get(event_id)}): "
                    f"{len(got)} entries, oracle {'one' if want else 'none'}",
                )
                continue
            if len(got) > 1:
                self.findings.add(
                    "ledger: one earn entry per earning event",
                    f"{who}: event {event_id} earned {len(got)} times",
                )
            entry = got[0]
            kind = self.kinds.get(event_id)
            if entry["points"] != want.points:
                self.findings.add(
                    "ledger: earn points = oracle",
                    f"{who}: {kind} {event_id}: {entry['points']} != oracle {want.points} "
                    f"(oracle: base {want.base_points} x "
                    f"{[(k, str(v)) for k, v in want.factors]} - capped {want.capped_points}; "
                    f"service: {entry.get('calculation')})",
                )
            lot = lots.get(event_id)
            if lot is not None:
                for name, value in (
                    ("expires_at", lot.expires_at),
                    ("available_at", lot.available_at),
                ):
                    raw = entry.get(name)
                    if raw is None or datetime.fromisoformat(raw) != value:
                        self.findings.add(
                            f"ledger: earn entry's {name} = oracle",
                            f"{who}: {kind} {event_id}: {raw} != oracle {value.isoformat()}",
                        )
            self.compare_calculation(who, kind, event_id, entry, want)
        for event_id in sorted(set(reversed_) | set(member.reversed)):
            if reversed_[event_id] != member.reversed[event_id]:
                self.findings.add(
                    "ledger: points taken back per event = oracle",
                    f"{who}: {self.kinds.get(event_id)} {event_id}: {reversed_[event_id]} "
                    f"!= oracle {member.reversed[event_id]}",
                )
        for event_id in sorted(set(released) | set(member.releases)):
            allowed = member.releases.get(event_id, frozenset({0}))
            if released[event_id] not in allowed or releases[event_id] > 1:
                self.findings.add(
                    "ledger: releases per lot = oracle",
                    f"{who}: lot of {self.kinds.get(event_id)} {event_id}: "
                    f"{releases[event_id]} entries of {released[event_id]} points, "
                    f"oracle one of {sorted(allowed)}",
                )

    def compare_calculation(
        self, who: str, kind: str | None, event_id: str, entry: dict[str, Any], want: Any
    ) -> None:
        calc = entry.get("calculation")
        if calc is None:
            self.findings.add(
                "ledger: every earn entry carries its calculation",
                f"{who}: {entry.get('rule')} entry of {kind} {event_id} ({entry['points']} "
                "points) has none",
            )
            return
        try:
            base = int(calc["base_points"])
            capped = int(calc["capped_points"])
            factors = [(f["kind"], Decimal(str(f["value"]))) for f in calc["factors"]]
        except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
            self.findings.add("ledger: calculation's shape", f"{who}: {calc!r}: {exc!r}")
            return
        odd = [k for k, _ in factors if k not in FACTOR_KINDS]
        if odd:
            self.findings.add("ledger: calculation's shape", f"{who}: factor kinds {odd}")
        if floor_points(base, product(v for _, v in factors)) - capped != entry["points"]:
            self.findings.add(
                "ledger: calculation adds up to the entry's points",
                f"{who}: {kind} {event_id}: floor({base} x {[str(v) for _, v in factors]}) - "
                f"{capped} != {entry['points']}",
            )
        got_factors = {
            k: product(v for kk, v in factors if kk == k) for k in {k for k, _ in factors}
        }
        got_factors = {k: v for k, v in got_factors.items() if v != 1}
        if (base, got_factors, capped) != (
            want.base_points,
            dict(want.factors),
            want.capped_points,
        ):
            self.findings.add(
                "ledger: calculation = oracle",
                f"{who}: {kind} {event_id}: base {base} factors "
                f"{ {k: str(v) for k, v in got_factors.items()} } capped {capped} != oracle base "
                f"{want.base_points} factors { {k: str(v) for k, v in want.factors} } "
                f"capped {want.capped_points}",
            )


@pytest.mark.parametrize("variant", ["clean", "duplicates"])
async def test_every_edge_against_the_oracle(
    databases: DatabaseFactory, broker: str, variant: str
) -> None:
    plan = build(SEED, MEMBERS)
    missing = missing_edges(plan)
    assert not missing, f"the stream of seed {SEED} misses edges: {missing}"
    first = plan.steps[0]
    assert isinstance(first, SetClock)
    clock = FixedClock(first.at)
    points = await start_service(
        loyalty_points.bootstrap.definition(),
        database_url=await databases.fresh("chaos_edges_points"),
        bootstrap=broker,
        clock=clock,
        **({"consumer_batch_size": 100} if variant == "duplicates" else {}),
    )
    started = time.monotonic()
    run = Run(plan, points, clock, broker, variant)
    try:
        await run.run()
    finally:
        await points.stop()
    figures = {
        "members": len(plan.members),
        "facts": plan.facts,
        **dict(run.figures),
        "seconds": round(time.monotonic() - started, 1),
        "differences": run.findings.counts(),
        "edges_exercised": dict(plan.coverage),
    }
    record_figures(f"edges: {variant}", figures)
    if run.findings.by_check:
        raise AssertionError(
            f"{sum(run.findings.counts().values())} differences from the oracle "
            f"(seed {SEED}, {len(plan.members)} members, {variant}):\n{run.findings.report()}"
        )
