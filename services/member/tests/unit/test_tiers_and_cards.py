"""Tier ladder and card rules as plain Python: ladder validation, which tier a value earns, the
rolling 365-day window, validity periods and card numbers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from loyalty_member.domain.cards import (
    add_period,
    card_no_well_formed,
    card_status,
    new_batch_card_nos,
    plan_errors,
    renewal_period,
    valid_prefix,
)
from loyalty_member.domain.members import luhn_check_digit
from loyalty_member.domain.tiers import (
    DEFAULT_LADDER,
    InvalidLadder,
    Tier,
    TierLadder,
    change_reason,
    counts_as_order,
    downgrade_to,
    in_window,
    ladder_errors,
    net_spend,
    upgrade_to,
    window_start,
)

AS_OF = datetime(2027, 6, 1, 12, 0, tzinfo=UTC)


def tiers(*specs: tuple[str, int, float]) -> list[Tier]:
    return [Tier(code, code.title(), threshold, mult) for code, threshold, mult in specs]


def locs(errors) -> list[tuple]:
    return [loc for loc, _ in errors]


# ---------------------------------------------------------------------------------------------
# Ladder validation
# ---------------------------------------------------------------------------------------------


def test_the_default_ladder_is_bronze_silver_gold_on_spend():
    assert DEFAULT_LADDER.metric == "spend_365d"
    assert [(t.code, t.threshold, t.points_multiplier) for t in DEFAULT_LADDER.tiers] == [
        ("bronze", 0, 1.0),
        ("silver", 100_000, 1.2),
        ("gold", 500_000, 1.5),
    ]
    assert ladder_errors(DEFAULT_LADDER.metric, DEFAULT_LADDER.tiers) == []


@pytest.mark.parametrize("metric", ["spend_365d", "lifetime_points", "order_count_365d"])
def test_every_metric_is_accepted(metric):
    assert ladder_errors(metric, tiers(("basic", 0, 1.0), ("plus", 5, 1.0))) == []


def test_a_single_tier_ladder_is_valid():
    assert ladder_errors("spend_365d", tiers(("member", 0, 1.0))) == []


@pytest.mark.parametrize(
    ("ladder", "where"),
    [
        ([], ("tiers",)),
        (tiers(("bronze", 1, 1.0)), ("tiers", 0, "threshold")),
        (tiers(("bronze", 0, 1.0), ("silver", 0, 1.2)), ("tiers", 1, "threshold")),
        (
            tiers(("bronze", 0, 1.0), ("silver", 10, 1.2), ("gold", 5, 1.5)),
            ("tiers", 2, "threshold"),
        ),
        (tiers(("bronze", 0, 1.0), ("bronze", 10, 1.2)), ("tiers", 1, "code")),
        (tiers(("bronze", 0, 0.99)), ("tiers", 0, "points_multiplier")),
        (tiers(("bronze", 0, 10.5)), ("tiers", 0, "points_multiplier")),
        (tiers(("bronze", 0, float("nan"))), ("tiers", 0, "points_multiplier")),
        (tiers(("Bronze", 0, 1.0)), ("tiers", 0, "code")),
        (tiers(("has space", 0, 1.0)), ("tiers", 0, "code")),
        (tiers(*[(f"t{i}", i, 1.0) for i in range(21)]), ("tiers",)),
    ],
)
def test_a_broken_ladder_is_refused_with_the_place_of_the_error(ladder, where):
    errors = ladder_errors("spend_365d", ladder)
    assert where in locs(errors), errors
    with pytest.raises(InvalidLadder):
        TierLadder.build("spend_365d", ladder)


def test_an_unknown_metric_is_refused():
    assert ("metric",) in locs(ladder_errors("visits", tiers(("bronze", 0, 1.0))))


def test_a_multiplier_of_exactly_one_is_allowed():
    assert ladder_errors("spend_365d", tiers(("bronze", 0, 1.0), ("silver", 1, 1.0))) == []


# ---------------------------------------------------------------------------------------------
# Which tier a value earns
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "tier"),
    [
        (0, "bronze"),
        (99_999, "bronze"),
        (100_000, "silver"),  # exactly at the threshold qualifies
        (100_001, "silver"),
        (499_999, "silver"),
        (500_000, "gold"),
        (10**12, "gold"),
    ],
)
def test_the_highest_tier_whose_threshold_is_reached(value, tier):
    assert DEFAULT_LADDER.qualified(value).code == tier


def test_upgrades_only_go_up():
    assert upgrade_to(DEFAULT_LADDER, "bronze", 100_000).code == "silver"
    assert upgrade_to(DEFAULT_LADDER, "bronze", 500_000).code == "gold"  # skips silver
    assert upgrade_to(DEFAULT_LADDER, "silver", 100_000) is None  # same tier
    assert upgrade_to(DEFAULT_LADDER, "gold", 0) is None  # never down on an order


def test_downgrades_go_straight_down_and_only_down():
    assert downgrade_to(DEFAULT_LADDER, "gold", 0).code == "bronze"  # skips silver
    assert downgrade_to(DEFAULT_LADDER, "gold", 100_000).code == "silver"
    assert downgrade_to(DEFAULT_LADDER, "gold", 500_000) is None  # still exactly gold
    assert downgrade_to(DEFAULT_LADDER, "silver", 10**9) is None  # never up in review


def test_a_tier_code_that_left_the_ladder_is_replaced_either_way():
    assert upgrade_to(DEFAULT_LADDER, "platinum", 0).code == "bronze"
    assert downgrade_to(DEFAULT_LADDER, "platinum", 500_000).code == "gold"
    assert change_reason(DEFAULT_LADDER, "platinum", "gold") == "manual"


def test_change_reasons():
    assert change_reason(DEFAULT_LADDER, "bronze", "gold") == "upgrade"
    assert change_reason(DEFAULT_LADDER, "gold", "silver") == "downgrade"


def test_next_tier():
    assert DEFAULT_LADDER.next_above("bronze").code == "silver"
    assert DEFAULT_LADDER.next_above("gold") is None
    assert DEFAULT_LADDER.next_above("unknown") is None


def test_tiers_round_trip_through_json():
    ladder = TierLadder.build(
        "order_count_365d", [Tier.from_json(t) for t in DEFAULT_LADDER.to_json()]
    )
    assert ladder.tiers == DEFAULT_LADDER.tiers


# ---------------------------------------------------------------------------------------------
# The rolling 365-day window and what an order adds
# ---------------------------------------------------------------------------------------------


def test_the_window_is_the_365_days_up_to_and_including_as_of():
    assert window_start(AS_OF) == AS_OF - timedelta(days=365)
    assert in_window(AS_OF, AS_OF)  # paid right now counts
    assert not in_window(AS_OF + timedelta(microseconds=1), AS_OF)  # later than as_of
    assert in_window(AS_OF - timedelta(days=365) + timedelta(microseconds=1), AS_OF)
    assert not in_window(AS_OF - timedelta(days=365), AS_OF)  # exactly 365 days ago: dropped
    assert not in_window(AS_OF - timedelta(days=400), AS_OF)


def test_net_spend_and_order_counting():
    assert net_spend(10_000, 0, "paid") == 10_000
    assert net_spend(10_000, 2_500, "delivered") == 7_500
    assert net_spend(10_000, 12_000, "paid") == 0  # never negative
    assert net_spend(10_000, 0, "cancelled") == 0
    assert counts_as_order(10_000, 9_999, "paid")
    assert not counts_as_order(10_000, 10_000, "paid")  # refunded in full
    assert not counts_as_order(10_000, 0, "cancelled")
    assert counts_as_order(0, 0, "paid")  # paid entirely with a coupon still is an order


# ---------------------------------------------------------------------------------------------
# Card plans, validity periods, card numbers
# ---------------------------------------------------------------------------------------------


def test_paid_plans_need_a_price_and_a_period():
    assert plan_errors(code="annual", kind="paid", price_minor=19900, period="year") == []
    assert locs(plan_errors(code="annual", kind="paid", price_minor=None, period=None)) == [
        ("price_minor",),
        ("period",),
    ]
    assert locs(plan_errors(code="staff", kind="internal", price_minor=100, period="month")) == [
        ("price_minor",),
        ("period",),
    ]
    assert ("kind",) in locs(plan_errors(code="x", kind="tier", price_minor=None, period=None))
    assert ("code",) in locs(
        plan_errors(code="tier-vip", kind="free", price_minor=None, period=None)
    )


def test_periods_are_calendar_months_and_years_on_the_members_clock():
    # 2027-01-31 10:00 in Shanghai + 1 month = 2027-02-28 10:00 (the month is shorter)
    start = datetime(2027, 1, 31, 2, 0, tzinfo=UTC)
    assert add_period(start, "month") == datetime(2027, 2, 28, 2, 0, tzinfo=UTC)
    # 23:30 UTC on 31 January is already 1 February in Shanghai: 1 March there
    late = datetime(2027, 1, 31, 23, 30, tzinfo=UTC)
    assert add_period(late, "month") == datetime(2027, 2, 28, 23, 30, tzinfo=UTC)
    assert add_period(late, "month", "UTC") == datetime(2027, 2, 28, 23, 30, tzinfo=UTC)
    leap = datetime(2028, 2, 29, 4, 0, tzinfo=UTC)
    assert add_period(leap, "year") == datetime(2029, 2, 28, 4, 0, tzinfo=UTC)
    assert add_period(datetime(2027, 12, 15, tzinfo=UTC), "month", "UTC") == datetime(
        2028, 1, 15, tzinfo=UTC
    )


def test_renewal_extends_from_the_later_of_now_and_the_expiry():
    now = datetime(2027, 3, 1, tzinfo=UTC)
    # a fresh card: from now
    assert renewal_period(now, None, "month", "UTC") == (now, datetime(2027, 4, 1, tzinfo=UTC))
    # renewed early: nothing is lost, the new month starts at the old expiry
    expiry = datetime(2027, 3, 20, tzinfo=UTC)
    assert renewal_period(now, expiry, "month", "UTC") == (
        expiry,
        datetime(2027, 4, 20, tzinfo=UTC),
    )
    # renewed after it lapsed: from now
    lapsed = datetime(2027, 2, 1, tzinfo=UTC)
    assert renewal_period(now, lapsed, "year", "UTC") == (now, datetime(2028, 3, 1, tzinfo=UTC))


def test_batch_numbers_are_16_digits_with_the_prefix_and_a_luhn_digit():
    numbers = new_batch_card_nos("62", 500)
    assert len(numbers) == len(set(numbers)) == 500
    for number in numbers:
        assert len(number) == 16 and number.isdigit() and number.startswith("62")
        assert luhn_check_digit(number[:-1]) == number[-1]
        assert card_no_well_formed(number)


def test_malformed_card_numbers():
    good = new_batch_card_nos("12345678", 1)[0]
    wrong_digit = good[:-1] + str((int(good[-1]) + 1) % 10)
    assert card_no_well_formed(good)
    assert not card_no_well_formed(wrong_digit)
    assert not card_no_well_formed(good[:-1])  # 15 digits
    assert not card_no_well_formed("x" + good[1:])
    assert not card_no_well_formed("\u0661" * 16)  # non-ASCII digits


@pytest.mark.parametrize(
    ("prefix", "ok"),
    [
        ("8", True),
        ("12345678", True),
        ("", False),
        ("123456789", False),
        ("12a", False),
        ("\u0663", False),
    ],
)
def test_batch_prefixes(prefix, ok):
    assert valid_prefix(prefix) is ok


def test_card_status():
    now = datetime(2027, 3, 1, tzinfo=UTC)
    assert card_status(None, None, now) == "unbound"
    assert card_status("m", None, now) == "active"
    assert card_status("m", now + timedelta(seconds=1), now) == "active"
    assert card_status("m", now, now) == "expired"
