"""Campaigns: which fact triggers which coupons for whom, at most once, within dates, budget,
stock and per-member limits, with a deterministic holdout (control group)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .templates import CouponTemplate

TRIGGER_TYPES: tuple[str, ...] = (
    "member.registered",
    "first_order",
    "nth_order",
    "segment.entered",
    "tier_changed",
    "birthday",
    "checkin_streak",
    "manual",
)

# The parameters each trigger type takes: name → (required, minimum for integers)
TRIGGER_PARAMS: dict[str, dict[str, tuple[bool, int | None]]] = {
    "member.registered": {},
    "first_order": {},
    "nth_order": {"n": (True, 2)},
    "segment.entered": {"segment_code": (True, None)},
    "tier_changed": {"tier": (True, None)},
    "birthday": {},
    "checkin_streak": {"days": (True, 1)},
    "manual": {},
}


def trigger_problems(trigger: dict[str, Any]) -> list[tuple[str, str]]:
    """What is wrong with a trigger, as (field, message) pairs."""
    kind = trigger.get("type")
    if kind not in TRIGGER_PARAMS:
        return [("type", f"must be one of {', '.join(TRIGGER_TYPES)}")]
    problems = []
    params = TRIGGER_PARAMS[kind]
    for name in trigger:
        if name != "type" and name not in params:
            problems.append((name, f"a {kind} trigger takes no '{name}'"))
    for name, (required, minimum) in params.items():
        value = trigger.get(name)
        if value is None:
            if required:
                problems.append((name, f"a {kind} trigger needs '{name}'"))
            continue
        if minimum is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                problems.append((name, f"must be a whole number of at least {minimum}"))
        elif not isinstance(value, str) or not value.strip() or len(value) > 64:
            problems.append((name, "must be a non-empty string of at most 64 characters"))
    return problems


@dataclass(frozen=True)
class Campaign:
    code: str
    template_codes: tuple[str, ...]
    trigger_type: str
    trigger: dict[str, Any]
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    budget: int | None = None  # the most coupons the campaign may issue
    issued_count: int = 0
    holdout_percent: float = 0.0
    status: str = "active"

    def running_at(self, at: datetime) -> bool:
        if self.status != "active":
            return False
        if self.starts_at is not None and at < self.starts_at:
            return False
        return not (self.ends_at is not None and at >= self.ends_at)


def in_holdout(campaign_code: str, member_id: str, holdout_percent: float) -> bool:
    """The same member is always in (or out of) the same campaign's control group, on every
    replica and every run: a hash, not a random draw. Resolution: 0.01 percent."""
    if holdout_percent <= 0:
        return False
    digest = hashlib.sha256(f"{campaign_code}\x00{member_id}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 10_000
    return bucket < round(holdout_percent * 100)


# ---------------------------------------------------------------------------------------------
# Facts: the events that trigger campaigns, reduced to what matching needs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fact:
    """Something that happened to a member and may trigger campaigns. `key` names the fact so
    that the same fact delivered again (even under another event id) triggers nothing more."""

    trigger_type: str
    member_id: str
    occurred_at: datetime
    key: str
    event_id: str | None = None
    segment_code: str | None = None
    tier: str | None = None
    streak_days: int | None = None
    paid_order_count: int | None = None


def fact_matches(campaign: Campaign, fact: Fact) -> bool:
    """Whether the fact triggers the campaign (its dates are checked at the fact's time)."""
    if not campaign.running_at(fact.occurred_at):
        return False
    t = campaign.trigger
    kind = campaign.trigger_type
    if kind == "member.registered":
        return fact.trigger_type == "member.registered"
    if kind == "first_order":
        return fact.trigger_type == "order.paid" and fact.paid_order_count == 1
    if kind == "nth_order":
        return fact.trigger_type == "order.paid" and fact.paid_order_count == t["n"]
    if kind == "segment.entered":
        return fact.trigger_type == "segment.entered" and fact.segment_code == t["segment_code"]
    if kind == "tier_changed":
        return fact.trigger_type == "tier_changed" and fact.tier == t["tier"]
    if kind == "checkin_streak":
        # Every full streak of `days` (7, 14, 21... for days=7), like the points streak bonus.
        days = int(t["days"])
        return (
            fact.trigger_type == "checkin_streak"
            and fact.streak_days is not None
            and fact.streak_days % days == 0
        )
    return False  # birthday and manual campaigns issue through bulk issue only


def trigger_key(campaign: Campaign, fact: Fact) -> str:
    """The receipt key: one grant per (campaign, member, key)."""
    return fact.key


# ---------------------------------------------------------------------------------------------
# Granting: the in-memory decision for a batch of (campaign, member, key) requests
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GrantRequest:
    campaign_code: str
    member_id: str
    key: str
    via: str  # campaign | bulk_issue
    event_id: str | None = None
    job_id: str | None = None


@dataclass(frozen=True)
class NewCoupon:
    template_code: str
    valid_from: datetime
    valid_until: datetime


@dataclass
class Grant:
    request: GrantRequest
    outcome: str  # issued | holdout | not_issued | duplicate
    coupons: list[NewCoupon] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


@dataclass
class Allocator:
    """The budgets, stocks and per-member counts of a batch, loaded and locked by the caller;
    each grant takes from them in order, so a batch never gives more than there is."""

    campaigns: dict[str, Campaign]
    templates: dict[str, CouponTemplate]
    stock_left: dict[str, int | None]  # template → coupons left (None: unlimited)
    held: dict[tuple[str, str], int]  # (member, template) → coupons the member has had
    granted: set[tuple[str, str, str]]  # (campaign, member, key) already granted
    budget_left: dict[str, int | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for code, c in self.campaigns.items():
            if code not in self.budget_left:
                self.budget_left[code] = None if c.budget is None else c.budget - c.issued_count

    def grant(self, request: GrantRequest, now: datetime) -> Grant:
        receipt = (request.campaign_code, request.member_id, request.key)
        if receipt in self.granted:
            return Grant(request, "duplicate")
        self.granted.add(receipt)
        campaign = self.campaigns[request.campaign_code]
        if in_holdout(campaign.code, request.member_id, campaign.holdout_percent):
            return Grant(request, "holdout")
        grant = Grant(request, "not_issued")
        for template_code in campaign.template_codes:
            template = self.templates[template_code]
            reason = self._refusal(campaign, template, request.member_id, now)
            if reason is not None:
                grant.reasons.append(f"{template_code}:{reason}")
                continue
            self._take(campaign.code, template.code, request.member_id)
            valid_from, valid_until = template.validity(now)
            grant.coupons.append(NewCoupon(template.code, valid_from, valid_until))
        if grant.coupons:
            grant.outcome = "issued"
        return grant

    def _refusal(
        self, campaign: Campaign, template: CouponTemplate, member_id: str, now: datetime
    ) -> str | None:
        budget = self.budget_left.get(campaign.code)
        if budget is not None and budget <= 0:
            return "budget_exhausted"
        return self.refusal_for_member(template, member_id, now)

    def refusal_for_member(
        self, template: CouponTemplate, member_id: str, now: datetime
    ) -> str | None:
        stock = self.stock_left.get(template.code)
        if stock is not None and stock <= 0:
            return "out_of_stock"
        if self.held.get((member_id, template.code), 0) >= template.per_member_limit:
            return "member_limit_reached"
        if not template.can_still_be_used(now):
            return "template_window_closed"
        return None

    def _take(self, campaign_code: str | None, template_code: str, member_id: str) -> None:
        if campaign_code is not None and self.budget_left.get(campaign_code) is not None:
            self.budget_left[campaign_code] = self.budget_left[campaign_code] - 1  # type: ignore[operator]
        stock = self.stock_left.get(template_code)
        if stock is not None:
            self.stock_left[template_code] = stock - 1
        self.held[(member_id, template_code)] = self.held.get((member_id, template_code), 0) + 1

    def take_one(self, template_code: str, member_id: str, now: datetime) -> NewCoupon | str:
        """One coupon of a template outside any campaign (an exchange for points); or why not."""
        template = self.templates[template_code]
        reason = self.refusal_for_member(template, member_id, now)
        if reason is not None:
            return reason
        self._take(None, template_code, member_id)
        valid_from, valid_until = template.validity(now)
        return NewCoupon(template_code, valid_from, valid_until)
