"""Lifecycle stages, buyer weight and the time at which time alone changes a member's stage.

Days are whole 24-hour periods elapsed since an order (`(as_of - t) // 1 day`), so "45 days
ago" lasts exactly one day and every boundary is an instant: the stage that holds on day 45
changes at `t + 46 days`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

LifecycleStage = Literal[
    "prospect", "new", "active", "cooling", "easy_winback", "hard_winback", "lost"
]
BuyerWeight = Literal["none", "light", "medium", "heavy"]

STAGES: tuple[LifecycleStage, ...] = (
    "prospect",
    "new",
    "active",
    "cooling",
    "easy_winback",
    "hard_winback",
    "lost",
)
BUYER_WEIGHTS: tuple[BuyerWeight, ...] = ("none", "light", "medium", "heavy")
DAY = timedelta(days=1)


@dataclass(frozen=True)
class StageWindows:
    """The last day (inclusive) of each stage, in days since the last (or first) paid order."""

    new: int = 45  # new: first order at most this many days ago; active: last order too
    cooling: int = 90
    easy_winback: int = 180
    hard_winback: int = 360  # after this: lost

    def __post_init__(self) -> None:
        if not 0 < self.new < self.cooling < self.easy_winback < self.hard_winback:
            raise ValueError("stage windows must grow: new < cooling < easy_winback < hard_winback")


@dataclass(frozen=True)
class BuyerWeightCuts:
    """Paid orders in the last 365 days from which a member is medium or heavy (light: >= 1)."""

    medium: int = 2
    heavy: int = 5


def days_since(at: datetime, as_of: datetime) -> int:
    """Whole days elapsed from `at` to `as_of`; 0 for a time in the future."""
    return max(0, (as_of - at) // DAY)


def lifecycle_stage(
    first_order_at: datetime | None,
    last_order_at: datetime | None,
    as_of: datetime,
    windows: StageWindows = StageWindows(),
) -> LifecycleStage:
    if first_order_at is None or last_order_at is None:
        return "prospect"
    since_last = days_since(last_order_at, as_of)
    if since_last <= windows.new:
        return "new" if days_since(first_order_at, as_of) <= windows.new else "active"
    if since_last <= windows.cooling:
        return "cooling"
    if since_last <= windows.easy_winback:
        return "easy_winback"
    if since_last <= windows.hard_winback:
        return "hard_winback"
    return "lost"


def next_stage_change(
    first_order_at: datetime | None,
    last_order_at: datetime | None,
    as_of: datetime,
    windows: StageWindows = StageWindows(),
) -> datetime | None:
    """The first instant after `as_of` at which time alone changes the stage (None: never)."""
    stage = lifecycle_stage(first_order_at, last_order_at, as_of, windows)
    if stage in ("prospect", "lost") or first_order_at is None or last_order_at is None:
        return None
    if stage == "new":
        # new ends when the first order turns windows.new + 1 days old (the last is no older)
        return first_order_at + (windows.new + 1) * DAY
    last_day = {
        "active": windows.new,
        "cooling": windows.cooling,
        "easy_winback": windows.easy_winback,
        "hard_winback": windows.hard_winback,
    }[stage]
    return last_order_at + (last_day + 1) * DAY


def buyer_weight(paid_orders_365d: int, cuts: BuyerWeightCuts = BuyerWeightCuts()) -> BuyerWeight:
    if paid_orders_365d >= cuts.heavy:
        return "heavy"
    if paid_orders_365d >= cuts.medium:
        return "medium"
    if paid_orders_365d >= 1:
        return "light"
    return "none"
