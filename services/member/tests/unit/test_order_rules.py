"""Order rules: amounts, currency, business times, status transitions, refund limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from loyalty_member.domain import orders as rules

NOW = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
STATUSES = ["placed", "paid", "shipped", "delivered", "cancelled"]
ALLOWED = {
    ("placed", "paid"),
    ("placed", "cancelled"),
    ("paid", "shipped"),
    ("paid", "delivered"),
    ("paid", "cancelled"),
    ("shipped", "delivered"),
    ("shipped", "cancelled"),
}


# --- amounts and currency ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "paid"),
    [(0, 0), (100, 0), (100, 100), (5170, 4170), (rules.MAX_AMOUNT_MINOR, 1)],
)
def test_amounts_that_are_fine(total, paid):
    rules.check_amounts(total, paid)


@pytest.mark.parametrize(
    ("total", "paid", "words"),
    [
        (-1, 0, "total_minor must not be negative"),
        (100, -1, "paid_minor must not be negative"),
        (100, 101, "exceeds total_minor"),
        (0, 1, "exceeds total_minor"),
        (rules.MAX_AMOUNT_MINOR + 1, 0, "at most"),
    ],
)
def test_amounts_that_are_refused(total, paid, words):
    with pytest.raises(rules.InvalidAmounts, match=words) as caught:
        rules.check_amounts(total, paid)
    assert caught.value.code == "validation_error"


def test_only_cny_is_supported():
    assert rules.check_currency("CNY") == "CNY"
    for other in ["USD", "cny", "", "RMB"]:
        with pytest.raises(rules.UnsupportedCurrency, match="not supported"):
            rules.check_currency(other)


# --- business times ----------------------------------------------------------------------


def test_no_business_time_means_now():
    assert rules.business_time(None, NOW) == NOW


@pytest.mark.parametrize(
    "occurred_at",
    [
        NOW,
        NOW - timedelta(days=400),  # an offline POS imports its backlog
        NOW + timedelta(minutes=5),  # clock skew is tolerated up to five minutes
        (NOW + timedelta(minutes=4)).astimezone(timezone(timedelta(hours=8))),
    ],
)
def test_past_and_nearly_now_business_times_are_kept(occurred_at):
    assert rules.business_time(occurred_at, NOW) == occurred_at


@pytest.mark.parametrize(
    "occurred_at",
    [NOW + timedelta(minutes=5, seconds=1), NOW + timedelta(days=1)],
)
def test_more_than_five_minutes_ahead_is_refused(occurred_at):
    with pytest.raises(rules.InvalidBusinessTime, match="in the future"):
        rules.business_time(occurred_at, NOW)


def test_a_business_time_needs_an_offset():
    with pytest.raises(rules.InvalidBusinessTime, match="offset"):
        rules.business_time(datetime(2026, 11, 24, 10, 0), NOW)


# --- status transitions ------------------------------------------------------------------


@pytest.mark.parametrize("current", STATUSES)
@pytest.mark.parametrize("target", STATUSES)
def test_status_transitions(current, target):
    if current == target:
        assert rules.status_change(current, target) is False  # repeated notification: no-op
    elif (current, target) in ALLOWED:
        assert rules.status_change(current, target) is True
    else:
        with pytest.raises(rules.InvalidStatusTransition) as caught:
            rules.status_change(current, target)
        assert caught.value.code == "invalid_status_transition"
        assert caught.value.current == current
        assert caught.value.allowed == sorted(t for c, t in ALLOWED if c == current)


def test_a_delivered_order_is_refunded_not_cancelled():
    with pytest.raises(rules.InvalidStatusTransition, match="final"):
        rules.status_change("delivered", "cancelled")


def test_an_unpaid_order_had_nothing_paid():
    assert rules.paid_before("placed", 4170) == 0
    for status in ["paid", "shipped"]:
        assert rules.paid_before(status, 4170) == 4170


# --- refunds -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", sorted(rules.REFUNDABLE))
def test_refunds_add_up_to_at_most_what_was_paid(status):
    total = rules.refunded_total_after(status, paid_minor=1000, refunded_minor=0, amount_minor=300)
    assert total == 300
    total = rules.refunded_total_after(
        status, paid_minor=1000, refunded_minor=total, amount_minor=700
    )
    assert total == 1000
    with pytest.raises(rules.RefundExceedsPaid) as caught:
        rules.refunded_total_after(status, paid_minor=1000, refunded_minor=total, amount_minor=1)
    assert caught.value.code == "refund_exceeds_paid"
    assert caught.value.refundable_minor == 0


def test_a_refund_larger_than_what_is_left_is_refused_whole():
    with pytest.raises(rules.RefundExceedsPaid, match="refundable 400"):
        rules.refunded_total_after("paid", paid_minor=1000, refunded_minor=600, amount_minor=401)


def test_a_fully_discounted_order_has_nothing_to_refund():
    with pytest.raises(rules.RefundExceedsPaid):
        rules.refunded_total_after("paid", paid_minor=0, refunded_minor=0, amount_minor=1)


@pytest.mark.parametrize("amount", [0, -5])
def test_a_refund_is_of_something(amount):
    with pytest.raises(rules.InvalidAmounts, match="greater than 0"):
        rules.refunded_total_after("paid", paid_minor=1000, refunded_minor=0, amount_minor=amount)


@pytest.mark.parametrize(("status", "why"), [("placed", "never paid"), ("cancelled", "reversed")])
def test_unpaid_and_cancelled_orders_are_not_refundable(status, why):
    with pytest.raises(rules.OrderNotRefundable, match=why) as caught:
        rules.refunded_total_after(status, paid_minor=1000, refunded_minor=0, amount_minor=1)
    assert caught.value.code == "order_not_refundable"
