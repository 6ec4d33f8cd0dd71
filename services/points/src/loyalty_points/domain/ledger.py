"""Lots, ledger entries and the arithmetic of an account."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

EntryKind = Literal["earn", "release", "redeem", "reverse", "expire", "adjust"]


@dataclass(frozen=True)
class EarningRules:
    """The default rules of the contract; the rules issue makes them stored data."""

    signup_points: int = 100
    lot_validity: timedelta = timedelta(days=365)


@dataclass(frozen=True)
class PointsLot:
    lot_id: str
    member_id: str
    points: int
    earned_at: datetime
    available_at: datetime
    expires_at: datetime
    rule: str
    source_event_id: str


@dataclass(frozen=True)
class LedgerEntry:
    entry_id: str
    member_id: str
    kind: EntryKind
    points: int
    reason: str
    rule: str | None
    source_event_id: str | None
    source_type: str | None
    created_at: datetime
    lot_id: str | None = None
    order_id: str | None = None
    available_at: datetime | None = None
    expires_at: datetime | None = None


@dataclass
class BalanceChange:
    available: int = 0
    pending: int = 0
    lifetime_earned: int = 0
    lifetime_redeemed: int = 0


@dataclass
class Effects:
    """What a batch of events does to the ledger, computed in memory and written together."""

    lots: list[PointsLot] = field(default_factory=list)
    entries: list[LedgerEntry] = field(default_factory=list)
    balances: dict[str, BalanceChange] = field(default_factory=lambda: defaultdict(BalanceChange))

    def earn_available(self, lot: PointsLot, entry: LedgerEntry) -> None:
        self.lots.append(lot)
        self.entries.append(entry)
        change = self.balances[lot.member_id]
        change.available += lot.points
        change.lifetime_earned += lot.points
