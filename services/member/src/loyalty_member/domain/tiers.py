"""The tier ladder as plain Python: validation, the rolling window, which tier a value earns."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Literal, get_args

TierMetric = Literal["spend_365d", "lifetime_points", "order_count_365d"]
TierChangeReason = Literal["upgrade", "downgrade", "manual"]

METRICS: Final = frozenset(get_args(TierMetric))
# The rolling window of the *_365d metrics: an order counts at `as_of` when it was paid in
# (as_of - 365 days, as_of]; one paid exactly 365 days earlier has just dropped out.
WINDOW: Final = timedelta(days=365)
MAX_TIERS: Final = 20
MIN_MULTIPLIER: Final = 1.0
MAX_MULTIPLIER: Final = 10.0
TIER_CODE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")

FieldError = tuple[tuple[str | int, ...], str]


@dataclass(frozen=True)
class TierBenefits:
    """What a tier grants besides its points multiplier (carried by the member's tier card)."""

    discount_percent: int = 0
    free_shipping: bool = False


@dataclass(frozen=True)
class Tier:
    code: str
    name: str
    threshold: int
    points_multiplier: float
    benefits: TierBenefits = field(default_factory=TierBenefits)

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.name,
            "threshold": self.threshold,
            "points_multiplier": self.points_multiplier,
            "benefits": {
                "discount_percent": self.benefits.discount_percent,
                "free_shipping": self.benefits.free_shipping,
            },
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Tier:
        benefits = raw.get("benefits") or {}
        return cls(
            code=str(raw["code"]),
            name=str(raw["name"]),
            threshold=int(raw["threshold"]),
            points_multiplier=float(raw["points_multiplier"]),
            benefits=TierBenefits(
                discount_percent=int(benefits.get("discount_percent", 0)),
                free_shipping=bool(benefits.get("free_shipping", False)),
            ),
        )


class InvalidLadder(ValueError):
    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(msg for _, msg in errors))
        self.errors = errors


def ladder_errors(metric: str, tiers: Sequence[Tier]) -> list[FieldError]:
    """Every rule a ladder breaks, with the location of the offending value."""
    errors: list[FieldError] = []
    if metric not in METRICS:
        errors.append((("metric",), f"unknown metric '{metric}'; use one of {sorted(METRICS)}"))
    if not tiers:
        errors.append((("tiers",), "a ladder needs at least one tier"))
        return errors
    if len(tiers) > MAX_TIERS:
        errors.append((("tiers",), f"a ladder has at most {MAX_TIERS} tiers"))
    seen: set[str] = set()
    for i, tier in enumerate(tiers):
        if not TIER_CODE.match(tier.code):
            errors.append(
                (("tiers", i, "code"), "a tier code is 1-32 of a-z, 0-9, '-', '_', lowercase")
            )
        if tier.code in seen:
            errors.append((("tiers", i, "code"), f"tier code '{tier.code}' appears twice"))
        seen.add(tier.code)
        if i == 0 and tier.threshold != 0:
            errors.append(
                (("tiers", 0, "threshold"), "the first tier's threshold must be 0: every member")
            )
        if i > 0 and tier.threshold <= tiers[i - 1].threshold:
            errors.append(
                (
                    ("tiers", i, "threshold"),
                    f"thresholds must strictly increase: {tier.threshold} follows "
                    f"{tiers[i - 1].threshold}",
                )
            )
        if not (
            math.isfinite(tier.points_multiplier)
            and MIN_MULTIPLIER <= tier.points_multiplier <= MAX_MULTIPLIER
        ):
            errors.append(
                (
                    ("tiers", i, "points_multiplier"),
                    f"points_multiplier must be between {MIN_MULTIPLIER} and {MAX_MULTIPLIER}",
                )
            )
    return errors


@dataclass(frozen=True)
class TierLadder:
    """Tiers from the lowest (threshold 0) up; a member holds the highest tier whose threshold
    their metric reaches."""

    metric: TierMetric
    tiers: tuple[Tier, ...]

    def __post_init__(self) -> None:
        errors = ladder_errors(self.metric, self.tiers)
        if errors:
            raise InvalidLadder(errors)

    @classmethod
    def build(cls, metric: str, tiers: Iterable[Tier]) -> TierLadder:
        return cls(metric=metric, tiers=tuple(tiers))  # type: ignore[arg-type]

    @property
    def lowest(self) -> Tier:
        return self.tiers[0]

    @property
    def codes(self) -> list[str]:
        return [t.code for t in self.tiers]

    def rank(self, code: str) -> int | None:
        """0 for the lowest tier; None for a code that is not on this ladder (any more)."""
        for i, tier in enumerate(self.tiers):
            if tier.code == code:
                return i
        return None

    def tier(self, code: str) -> Tier | None:
        rank = self.rank(code)
        return None if rank is None else self.tiers[rank]

    def points_multiplier_of(self, code: str) -> float | None:
        """The purchase points multiplier of a tier (None: not on this ladder)."""
        found = self.tier(code)
        return found.points_multiplier if found else None

    def qualified(self, value: int) -> Tier:
        """The highest tier whose threshold `value` reaches (exactly at the threshold counts)."""
        best = self.tiers[0]
        for tier in self.tiers:
            if value >= tier.threshold:
                best = tier
        return best

    def next_above(self, code: str) -> Tier | None:
        rank = self.rank(code)
        if rank is None or rank + 1 >= len(self.tiers):
            return None
        return self.tiers[rank + 1]

    def to_json(self) -> list[dict[str, Any]]:
        return [t.to_json() for t in self.tiers]


def upgrade_to(ladder: TierLadder, current: str, value: int) -> Tier | None:
    """The tier a member moves to when a qualifying event lifts `value`, or None. Never lower:
    downgrades wait for the tier-review job. A code no longer on the ladder is replaced."""
    target = ladder.qualified(value)
    rank = ladder.rank(current)
    if rank is None:
        return target
    return target if ladder.rank(target.code) > rank else None  # type: ignore[operator]


def downgrade_to(ladder: TierLadder, current: str, value: int) -> Tier | None:
    """The tier review moves a member to: straight down to the tier `value` still earns, or None
    when the member keeps their tier. Never higher: upgrades happen on the qualifying event."""
    target = ladder.qualified(value)
    rank = ladder.rank(current)
    if rank is None:
        return target
    return target if ladder.rank(target.code) < rank else None  # type: ignore[operator]


def change_reason(ladder: TierLadder, old: str, new: str) -> TierChangeReason:
    """upgrade or downgrade by rank; `manual` when the old code left the ladder (an operator's
    ladder change, not the member's behaviour, moved them)."""
    old_rank, new_rank = ladder.rank(old), ladder.rank(new)
    if old_rank is None or new_rank is None:
        return "manual"
    return "upgrade" if new_rank > old_rank else "downgrade"


def window_start(as_of: datetime) -> datetime:
    return as_of - WINDOW


def in_window(paid_at: datetime, as_of: datetime) -> bool:
    """Whether an order paid at `paid_at` counts towards a rolling-365-day metric at `as_of`."""
    return window_start(as_of) < paid_at <= as_of


def net_spend(paid_minor: int, refunded_minor: int, status: str) -> int:
    """What an order adds to spend: paid minus refunded; a cancelled order adds nothing."""
    if status == "cancelled":
        return 0
    return max(paid_minor - refunded_minor, 0)


def counts_as_order(paid_minor: int, refunded_minor: int, status: str) -> bool:
    """Whether a paid order counts for order_count_365d: not cancelled, not refunded in full."""
    return status != "cancelled" and (paid_minor == 0 or refunded_minor < paid_minor)


DEFAULT_LADDER: Final = TierLadder(
    metric="spend_365d",
    tiers=(
        Tier("bronze", "Bronze", 0, 1.0),
        Tier("silver", "Silver", 100_000, 1.2),
        Tier("gold", "Gold", 500_000, 1.5),
    ),
)
