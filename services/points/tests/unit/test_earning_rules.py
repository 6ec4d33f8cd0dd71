"""The default earning rules of contract §5, computed in memory with a fixed clock."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loyalty_points.domain.earning import Card, Earnings, Member
from loyalty_points.domain.ledger import Account, Source
from loyalty_points.domain.rules import (
    DailyCapParams,
    MemberDayParams,
    Rule,
    Rulebook,
    default_rules,
    parse_params,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def engine(**overrides: Rule) -> Earnings:
    rules = default_rules()
    rules.update(overrides)
    counter = itertools.count(1)
    return Earnings(Rulebook(rules), lambda: f"id{next(counter):05d}", NOW)


def pay(
    earnings: Earnings,
    account: Account,
    member: Member,
    paid_minor: int,
    *,
    at: datetime = NOW,
    tier: str | None = "bronze",
    tier_multiplier: float | None = None,
    order_id: str = "o1",
):
    return earnings.order_paid(
        account,
        member,
        source=Source(event_id="e", order_id=order_id),
        order_id=order_id,
        paid_minor=paid_minor,
        occurred_at=at,
        tier=tier,
        tier_multiplier=tier_multiplier,
    )


def test_purchase_earns_one_point_per_full_100_minor_pending_for_7_days():
    earnings, account, member = engine(), Account("m"), Member("m")
    order = pay(earnings, account, member, 12345)
    assert order.awarded == 123
    assert (account.available, account.pending) == (0, 123)
    lot = account.lots[order.lot_id]
    assert lot.available_at == NOW + timedelta(days=7)
    assert lot.expires_at == NOW + timedelta(days=365)


@pytest.mark.parametrize(("tier", "expected"), [("bronze", 100), ("silver", 120), ("gold", 150)])
def test_the_tier_multiplier_applies(tier, expected):
    earnings, account, member = engine(), Account("m"), Member("m")
    assert pay(earnings, account, member, 10000, tier=tier).awarded == expected


def test_the_multiplier_carried_by_the_order_wins_and_rounds_down():
    earnings, account, member = engine(), Account("m"), Member("m")
    # 3 x 1.2 = 3.6 → 3, computed exactly (no float 3.5999…)
    assert pay(earnings, account, member, 300, tier="silver").awarded == 3
    assert (
        pay(
            earnings, account, member, 10000, tier="vip", tier_multiplier=1.75, order_id="o2"
        ).awarded
        == 175
    )


def test_member_day_doubles_points_on_the_20th_in_the_members_time_zone():
    earnings = engine()
    # 2026-11-19 17:00 UTC is already the 20th in Shanghai, still the 19th in New York.
    at = datetime(2026, 11, 19, 17, 0, tzinfo=UTC)
    shanghai, new_york = Member("a"), Member("b", timezone="America/New_York")
    assert pay(earnings, Account("a"), shanghai, 10000, at=at).awarded == 200
    assert pay(earnings, Account("b"), new_york, 10000, at=at).awarded == 100


def test_card_benefit_multiplier_uses_the_best_valid_card():
    earnings, account = engine(), Account("m")
    member = Member(
        "m",
        cards={
            "free": Card(1.0, None),
            "paid": Card(1.1, NOW + timedelta(1)),
            "expired": Card(3.0, NOW - timedelta(1)),
        },
    )
    assert pay(earnings, account, member, 10000).awarded == 110


def test_the_daily_cap_records_the_excess():
    earnings = engine(daily_cap=Rule("daily_cap", True, DailyCapParams(points=150)))
    account, member = Account("m"), Member("m")
    first = pay(earnings, account, member, 10000, order_id="o1")
    second = pay(earnings, account, member, 10000, order_id="o2")
    assert (first.awarded, second.awarded) == (100, 50)
    capped = [e.capped_points for e in account.entries]
    assert capped == [0, 50]
    # The next local day starts a new count.
    third = pay(earnings, account, member, 10000, at=NOW + timedelta(days=1), order_id="o3")
    assert third.awarded == 100


def test_signup_is_available_at_once_and_not_capped():
    earnings = engine(daily_cap=Rule("daily_cap", True, DailyCapParams(points=0)))
    account, member = Account("m"), Member("m")
    entry = earnings.signup(account, member, source=Source(), registered_at=NOW)
    assert entry is not None and entry.points == 100
    assert (account.available, account.pending) == (100, 0)


def test_check_in_earns_5_and_every_7th_day_20_more():
    earnings, account, member = engine(), Account("m"), Member("m")
    for day in range(1, 15):
        earnings.checkin(
            account, member, source=Source(), streak_days=day, occurred_at=NOW + timedelta(days=day)
        )
    assert account.available == 14 * 5 + 2 * 20
    assert [e.rule for e in account.entries].count("checkin_streak") == 2


def test_referral_points_wait_in_pending():
    earnings, account, member = engine(), Account("m"), Member("m")
    earnings.referral(account, member, source=Source(), occurred_at=NOW)
    assert (account.available, account.pending) == (0, 200)


def test_a_disabled_rule_earns_nothing():
    signup = default_rules()["signup"]
    earnings = engine(signup=Rule("signup", False, signup.params))
    assert earnings.signup(Account("m"), Member("m"), source=Source(), registered_at=NOW) is None


def test_rule_parameters_are_validated():
    with pytest.raises(ValueError):
        parse_params("member_day", {"day_of_month": 32})
    with pytest.raises(ValueError):
        parse_params("purchase", {"points": 1, "unknown": 2})
    assert parse_params("member_day", {"multiplier": 3}) == MemberDayParams(multiplier=3)


refund_plans = st.lists(st.integers(min_value=1, max_value=5000), max_size=8)


@settings(max_examples=200, deadline=None)
@given(
    paid=st.integers(min_value=0, max_value=200000),
    refunds=refund_plans,
    tier=st.sampled_from(["bronze", "silver", "gold"]),
)
def test_partial_refunds_add_up_to_one_refund_of_the_same_total(paid, refunds, tier):
    earnings = engine()
    stepwise, member = Account("a"), Member("a")
    order = pay(earnings, stepwise, member, paid, tier=tier)
    refunded = 0
    for amount in refunds:
        if refunded + amount > paid:
            break
        refunded += amount
        order.refunded_minor = refunded
        earnings.settle_order(stepwise, order, source=Source(), reason="refund")

    at_once, member_b = Account("b"), Member("b")
    single = pay(earnings, at_once, member_b, paid, tier=tier, order_id="o2")
    single.refunded_minor = refunded
    earnings.settle_order(at_once, single, source=Source(), reason="refund")

    assert order.current == single.current == single.terms.points_for(paid - refunded)
    assert stepwise.pending == at_once.pending
    assert (
        order.multiplier
        == single.multiplier
        == Decimal({"bronze": "1.0", "silver": "1.2", "gold": "1.5"}[tier])
    )


def test_cancelling_an_order_takes_all_its_points_back():
    earnings, account, member = engine(), Account("m"), Member("m")
    order = pay(earnings, account, member, 10000)
    order.cancelled = True
    earnings.settle_order(account, order, source=Source(), reason="cancelled")
    assert (account.available, account.pending, order.current) == (0, 0, 0)
