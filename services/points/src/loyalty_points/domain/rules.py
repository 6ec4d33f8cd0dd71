"""Earning rules as data: each rule has a code, a kind, parameters and an on/off switch.

The defaults are contract §5's. Rules are stored in the points database and changed through
`PUT /v1/rules/{code}`; the computations below read them, never constants.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .ledger import Calculation, Factor


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PurchaseParams(_Params):
    points: int = Field(default=1, ge=0, description="points per full `per_minor` paid")
    per_minor: int = Field(default=100, ge=1, description="minor units per step")
    pending_days: int = Field(default=7, ge=0, le=365)


class TierMultiplierParams(_Params):
    multipliers: dict[str, float] = Field(
        default_factory=lambda: {"bronze": 1.0, "silver": 1.2, "gold": 1.5},
        description="tier code → multiplier; tiers announced by member.tier_changed are added",
    )

    @field_validator("multipliers")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        if any(m <= 0 or m > 100 for m in value.values()):
            raise ValueError("multipliers must be above 0 and at most 100")
        return value


class CardMultiplierParams(_Params):
    """The best points multiplier of the member's valid cards (from member.card_issued)."""


class MemberDayParams(_Params):
    day_of_month: int = Field(default=20, ge=1, le=31)
    multiplier: float = Field(default=2.0, gt=0, le=100)


class SignupParams(_Params):
    points: int = Field(default=100, ge=0)


class ReferralParams(_Params):
    points: int = Field(default=200, ge=0)


class CheckinParams(_Params):
    points: int = Field(default=5, ge=0)
    streak_days: int = Field(default=7, ge=1, description="every Nth consecutive day...")
    streak_bonus: int = Field(default=20, ge=0, description="...earns this much more")


class DailyCapParams(_Params):
    points: int = Field(default=10000, ge=0, description="purchase, check-in and referral points")


class ExpiryParams(_Params):
    days: int = Field(default=365, ge=1, description="a lot expires this long after it is earned")
    notice_days: int = Field(default=30, ge=0, description="expiry-notice warns this far ahead")


class TopUpTier(_Params):
    min_minor: int = Field(ge=1, description="a top-up of at least this much...")
    bonus_minor: int = Field(ge=0, description="...gets this much stored value on top")


class TopUpBonusParams(_Params):
    tiers: list[TopUpTier] = Field(
        default_factory=lambda: [TopUpTier(min_minor=10000, bonus_minor=1000)],
        description="the highest tier a top-up reaches applies",
    )

    def bonus_for(self, amount_minor: int) -> int:
        reached = [t.bonus_minor for t in self.tiers if amount_minor >= t.min_minor]
        return max(reached, default=0)


PARAMS: dict[str, type[_Params]] = {
    "purchase": PurchaseParams,
    "tier_multiplier": TierMultiplierParams,
    "card_multiplier": CardMultiplierParams,
    "member_day": MemberDayParams,
    "signup": SignupParams,
    "referral": ReferralParams,
    "checkin": CheckinParams,
    "daily_cap": DailyCapParams,
    "expiry": ExpiryParams,
    "top_up_bonus": TopUpBonusParams,
}

DESCRIPTIONS = {
    "purchase": "points per full amount paid on order.paid; pending for pending_days",
    "tier_multiplier": "multiplies purchase points by the tier the member held before the order",
    "card_multiplier": "multiplies purchase points by the best multiplier of the member's cards",
    "member_day": "multiplies purchase points on a day of each month, member's time zone",
    "signup": "points on member.registered, available at once",
    "referral": "points to the referrer when the referred member's first order is paid",
    "checkin": "points per daily check-in, plus a bonus on every Nth consecutive day",
    "daily_cap": "most points earned per member per local day (purchase, check-in, referral)",
    "expiry": "how long earned points last, and how early members are warned",
    "top_up_bonus": "stored value given on top of a top-up, by the size of the top-up",
}


@dataclass(frozen=True)
class Rule:
    code: str
    enabled: bool
    params: Any


def default_rules() -> dict[str, Rule]:
    return {code: Rule(code, True, model()) for code, model in PARAMS.items()}


def parse_params(code: str, raw: dict[str, Any]) -> _Params:
    return PARAMS[code].model_validate(raw)


@dataclass(frozen=True)
class Step:
    """One line of an explanation: which rule did what to the points."""

    rule: str
    points: int
    detail: str
    factor: str | None = None

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"rule": self.rule, "points": self.points, "detail": self.detail}
        if self.factor is not None:
            body["factor"] = self.factor
        return body


@dataclass(frozen=True)
class PurchaseTerms:
    """What an order's points are computed with, fixed when it is paid (refunds reuse them)."""

    points: int
    per_minor: int
    multiplier: Decimal
    steps: tuple[Step, ...] = field(default=())
    factors: tuple[Factor, ...] = field(default=())  # what `multiplier` is the product of

    def base_points(self, paid_minor: int) -> int:
        return (max(paid_minor, 0) // self.per_minor) * self.points

    def points_for(self, paid_minor: int) -> int:
        base = self.base_points(paid_minor)
        return int((Decimal(base) * self.multiplier).to_integral_value(rounding=ROUND_FLOOR))

    def calculation(self, paid_minor: int) -> Calculation:
        return Calculation(self.base_points(paid_minor), self.factors)


@dataclass
class Rulebook:
    """The rules in force, with the computations that read them."""

    rules: dict[str, Rule]

    def enabled(self, code: str) -> Any | None:
        rule = self.rules.get(code)
        return rule.params if rule and rule.enabled else None

    def lot_expiry(self, earned_at: datetime) -> datetime:
        params = self.enabled("expiry") or ExpiryParams(days=365 * 100)
        return earned_at + timedelta(days=params.days)

    def purchase_terms(
        self,
        *,
        paid_minor: int,
        occurred_at: datetime,
        timezone: str,
        tier: str | None,
        tier_multiplier: float | None,
        card_multiplier: float | None,
    ) -> PurchaseTerms | None:
        purchase: PurchaseParams | None = self.enabled("purchase")
        if purchase is None:
            return None
        base = (paid_minor // purchase.per_minor) * purchase.points
        steps = [
            Step(
                "purchase",
                base,
                f"{purchase.points} per full {purchase.per_minor} of {paid_minor} paid",
            )
        ]
        factors: list[Factor] = []
        tiers: TierMultiplierParams | None = self.enabled("tier_multiplier")
        if tiers is not None and (tier_multiplier is not None or tier in tiers.multipliers):
            factor = Decimal(
                str(
                    tier_multiplier
                    if tier_multiplier is not None
                    else tiers.multipliers[tier or ""]
                )
            )
            factors.append(Factor("tier", factor, tier))
            steps.append(Step("tier_multiplier", 0, f"tier {tier}", factor=str(factor)))
        if self.enabled("card_multiplier") is not None and card_multiplier and card_multiplier != 1:
            factor = Decimal(str(card_multiplier))
            factors.append(Factor("card", factor, "best valid card"))
            steps.append(Step("card_multiplier", 0, "best valid card", factor=str(factor)))
        day: MemberDayParams | None = self.enabled("member_day")
        local = occurred_at.astimezone(ZoneInfo(timezone)).date()
        if day is not None and local.day == day.day_of_month:
            factor = Decimal(str(day.multiplier))
            factors.append(Factor("member_day", factor, local.isoformat()))
            steps.append(
                Step(
                    "member_day",
                    0,
                    f"member day ({local.isoformat()}, {timezone})",
                    factor=str(factor),
                )
            )
        multiplier = Decimal(1)
        for f in factors:
            multiplier *= f.value
        terms = PurchaseTerms(purchase.points, purchase.per_minor, multiplier)
        total = terms.points_for(paid_minor)
        steps.append(Step("purchase", total, f"{base} x {multiplier}, rounded down"))
        return PurchaseTerms(
            purchase.points, purchase.per_minor, multiplier, tuple(steps), tuple(factors)
        )

    def pending_until(self, occurred_at: datetime) -> datetime:
        purchase: PurchaseParams | None = self.enabled("purchase")
        return occurred_at + timedelta(days=purchase.pending_days if purchase else 0)

    def daily_cap(self) -> int | None:
        cap: DailyCapParams | None = self.enabled("daily_cap")
        return cap.points if cap else None


def local_date(at: datetime, timezone: str) -> date:
    return at.astimezone(ZoneInfo(timezone)).date()
