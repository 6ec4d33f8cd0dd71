"""Churn risk: how far the time since the last order exceeds the member's own usual gap between
orders, and how the recent purchase volume compares with the member's earlier rate.

The score is a step function of whole days since the last order (with thresholds at 1, 1.5, 2
and 3 times the usual gap), so it changes at a few known instants that the recompute job can
be woken for, instead of every day for every member. Its inputs are returned with it, so the
profile can show why a member scored what they scored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .lifecycle import DAY, days_since

RECENT_DAYS = 90
YEAR_DAYS = 365
EARLIER_DAYS = YEAR_DAYS - RECENT_DAYS


@dataclass(frozen=True)
class ChurnModel:
    default_gap_days: float = 45.0  # a one-order member is expected back within the `new` window
    min_gap_days: float = 7.0  # daily shoppers do not become "overdue" after two quiet days
    gap_ratios: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0)
    gap_weight: float = 0.7
    volume_weight: float = 0.3
    lost_after_days: int = 360


@dataclass(frozen=True)
class ChurnAssessment:
    risk: float | None
    reasons: list[dict[str, str]] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)
    next_change_at: datetime | None = None


def assess_churn(
    *,
    first_order_at: datetime | None,
    last_order_at: datetime | None,
    orders_count: int,
    recent_spend_minor: int,
    earlier_spend_minor: int,
    as_of: datetime,
    model: ChurnModel = ChurnModel(),
) -> ChurnAssessment:
    """Risk in [0, 1] (None without a paid order), its reasons, inputs and next change."""
    if first_order_at is None or last_order_at is None or orders_count <= 0:
        return ChurnAssessment(risk=None)
    since = days_since(last_order_at, as_of)
    usual_gap: float | None = None
    if orders_count >= 2:
        usual_gap = (last_order_at - first_order_at) / DAY / (orders_count - 1)
    expected = max(
        usual_gap if usual_gap is not None else model.default_gap_days, model.min_gap_days
    )
    # Integer day thresholds decide the level, so the level and its next change agree exactly.
    thresholds = [math.ceil(ratio * expected - 1e-9) for ratio in model.gap_ratios]
    level = sum(1 for t in thresholds if since >= t)
    gap_score = level / len(thresholds)

    volume_ratio: float | None = None
    volume_drop = 0.0
    if earlier_spend_minor > 0:
        earlier_rate = earlier_spend_minor / EARLIER_DAYS
        recent_rate = recent_spend_minor / RECENT_DAYS
        volume_ratio = recent_rate / earlier_rate
        volume_drop = min(max(1.0 - volume_ratio, 0.0), 1.0)

    lost = since > model.lost_after_days
    risk = 1.0 if lost else model.gap_weight * gap_score + model.volume_weight * volume_drop
    risk = round(min(max(risk, 0.0), 1.0), 2)

    reasons: list[dict[str, str]] = []
    if lost:
        reasons.append(
            {
                "code": "lost",
                "detail": f"no paid order for {since} days (over {model.lost_after_days})",
            }
        )
    if level > 0:
        reasons.append(
            {
                "code": "overdue",
                "detail": f"{since} days since the last order, {since / expected:.1f}x the "
                f"usual gap of {expected:.0f} days",
            }
        )
    if usual_gap is None:
        reasons.append(
            {
                "code": "single_order",
                "detail": f"one paid order so far: a gap of {expected:.0f} days is assumed",
            }
        )
    if volume_ratio is not None and volume_drop > 0:
        reasons.append(
            {
                "code": "volume_drop",
                "detail": f"spend per day in the last {RECENT_DAYS} days is "
                f"{volume_drop * 100:.0f}% below the rate of the {EARLIER_DAYS} days before",
            }
        )

    upcoming = [t for t in thresholds if t > since]
    if not lost:
        upcoming.append(model.lost_after_days + 1)
    next_change = last_order_at + min(upcoming) * DAY if upcoming else None
    inputs: dict[str, Any] = {
        "days_since_last_order": since,
        "usual_gap_days": round(usual_gap, 1) if usual_gap is not None else None,
        "expected_gap_days": round(expected, 1),
        "gap_ratio": round(since / expected, 2),
        "gap_level": level,
        "gap_thresholds_days": thresholds,
        "recent_spend_minor": recent_spend_minor,
        "earlier_spend_minor": earlier_spend_minor,
        "volume_ratio": round(volume_ratio, 2) if volume_ratio is not None else None,
        "formula": f"{model.gap_weight} x gap_level/{len(thresholds)} + "
        f"{model.volume_weight} x max(0, 1 - volume_ratio); 1.0 when lost",
    }
    return ChurnAssessment(risk=risk, reasons=reasons, inputs=inputs, next_change_at=next_change)
