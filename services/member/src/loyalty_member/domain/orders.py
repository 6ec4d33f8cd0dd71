"""Order rules as plain Python: amounts, business times, status transitions, refund limits."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Final, Literal

from .business_time import (
    MAX_CLOCK_SKEW,
    BusinessTimeInFuture,
    BusinessTimeOutOfRange,
    BusinessTimeWithoutOffset,
    check_business_time,
)

OrderStatus = Literal["placed", "paid", "shipped", "delivered", "cancelled"]

PLACED: Final = "placed"
PAID: Final = "paid"
SHIPPED: Final = "shipped"
DELIVERED: Final = "delivered"
CANCELLED: Final = "cancelled"

SUPPORTED_CURRENCIES: Final = frozenset({"CNY"})
# A POS clock may run a little fast; beyond this a business time is a mistake, not skew.
# Far above any real order (10 billion yuan) and far below where bigint sums could overflow.
MAX_AMOUNT_MINOR: Final = 10**12

# Which status may follow which. A paid or shipped order may still be cancelled (its points are
# reversed like a full refund); a delivered order is refunded, not cancelled.
TRANSITIONS: Final[Mapping[str, frozenset[str]]] = {
    PLACED: frozenset({PAID, CANCELLED}),
    PAID: frozenset({SHIPPED, DELIVERED, CANCELLED}),
    SHIPPED: frozenset({DELIVERED, CANCELLED}),
    DELIVERED: frozenset(),
    CANCELLED: frozenset(),
}
# Statuses in which the customer has paid and nothing cancelled the order: refunds allowed.
REFUNDABLE: Final = frozenset({PAID, SHIPPED, DELIVERED})


class OrderRuleViolation(ValueError):
    """An order rule refused a request; `code` is the problem code clients switch on."""

    code = "validation_error"


class InvalidAmounts(OrderRuleViolation):
    pass


class UnsupportedCurrency(OrderRuleViolation):
    pass


class InvalidBusinessTime(OrderRuleViolation):
    pass


class InvalidStatusTransition(OrderRuleViolation):
    code = "invalid_status_transition"

    def __init__(self, current: str, target: str) -> None:
        allowed = sorted(TRANSITIONS.get(current, frozenset()))
        super().__init__(
            f"an order that is {current} cannot become {target}"
            + (f"; it may become {', '.join(allowed)}" if allowed else "; it is final")
        )
        self.current = current
        self.target = target
        self.allowed = allowed


class OrderNotRefundable(OrderRuleViolation):
    code = "order_not_refundable"


class RefundExceedsPaid(OrderRuleViolation):
    code = "refund_exceeds_paid"

    def __init__(self, *, paid_minor: int, refunded_minor: int, amount_minor: int) -> None:
        refundable = max(paid_minor - refunded_minor, 0)
        super().__init__(
            f"a refund of {amount_minor} exceeds what is left to refund: paid {paid_minor}, "
            f"refunded {refunded_minor}, refundable {refundable}"
        )
        self.paid_minor = paid_minor
        self.refunded_minor = refunded_minor
        self.refundable_minor = refundable


def check_amounts(total_minor: int, paid_minor: int) -> None:
    """Amounts are whole minor units, not negative, and nobody pays more than the total.
    `total_minor` is authoritative: it need not equal the sum of the lines (discounts,
    shipping), and a paid order may pay 0 (fully discounted)."""
    for name, value in (("total_minor", total_minor), ("paid_minor", paid_minor)):
        if value < 0:
            raise InvalidAmounts(f"{name} must not be negative")
        if value > MAX_AMOUNT_MINOR:
            raise InvalidAmounts(f"{name} must be at most {MAX_AMOUNT_MINOR}")
    if paid_minor > total_minor:
        raise InvalidAmounts(f"paid_minor ({paid_minor}) exceeds total_minor ({total_minor})")


def check_currency(currency: str) -> str:
    if currency not in SUPPORTED_CURRENCIES:
        raise UnsupportedCurrency(
            f"currency '{currency}' is not supported; use {', '.join(sorted(SUPPORTED_CURRENCIES))}"
        )
    return currency


def business_time(occurred_at: datetime | None, now: datetime) -> datetime:
    """When a fact happened: the caller's time (any past, at most MAX_CLOCK_SKEW ahead of `now`),
    or `now` when the caller gave none."""
    if occurred_at is None:
        return now
    try:
        check_business_time(occurred_at, now)
    except BusinessTimeWithoutOffset as exc:
        raise InvalidBusinessTime("occurred_at must carry a UTC offset (RFC 3339)") from exc
    except BusinessTimeInFuture as exc:
        raise InvalidBusinessTime(
            f"occurred_at lies more than {int(MAX_CLOCK_SKEW.total_seconds() // 60)} minutes "
            "in the future"
        ) from exc
    except BusinessTimeOutOfRange as exc:
        raise InvalidBusinessTime("occurred_at lies before 1970") from exc
    return occurred_at


def status_change(current: str, target: str) -> bool:
    """True: record the change; False: the order is in `target` already (a repeated
    notification, nothing to do). Raises InvalidStatusTransition for any other move."""
    if current == target:
        return False
    if target not in TRANSITIONS.get(current, frozenset()):
        raise InvalidStatusTransition(current, target)
    return True


def paid_before(status: str, paid_minor: int) -> int:
    """What the customer had paid on an order in `status` (nothing while it is only placed)."""
    return 0 if status == PLACED else paid_minor


def refunded_total_after(
    status: str, *, paid_minor: int, refunded_minor: int, amount_minor: int
) -> int:
    """The order's refunded total once a refund of `amount_minor` is taken; refunds never add
    up to more than was paid."""
    if amount_minor <= 0:
        raise InvalidAmounts("amount_minor must be greater than 0")
    if status not in REFUNDABLE:
        raise OrderNotRefundable(
            f"an order that is {status} cannot be refunded; "
            + ("it was never paid" if status == PLACED else "cancelling reversed it already")
        )
    if refunded_minor + amount_minor > paid_minor:
        raise RefundExceedsPaid(
            paid_minor=paid_minor, refunded_minor=refunded_minor, amount_minor=amount_minor
        )
    return refunded_minor + amount_minor
