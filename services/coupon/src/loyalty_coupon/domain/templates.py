"""Coupon templates: what a coupon is worth, when it is valid, and what it applies to."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

CouponKind = Literal["amount_off", "percent_off", "free_shipping", "gift"]
KINDS: tuple[str, ...] = ("amount_off", "percent_off", "free_shipping", "gift")

# Readable codes: no 0/O, 1/I/L, so a cashier can type what a member reads out.
CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"


def new_coupon_code() -> str:
    """`CPN-XXXX-XXXX`: 31^8 (about 8.5e11) codes; the database's key catches the rare clash."""
    chars = "".join(secrets.choice(CODE_ALPHABET) for _ in range(8))
    return f"CPN-{chars[:4]}-{chars[4:]}"


@dataclass(frozen=True)
class CouponTemplate:
    code: str
    name: str
    kind: str
    value: int
    min_spend_minor: int = 0
    max_discount_minor: int | None = None
    gift_sku: str | None = None
    categories: tuple[str, ...] = ()
    valid_days: int | None = None
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    per_member_limit: int = 1
    stock: int | None = None
    points_cost: int | None = None
    currency: str = "CNY"

    def validity(self, issued_at: datetime) -> tuple[datetime, datetime]:
        """(valid_from, valid_until) of a coupon issued at `issued_at`."""
        if self.valid_days is not None:
            return issued_at, issued_at + timedelta(days=self.valid_days)
        assert self.ends_at is not None
        start = self.starts_at or issued_at
        return start, self.ends_at

    def can_still_be_used(self, issued_at: datetime) -> bool:
        """A fixed window that has closed would make every new coupon born expired."""
        _, until = self.validity(issued_at)
        return until > issued_at


@dataclass(frozen=True)
class FieldProblem:
    field: str
    msg: str


def template_problems(t: CouponTemplate) -> list[FieldProblem]:
    """Everything wrong with a template, by field; empty when it is valid."""
    problems: list[FieldProblem] = []

    def bad(name: str, msg: str) -> None:
        problems.append(FieldProblem(name, msg))

    if t.kind not in KINDS:
        bad("kind", f"must be one of {', '.join(KINDS)}")
    if t.value < 0:
        bad("value", "must not be negative")
    elif t.kind == "amount_off" and t.value < 1:
        bad("value", "an amount_off coupon takes at least 1 minor unit off")
    elif t.kind == "percent_off" and not 1 <= t.value <= 100:
        bad("value", "a percent_off coupon takes a whole percent from 1 to 100")
    elif t.kind in ("free_shipping", "gift") and t.value != 0:
        bad("value", f"a {t.kind} coupon has no value (0)")
    if t.min_spend_minor < 0:
        bad("min_spend_minor", "must not be negative")
    if t.max_discount_minor is not None:
        if t.max_discount_minor < 1:
            bad("max_discount_minor", "must be at least 1")
        elif t.kind != "percent_off":
            bad("max_discount_minor", "only a percent_off coupon has a cap")
    if t.kind == "gift" and not t.gift_sku:
        bad("gift_sku", "a gift coupon names the gift's sku")
    if t.kind != "gift" and t.gift_sku:
        bad("gift_sku", "only a gift coupon names a gift")
    if t.valid_days is not None:
        if t.valid_days < 1:
            bad("valid_days", "must be at least 1")
        if t.starts_at is not None or t.ends_at is not None:
            bad("valid_days", "give valid_days or a starts_at/ends_at window, not both")
    elif t.ends_at is None:
        bad("ends_at", "give valid_days, or a window ending at ends_at")
    elif t.starts_at is not None and t.ends_at <= t.starts_at:
        bad("ends_at", "the window must end after it starts")
    if t.per_member_limit < 1:
        bad("per_member_limit", "must be at least 1")
    if t.stock is not None and t.stock < 0:
        bad("stock", "must not be negative")
    if t.points_cost is not None and t.points_cost < 1:
        bad("points_cost", "must be at least 1 point")
    if any(not c.strip() for c in t.categories):
        bad("categories", "category names must not be blank")
    return problems


# ---------------------------------------------------------------------------------------------
# Discounts
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CartLine:
    sku: str
    category: str
    quantity: int
    unit_price_minor: int

    @property
    def amount_minor(self) -> int:
        return self.quantity * self.unit_price_minor


@dataclass(frozen=True)
class Cart:
    total_minor: int
    lines: tuple[CartLine, ...] = ()


@dataclass(frozen=True)
class CouponState:
    """What the validation needs to know about one issued coupon."""

    coupon_code: str
    member_id: str
    status: str  # issued | redeemed | expired
    valid_from: datetime
    valid_until: datetime


REASONS = (
    "not_found",
    "not_owned",
    "already_redeemed",
    "expired",
    "not_yet_valid",
    "below_min_spend",
    "wrong_category",
)


@dataclass(frozen=True)
class Verdict:
    valid: bool
    discount_minor: int = 0
    reason: str | None = None
    detail: str | None = None
    eligible_minor: int = 0
    extra: dict[str, str] = field(default_factory=dict)


def eligible_amount(template: CouponTemplate, cart: Cart) -> int | None:
    """The part of the cart the coupon applies to; None when no line is in its categories."""
    if not template.categories:
        return cart.total_minor
    wanted = set(template.categories)
    amount = sum(line.amount_minor for line in cart.lines if line.category in wanted)
    if amount == 0:
        return None
    return min(amount, cart.total_minor)  # total_minor is authoritative (discounts, shipping)


def discount_for(template: CouponTemplate, eligible: int) -> int:
    if template.kind == "amount_off":
        return min(template.value, eligible)
    if template.kind == "percent_off":
        discount = eligible * template.value // 100  # rounds in the merchant's favour
        if template.max_discount_minor is not None:
            discount = min(discount, template.max_discount_minor)
        return discount
    return 0  # free shipping and gifts are not money off the cart


def judge(
    coupon: CouponState | None,
    template: CouponTemplate | None,
    *,
    member_id: str,
    cart: Cart,
    now: datetime,
) -> Verdict:
    """Whether a coupon applies to a member's cart now, and what it takes off; or why not.
    The reasons are checked in the order a cashier would want to hear them."""
    if coupon is None or template is None:
        return Verdict(False, reason="not_found", detail="no such coupon")
    if coupon.member_id != member_id:
        return Verdict(False, reason="not_owned", detail="the coupon belongs to another member")
    if coupon.status == "redeemed":
        return Verdict(False, reason="already_redeemed", detail="the coupon was used already")
    if coupon.status == "expired" or now >= coupon.valid_until:
        return Verdict(
            False, reason="expired", detail=f"valid until {coupon.valid_until.isoformat()}"
        )
    if now < coupon.valid_from:
        return Verdict(
            False, reason="not_yet_valid", detail=f"valid from {coupon.valid_from.isoformat()}"
        )
    eligible = eligible_amount(template, cart)
    if eligible is None:
        return Verdict(
            False,
            reason="wrong_category",
            detail="no line of the cart is in " + ", ".join(template.categories),
        )
    if eligible < template.min_spend_minor:
        return Verdict(
            False,
            reason="below_min_spend",
            detail=f"needs a spend of {template.min_spend_minor}, the cart has {eligible}",
            eligible_minor=eligible,
        )
    return Verdict(True, discount_minor=discount_for(template, eligible), eligible_minor=eligible)
