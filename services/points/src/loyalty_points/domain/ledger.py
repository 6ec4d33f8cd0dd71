"""The lot-based ledger of one member, in memory: earn, release, redeem, reverse, expire, adjust.

Earned points form lots; what leaves the balance (redemptions, reversals, expiry) is taken from
the lots that expire first and recorded per lot (portions), so a cancelled redemption gives
points back to the lots they came from. Every change is an entry that names its rule and its
cause, and the balances always equal what the entries add up to:

- `pending` = sum of pending-bucket entries = what remains in pending lots;
- `available` = sum of available-bucket entries; when it is not negative it equals what remains
  in available lots; when reversals took back points already spent it is negative (a debt),
  no available lot holds anything, and later earnings repay it first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Literal

EntryKind = Literal["earn", "release", "redeem", "reverse", "expire", "adjust"]
Bucket = Literal["available", "pending"]
LotState = Literal["pending", "available"]
OperationName = Literal[
    "credited",
    "released",
    "debited",
    "reversed_earning",
    "reversed_redemption",
    "expired",
    "adjusted",
]


class InsufficientPoints(Exception):
    def __init__(self, available: int, wanted: int) -> None:
        super().__init__(f"{wanted} points wanted, {available} available")
        self.available = available
        self.wanted = wanted


@dataclass(frozen=True)
class Factor:
    """One multiplier an earning went through: the tier, member day, a card, a campaign."""

    kind: Literal["tier", "member_day", "card", "campaign"]
    value: Decimal
    label: str | None = None


@dataclass(frozen=True)
class Calculation:
    """How an earn entry's points came about (contract §5): its points are
    floor(base_points x the product of the factors) - capped_points."""

    base_points: int
    factors: tuple[Factor, ...] = ()
    capped_points: int = 0

    def points(self) -> int:
        product = Decimal(self.base_points)
        for factor in self.factors:
            product *= factor.value
        return int(product.to_integral_value(rounding=ROUND_FLOOR)) - self.capped_points

    def as_json(self) -> dict[str, Any]:
        return {
            "base_points": self.base_points,
            "factors": [
                {"kind": f.kind, "value": float(f.value)}
                | ({"label": f.label} if f.label is not None else {})
                for f in self.factors
            ],
            "capped_points": self.capped_points,
        }


@dataclass
class Lot:
    lot_id: str
    member_id: str
    points: int
    remaining: int
    state: LotState
    earned_at: datetime
    available_at: datetime
    expires_at: datetime
    rule: str
    source_event_id: str | None = None
    order_id: str | None = None
    notified_at: datetime | None = None


@dataclass(frozen=True)
class Source:
    """What caused a change: an event, or a request."""

    event_id: str | None = None
    type: str | None = None
    order_id: str | None = None
    redemption_id: str | None = None


@dataclass
class Entry:
    entry_id: str
    member_id: str
    kind: EntryKind
    bucket: Bucket
    points: int  # signed: what this entry does to its bucket (release: pending → available)
    reason: str
    rule: str | None
    source: Source
    created_at: datetime
    occurred_at: datetime
    lot_id: str | None = None
    available_at: datetime | None = None
    expires_at: datetime | None = None
    capped_points: int = 0
    calculation: Calculation | None = None


@dataclass(frozen=True)
class Portion:
    """Points of one lot taken (positive) or given back (negative) by one entry."""

    entry_id: str
    lot_id: str
    points: int
    expires_at: datetime


# Money a rule gave on top of money paid in is spent after all the paid money (contract §5:
# stored-value bonus money is spent after paid money).
SPENT_LAST_RULES = frozenset({"top_up_bonus"})


def _fifo_key(lot: Lot) -> tuple[datetime, bool, datetime, str]:
    """What leaves first: the lot that expires first, paid money before bonus money, then the
    lot earned first."""
    return (lot.expires_at, lot.rule in SPENT_LAST_RULES, lot.earned_at, lot.lot_id)


@dataclass
class Operation:
    """One change of the account (what a points.* event reports), with the balances after it."""

    name: Literal[
        "credited",
        "released",
        "debited",
        "reversed_earning",
        "reversed_redemption",
        "expired",
        "adjusted",
    ]
    entries: list[Entry]
    available_after: int
    pending_after: int


@dataclass
class Account:
    """One member's balances and open lots, changed in memory and written back together."""

    member_id: str
    available: int = 0
    pending: int = 0
    lifetime_earned: int = 0
    lifetime_redeemed: int = 0
    lots: dict[str, Lot] = field(default_factory=dict)
    # False: `lots` holds only the lots made in this unit of work (loading every open lot
    # costs a member with many; only taking points back needs them)
    lots_loaded: bool = True
    new_lots: list[Lot] = field(default_factory=list)
    changed_lots: set[str] = field(default_factory=set)
    entries: list[Entry] = field(default_factory=list)
    portions: list[Portion] = field(default_factory=list)
    operations: list[Operation] = field(default_factory=list)

    # --- what goes in -------------------------------------------------------------------

    def earn(
        self,
        points: int,
        *,
        lot_id: str,
        entry_id: str,
        rule: str,
        reason: str,
        source: Source,
        occurred_at: datetime,
        now: datetime,
        available_at: datetime,
        expires_at: datetime,
        capped_points: int = 0,
        calculation: Calculation | None = None,
    ) -> Entry:
        """A new lot: pending until `available_at` (when that lies after `now`), else available
        at once; an available lot repays a debt first. A lot that is past its expiry when it is
        earned (a backdated event) is credited and left for `expire_due`: it repays nothing."""
        state: LotState = "pending" if available_at > now else "available"
        lot = Lot(
            lot_id=lot_id,
            member_id=self.member_id,
            points=points,
            remaining=points if state == "pending" else 0,  # available: credited below
            state=state,
            earned_at=occurred_at,
            available_at=available_at,
            expires_at=expires_at,
            rule=rule,
            source_event_id=source.event_id,
            order_id=source.order_id,
        )
        self.lots[lot_id] = lot
        self.new_lots.append(lot)
        entry = self._entry(
            entry_id,
            "earn",
            state,
            points,
            reason,
            rule,
            source,
            now,
            occurred_at,
            lot_id=lot_id,
            available_at=available_at,
            expires_at=expires_at,
            capped_points=capped_points,
            calculation=calculation,
        )
        self.lifetime_earned += points
        if state == "pending":
            self.pending += points
        elif expires_at <= now:
            self.available += points
            lot.remaining = points
        else:
            self._credit_available(lot, points, entry)
        self._done("credited", [entry])
        return entry

    def release(self, lot_id: str, *, entry_id: str, now: datetime) -> Entry | None:
        """A pending lot becomes available (release-pending job)."""
        lot = self.lots[lot_id]
        if lot.state != "pending":
            return None
        lot.state = "available"
        self.changed_lots.add(lot_id)
        points = lot.remaining
        entry = self._entry(
            entry_id,
            "release",
            "available",
            points,
            "pending period over",
            lot.rule,
            Source(event_id=lot.source_event_id, order_id=lot.order_id),
            now,
            now,
            lot_id=lot_id,
            available_at=lot.available_at,
            expires_at=lot.expires_at,
        )
        self.pending -= points
        lot.remaining = 0
        self._credit_available(lot, points, entry)
        self._done("released", [entry])
        return entry

    def adjust(
        self,
        points: int,
        *,
        entry_id: str,
        reason: str,
        source: Source,
        now: datetime,
        lot_id: str,
        expires_at: datetime,
    ) -> Entry:
        """A manual adjustment: a grant is a new available lot, a deduction takes from lots."""
        if points > 0:
            entry = self.earn(
                points,
                lot_id=lot_id,
                entry_id=entry_id,
                rule="adjustment",
                reason=reason,
                source=source,
                occurred_at=now,
                now=now,
                available_at=now,
                expires_at=expires_at,
            )
            entry.kind = "adjust"
            self.operations[-1].name = "adjusted"
            return entry
        if points == 0:
            raise ValueError("an adjustment changes the balance")
        if self.available < -points:
            raise InsufficientPoints(self.available, -points)
        entry = self._entry(
            entry_id, "adjust", "available", points, reason, "adjustment", source, now, now
        )
        self._debit_available(-points, entry, allow_debt=False)
        self._done("adjusted", [entry])
        return entry

    # --- what goes out ------------------------------------------------------------------

    def redeem(
        self, points: int, *, entry_id: str, reason: str, source: Source, now: datetime
    ) -> Entry:
        if points <= 0:
            raise ValueError("a redemption takes a positive number of points")
        if self.available < points:
            raise InsufficientPoints(self.available, points)
        entry = self._entry(
            entry_id, "redeem", "available", -points, reason, "redemption", source, now, now
        )
        self._debit_available(points, entry, allow_debt=False)
        self.lifetime_redeemed += points
        self._done("debited", [entry])
        return entry

    def cancel_redemption(
        self,
        taken: list[Portion],
        *,
        entry_id: str,
        source: Source,
        now: datetime,
        new_id: Callable[[], str],
    ) -> Entry:
        """Give a redemption's points back to the lots they came from, with their expiry: what
        returns to a lot that expired meanwhile expires at once (contract §5)."""
        points = sum(p.points for p in taken)
        entry = self._entry(
            entry_id,
            "reverse",
            "available",
            points,
            "redemption cancelled",
            "redemption",
            source,
            now,
            now,
        )
        for portion in taken:
            lot = self.lots.get(portion.lot_id)
            if lot is None:
                raise KeyError(f"lot {portion.lot_id} of the redemption is not loaded")
            lot.remaining += portion.points
            self.changed_lots.add(lot.lot_id)
            self.portions.append(Portion(entry_id, lot.lot_id, -portion.points, lot.expires_at))
        self.available += points
        self.lifetime_redeemed -= points
        self._done("reversed_redemption", [entry])
        self.expire_due(now, new_id)
        self._repay_debt_from_lots(entry)
        return entry

    def reverse_earning(
        self,
        points: int,
        *,
        order_lot_id: str | None,
        entry_ids: Callable[[], str],
        reason: str,
        rule: str,
        source: Source,
        now: datetime,
    ) -> list[Entry]:
        """Take back earned points (refunds, cancellations): from the order's own lot first,
        then from available lots, leaving a debt for what cannot be taken back."""
        entries: list[Entry] = []
        left = points
        lot = self.lots.get(order_lot_id) if order_lot_id else None
        if lot is not None and lot.remaining > 0 and left > 0:
            taken = min(lot.remaining, left)
            entry = self._entry(
                entry_ids(),
                "reverse",
                lot.state,
                -taken,
                reason,
                rule,
                source,
                now,
                now,
                lot_id=lot.lot_id,
            )
            lot.remaining -= taken
            self.changed_lots.add(lot.lot_id)
            self.portions.append(Portion(entry.entry_id, lot.lot_id, taken, lot.expires_at))
            if lot.state == "pending":
                self.pending -= taken
            else:
                self.available -= taken
            self.lifetime_earned -= taken
            entries.append(entry)
            left -= taken
        if left > 0:
            entry = self._entry(
                entry_ids(), "reverse", "available", -left, reason, rule, source, now, now
            )
            self._debit_available(left, entry, allow_debt=True)
            self.lifetime_earned -= left
            entries.append(entry)
        if entries:
            self._done("reversed_earning", entries)
        return entries

    def expire(self, lot_id: str, *, entry_id: str, now: datetime) -> Entry | None:
        lot = self.lots[lot_id]
        if lot.state != "available" or lot.remaining <= 0:
            return None
        points = lot.remaining
        entry = self._entry(
            entry_id,
            "expire",
            "available",
            -points,
            "points expired",
            lot.rule,
            Source(event_id=lot.source_event_id, order_id=lot.order_id),
            now,
            now,
            lot_id=lot_id,
            expires_at=lot.expires_at,
        )
        lot.remaining = 0
        self.changed_lots.add(lot_id)
        self.portions.append(Portion(entry_id, lot_id, points, lot.expires_at))
        self.available -= points
        self._done("expired", [entry])
        return entry

    def expire_due(self, now: datetime, new_id: Callable[[], str]) -> list[Entry]:
        """Expire every available lot whose `expires_at` has come, as the `expire` job would:
        before points leave or come back, so that expired points are never spent (contract §5:
        whether or not the job has run yet)."""
        due = [lot.lot_id for lot in self.open_lots() if lot.expires_at <= now]
        entries = []
        for lot_id in due:
            entry = self.expire(lot_id, entry_id=new_id(), now=now)
            if entry is not None:
                entries.append(entry)
        return entries

    # --- bookkeeping --------------------------------------------------------------------

    def open_lots(self) -> list[Lot]:
        assert self.lots_loaded, "the account was loaded without its lots"
        return sorted(
            (lot for lot in self.lots.values() if lot.state == "available" and lot.remaining > 0),
            key=_fifo_key,
        )

    def _credit_available(self, lot: Lot, points: int, entry: Entry) -> None:
        """Points arrive in `lot`: a debt takes its share first."""
        debt = max(-self.available, 0)
        repay = min(debt, points)
        self.available += points
        lot.remaining += points - repay
        self.changed_lots.add(lot.lot_id)
        if repay:
            self.portions.append(Portion(entry.entry_id, lot.lot_id, repay, lot.expires_at))

    def _repay_debt_from_lots(self, entry: Entry) -> None:
        """After points come back to lots, a debt (negative available) takes them first."""
        debt = max(-(self.available - sum(lot.remaining for lot in self.open_lots())), 0)
        for lot in self.open_lots():
            if debt <= 0:
                break
            taken = min(lot.remaining, debt)
            lot.remaining -= taken
            debt -= taken
            self.changed_lots.add(lot.lot_id)
            self.portions.append(Portion(entry.entry_id, lot.lot_id, taken, lot.expires_at))

    def _debit_available(self, points: int, entry: Entry, *, allow_debt: bool) -> None:
        left = points
        for lot in self.open_lots():
            if left <= 0:
                break
            taken = min(lot.remaining, left)
            lot.remaining -= taken
            left -= taken
            self.changed_lots.add(lot.lot_id)
            self.portions.append(Portion(entry.entry_id, lot.lot_id, taken, lot.expires_at))
        if left > 0 and not allow_debt:
            raise AssertionError("available points and open lots disagree")
        self.available -= points

    def _done(self, name: OperationName, entries: list[Entry]) -> None:
        self.operations.append(Operation(name, entries, self.available, self.pending))

    def _entry(
        self,
        entry_id: str,
        kind: EntryKind,
        bucket: Bucket,
        points: int,
        reason: str,
        rule: str | None,
        source: Source,
        now: datetime,
        occurred_at: datetime,
        **extra: Any,
    ) -> Entry:
        entry = Entry(
            entry_id=entry_id,
            member_id=self.member_id,
            kind=kind,
            bucket=bucket,
            points=points,
            reason=reason,
            rule=rule,
            source=source,
            created_at=now,
            occurred_at=occurred_at,
            **extra,
        )
        self.entries.append(entry)
        return entry
