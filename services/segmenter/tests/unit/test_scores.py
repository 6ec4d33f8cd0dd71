"""RFM quintiles, churn risk and its reasons, preference tags, window figures."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st
from loyalty_segmenter.domain.churn import assess_churn
from loyalty_segmenter.domain.profile import (
    OrderFact,
    Profile,
    ProfileRules,
    preference_tags,
    window_figures,
)
from loyalty_segmenter.domain.rfm import quintile_scores

T0 = datetime(2026, 3, 2, 4, 0, tzinfo=UTC)
D = timedelta(days=1)


def test_quintiles_of_ten_distinct_values():
    assert quintile_scores(list(range(10))) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_ties_share_the_lowest_score_of_their_group():
    # six one-order members, two with 2 orders, one with 3, one with 9
    assert quintile_scores([1, 1, 1, 1, 1, 1, 2, 2, 3, 9]) == [1, 1, 1, 1, 1, 1, 4, 4, 5, 5]


def test_single_and_empty():
    assert quintile_scores([]) == []
    assert quintile_scores([42]) == [1]


@given(st.lists(st.integers(min_value=0, max_value=50), min_size=2, max_size=60))
def test_quintiles_are_monotonic_and_in_range(values):
    scores = quintile_scores(values)
    assert all(1 <= s <= 5 for s in scores)
    pairs = sorted(zip(values, scores, strict=True))
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(pairs))
    top = max(values)
    if values.count(top) == 1:
        assert scores[values.index(top)] == 5
    assert scores[values.index(min(values))] == 1


def churn(last_days_ago, first_days_ago, orders, recent=0, earlier=0):
    return assess_churn(
        first_order_at=T0 - first_days_ago * D,
        last_order_at=T0 - last_days_ago * D,
        orders_count=orders,
        recent_spend_minor=recent,
        earlier_spend_minor=earlier,
        as_of=T0,
    )


def test_no_order_no_risk():
    result = assess_churn(
        first_order_at=None,
        last_order_at=None,
        orders_count=0,
        recent_spend_minor=0,
        earlier_spend_minor=0,
        as_of=T0,
    )
    assert result.risk is None and result.next_change_at is None


def test_within_the_usual_gap_is_no_risk():
    # 5 orders over 120 days: a usual gap of 30 days; the last was 20 days ago
    result = churn(20, 140, 5, recent=30000, earlier=0)
    assert result.risk == 0.0
    assert result.inputs["usual_gap_days"] == 30.0
    assert result.reasons == []
    assert result.next_change_at == T0 - 20 * D + 30 * D  # turns overdue on day 30


def test_twice_the_usual_gap_with_falling_volume():
    # usual gap 30 days, 61 days since the last order: level 3 of 4 (>= 1, 1.5, 2 x 30)
    # earlier 275 days: 55000 → 200/day; recent 90 days: 9000 → 100/day: volume halved
    result = churn(61, 181, 5, recent=9000, earlier=55000)
    assert result.inputs["gap_level"] == 3
    assert result.inputs["volume_ratio"] == 0.5
    assert result.risk == 0.67  # 0.7 x 3/4 + 0.3 x (1 - 0.5) = 0.675, rounded in binary
    assert [r["code"] for r in result.reasons] == ["overdue", "volume_drop"]
    assert result.next_change_at == T0 - 61 * D + 90 * D  # 3 x 30 days


def test_single_order_member_uses_the_default_gap():
    result = churn(50, 50, 1)
    assert result.inputs["expected_gap_days"] == 45.0
    assert result.inputs["gap_level"] == 1
    assert "single_order" in [r["code"] for r in result.reasons]


def test_lost_member_is_certain_churn():
    result = churn(361, 400, 2)
    assert result.risk == 1.0
    assert result.reasons[0]["code"] == "lost"
    assert result.next_change_at is None


@given(st.integers(min_value=0, max_value=400), st.integers(min_value=1, max_value=20))
def test_risk_changes_only_at_its_announced_instant(days, orders):
    first_days = days + 10 * orders
    now = churn(days, first_days, orders, recent=100, earlier=1000)
    assert now.risk is not None and 0 <= now.risk <= 1
    if now.next_change_at is not None:
        before = assess_churn(
            first_order_at=T0 - first_days * D,
            last_order_at=T0 - days * D,
            orders_count=orders,
            recent_spend_minor=100,
            earlier_spend_minor=1000,
            as_of=now.next_change_at - timedelta(microseconds=1),
        )
        after = assess_churn(
            first_order_at=T0 - first_days * D,
            last_order_at=T0 - days * D,
            orders_count=orders,
            recent_spend_minor=100,
            earlier_spend_minor=1000,
            as_of=now.next_change_at,
        )
        assert before.risk == now.risk
        assert after.risk is not None and after.risk > now.risk


def test_preference_tags_by_share():
    rules = ProfileRules()
    spend = {"snacks": 5000, "beverages": 3000, "tea": 1000, "toys": 1000}
    assert preference_tags(spend, rules) == ["snacks", "beverages"]
    assert preference_tags({}, rules) == []


def fact(order_id, days_ago, paid, refunded=0, cancelled=False, categories=None):
    return OrderFact(
        order_id=order_id,
        member_id="m1",
        occurred_at=T0 - days_ago * D,
        paid_minor=paid,
        refunded_minor=refunded,
        cancelled=cancelled,
        categories=categories or {},
    )


def test_window_figures():
    facts = [
        fact("a", 400, 1000),  # outside the year
        fact("b", 200, 2000),  # earlier window
        fact("c", 30, 3000, refunded=500),  # recent
        fact("d", 10, 4000, cancelled=True),  # does not count
        fact("e", 5, 5000, refunded=5000),  # fully refunded: does not count
    ]
    figures = window_figures(facts, T0)
    assert figures.orders_count == 3
    assert figures.spend_minor == 1000 + 2000 + 2500
    assert figures.orders_365d == 2
    assert figures.spend_365d_minor == 4500
    assert (figures.recent_spend_minor, figures.earlier_spend_minor) == (2500, 2000)
    assert figures.first_order_at == T0 - 400 * D and figures.last_order_at == T0 - 30 * D
    assert figures.window_due_at == T0 - 30 * D + 90 * D  # c leaves the recent window first


@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=500),  # days ago
            st.integers(min_value=0, max_value=10000),  # paid
            st.integers(min_value=0, max_value=100),  # refunded percent
            st.booleans(),  # cancelled
        ),
        max_size=12,
    )
)
def test_incremental_counters_match_a_rescan(orders):
    """Applying facts one by one gives what recomputing from all facts gives."""
    profile = Profile(member_id="m1")
    facts = []
    for i, (days, paid, pct, cancelled) in enumerate(orders):
        f = fact(f"o{i}", days, paid, categories={"snacks": paid})
        profile.count_order(f, T0, +1)
        changed = OrderFact(**{**f.__dict__})
        changed.refunded_minor = paid * pct // 100
        changed.cancelled = cancelled
        profile.count_order(f, T0, -1)
        profile.count_order(changed, T0, +1)
        facts.append(changed)
    expected = window_figures(facts, T0)
    assert profile.orders_count == expected.orders_count
    assert profile.spend_minor == expected.spend_minor
    assert profile.orders_365d == expected.orders_365d
    assert profile.spend_365d_minor == expected.spend_365d_minor
    assert profile.recent_spend_minor == expected.recent_spend_minor
    assert profile.earlier_spend_minor == expected.earlier_spend_minor
    assert profile.category_spend.get("snacks", 0) == sum(
        f.category_contribution().get("snacks", 0) for f in facts
    )
    if not profile.needs_rescan:
        assert profile.first_order_at == expected.first_order_at
        assert profile.last_order_at == expected.last_order_at
