"""A member's profile kept up to date event by event: counters, windows, tags, stage, churn.

Per-order facts (`OrderFact`) are the truth; a profile's counters are updated incrementally as
facts arrive or change (constant work per event). When that is not enough (the first or last
order stopped counting, or a rolling window moved since the profile was last evaluated) the
profile is marked `needs_rescan` and the store recomputes it from the member's facts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .churn import RECENT_DAYS, YEAR_DAYS, ChurnModel, assess_churn
from .lifecycle import (
    DAY,
    BuyerWeightCuts,
    LifecycleStage,
    StageWindows,
    buyer_weight,
    days_since,
    lifecycle_stage,
    next_stage_change,
)


@dataclass(frozen=True)
class ProfileRules:
    """Everything that decides a profile's derived fields (configurable, see config.py)."""

    windows: StageWindows = field(default_factory=StageWindows)
    weights: BuyerWeightCuts = field(default_factory=BuyerWeightCuts)
    churn: ChurnModel = field(default_factory=ChurnModel)
    tag_min_share: float = 0.25
    max_tags: int = 3


@dataclass
class OrderFact:
    """What the segmenter keeps of one order (members' and guests')."""

    order_id: str
    member_id: str | None
    occurred_at: datetime
    paid_minor: int
    refunded_minor: int = 0
    cancelled: bool = False
    channel: str = "pos"
    store_id: str | None = None
    currency: str = "CNY"
    categories: dict[str, int] = field(default_factory=dict)  # line value per category
    coupon_codes: list[str] = field(default_factory=list)

    @property
    def counted(self) -> bool:
        """A paid order counts until it is cancelled or fully refunded."""
        if self.cancelled:
            return False
        return self.paid_minor == 0 or self.refunded_minor < self.paid_minor

    @property
    def net_minor(self) -> int:
        return self.paid_minor - self.refunded_minor if self.counted else 0

    def category_contribution(self) -> dict[str, int]:
        """Line values scaled to what is left of the order after refunds."""
        if not self.counted:
            return {}
        if self.paid_minor == 0:
            return dict(self.categories)
        return {c: v * self.net_minor // self.paid_minor for c, v in self.categories.items()}


@dataclass(frozen=True)
class WindowFigures:
    """A member's counters recomputed from facts as of a time."""

    orders_count: int
    spend_minor: int
    first_order_at: datetime | None
    last_order_at: datetime | None
    orders_365d: int
    spend_365d_minor: int
    recent_spend_minor: int
    earlier_spend_minor: int
    window_due_at: datetime | None


def window_figures(facts: list[OrderFact], as_of: datetime) -> WindowFigures:
    """The reference computation (the store does the same in SQL)."""
    counted = [f for f in facts if f.counted]
    year_start = as_of - YEAR_DAYS * DAY
    recent_start = as_of - RECENT_DAYS * DAY
    in_year = [f for f in counted if f.occurred_at > year_start]
    recent = [f for f in in_year if f.occurred_at > recent_start]
    earlier = [f for f in in_year if f.occurred_at <= recent_start]
    due = [f.occurred_at + RECENT_DAYS * DAY for f in recent]
    due += [f.occurred_at + YEAR_DAYS * DAY for f in earlier]
    return WindowFigures(
        orders_count=len(counted),
        spend_minor=sum(f.net_minor for f in counted),
        first_order_at=min((f.occurred_at for f in counted), default=None),
        last_order_at=max((f.occurred_at for f in counted), default=None),
        orders_365d=len(in_year),
        spend_365d_minor=sum(f.net_minor for f in in_year),
        recent_spend_minor=sum(f.net_minor for f in recent),
        earlier_spend_minor=sum(f.net_minor for f in earlier),
        window_due_at=min(due, default=None),
    )


def preference_tags(category_spend: dict[str, int], rules: ProfileRules) -> list[str]:
    total = sum(v for v in category_spend.values() if v > 0)
    if total <= 0:
        return []
    liked = [
        (c, v) for c, v in category_spend.items() if v > 0 and v / total >= rules.tag_min_share
    ]
    liked.sort(key=lambda cv: (-cv[1], cv[0]))
    return [c for c, _ in liked[: rules.max_tags]]


@dataclass(frozen=True)
class StageChange:
    member_id: str
    old_stage: LifecycleStage | None
    new_stage: LifecycleStage
    as_of: datetime
    last_order_at: datetime | None
    paid_orders_count: int


@dataclass
class Profile:
    member_id: str
    registered_at: datetime | None = None
    erased_at: datetime | None = None
    tier: str | None = None
    points_available: int = 0
    points_pending: int = 0
    orders_count: int = 0
    first_order_at: datetime | None = None
    last_order_at: datetime | None = None
    spend_minor: int = 0
    orders_365d: int = 0
    spend_365d_minor: int = 0
    recent_spend_minor: int = 0
    earlier_spend_minor: int = 0
    window_due_at: datetime | None = None
    category_spend: dict[str, int] = field(default_factory=dict)
    preference_tags: list[str] = field(default_factory=list)
    buyer_weight: str = "none"
    lifecycle_stage: str | None = None
    stage_changed_at: datetime | None = None
    churn_risk: float | None = None
    churn_reasons: list[dict[str, str]] = field(default_factory=list)
    churn_inputs: dict[str, Any] = field(default_factory=dict)
    rfm_r: int | None = None
    rfm_f: int | None = None
    rfm_m: int | None = None
    rfm_scored_at: datetime | None = None
    evaluated_at: datetime | None = None
    next_transition_at: datetime | None = None
    needs_rescan: bool = False

    # --- incremental updates from order facts --------------------------------------------

    def count_order(self, fact: OrderFact, now: datetime, sign: int) -> None:
        """Add (+1) or take away (-1) one fact's contribution to the counters."""
        if not fact.counted:
            return
        net = fact.net_minor
        self.orders_count += sign
        self.spend_minor += sign * net
        for category, value in fact.category_contribution().items():
            left = self.category_spend.get(category, 0) + sign * value
            if left:
                self.category_spend[category] = left
            else:
                self.category_spend.pop(category, None)
        at = fact.occurred_at
        if sign > 0:
            first, last = self.first_order_at, self.last_order_at
            self.first_order_at = at if first is None else min(first, at)
            self.last_order_at = at if last is None else max(last, at)
        elif at in (self.first_order_at, self.last_order_at):
            self.needs_rescan = True  # the next first or last order is in the facts
        if self.window_due_at is not None and self.window_due_at <= now:
            self.needs_rescan = True  # the windows moved since the last evaluation
            return
        if at > now - YEAR_DAYS * DAY:
            self.orders_365d += sign
            self.spend_365d_minor += sign * net
            if at > now - RECENT_DAYS * DAY:
                self.recent_spend_minor += sign * net
                due = at + RECENT_DAYS * DAY
            else:
                self.earlier_spend_minor += sign * net
                due = at + YEAR_DAYS * DAY
            if sign > 0:
                self.window_due_at = (
                    due if self.window_due_at is None else min(self.window_due_at, due)
                )

    def apply_figures(self, figures: WindowFigures) -> None:
        self.orders_count = figures.orders_count
        self.spend_minor = figures.spend_minor
        self.first_order_at = figures.first_order_at
        self.last_order_at = figures.last_order_at
        self.orders_365d = figures.orders_365d
        self.spend_365d_minor = figures.spend_365d_minor
        self.recent_spend_minor = figures.recent_spend_minor
        self.earlier_spend_minor = figures.earlier_spend_minor
        self.window_due_at = figures.window_due_at
        self.needs_rescan = False

    # --- derived fields ------------------------------------------------------------------

    def derive(self, as_of: datetime, rules: ProfileRules) -> StageChange | None:
        """Recompute weight, tags, stage and churn as of a time; answer the stage change."""
        self.buyer_weight = buyer_weight(self.orders_365d, rules.weights)
        self.preference_tags = preference_tags(self.category_spend, rules)
        churn = assess_churn(
            first_order_at=self.first_order_at,
            last_order_at=self.last_order_at,
            orders_count=self.orders_count,
            recent_spend_minor=self.recent_spend_minor,
            earlier_spend_minor=self.earlier_spend_minor,
            as_of=as_of,
            model=rules.churn,
        )
        self.churn_risk, self.churn_reasons, self.churn_inputs = (
            churn.risk,
            churn.reasons,
            churn.inputs,
        )
        stage = lifecycle_stage(self.first_order_at, self.last_order_at, as_of, rules.windows)
        due = [
            next_stage_change(self.first_order_at, self.last_order_at, as_of, rules.windows),
            churn.next_change_at,
            self.window_due_at,
        ]
        self.next_transition_at = min((d for d in due if d is not None and d > as_of), default=None)
        self.evaluated_at = as_of
        if stage == self.lifecycle_stage:
            return None
        change = StageChange(
            member_id=self.member_id,
            old_stage=self.lifecycle_stage,  # type: ignore[arg-type]
            new_stage=stage,
            as_of=as_of,
            last_order_at=self.last_order_at,
            paid_orders_count=self.orders_count,
        )
        self.lifecycle_stage = stage
        self.stage_changed_at = as_of
        return change

    def recency_days(self, as_of: datetime) -> int | None:
        return days_since(self.last_order_at, as_of) if self.last_order_at else None

    def rule_values(self, as_of: datetime) -> dict[str, Any]:
        """The values the rule language sees (see rules.FIELDS)."""
        return {
            "orders_count": self.orders_count,
            "orders_365d": self.orders_365d,
            "first_order_at": self.first_order_at,
            "last_order_at": self.last_order_at,
            "spend_minor": self.spend_minor,
            "spend_365d_minor": self.spend_365d_minor,
            "rfm.recency_days": self.recency_days(as_of),
            "rfm.r": self.rfm_r,
            "rfm.f": self.rfm_f,
            "rfm.m": self.rfm_m,
            "lifecycle_stage": self.lifecycle_stage,
            "buyer_weight": self.buyer_weight,
            "preference_tags": list(self.preference_tags),
            "churn_risk": self.churn_risk,
            "tier": self.tier,
            "points_available": self.points_available,
            "registered": self.registered_at is not None,
        }
