"""Lifecycle stages at their boundaries, the next change, buyer weight."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from loyalty_segmenter.domain.lifecycle import (
    StageWindows,
    buyer_weight,
    days_since,
    lifecycle_stage,
    next_stage_change,
)

T0 = datetime(2026, 3, 2, 4, 0, tzinfo=UTC)
D = timedelta(days=1)


def stage_after(days_since_last: int, days_since_first: int | None = None) -> str:
    first = T0 - (days_since_first if days_since_first is not None else days_since_last) * D
    return lifecycle_stage(first, T0 - days_since_last * D, T0)


def test_no_paid_order_is_a_prospect():
    assert lifecycle_stage(None, None, T0) == "prospect"
    assert next_stage_change(None, None, T0) is None


@pytest.mark.parametrize(
    ("days", "stage"),
    [
        (0, "new"),
        (45, "new"),
        (46, "cooling"),  # one order only: new ends straight into cooling
        (90, "cooling"),
        (91, "easy_winback"),
        (180, "easy_winback"),
        (181, "hard_winback"),
        (360, "hard_winback"),
        (361, "lost"),
        (5000, "lost"),
    ],
)
def test_one_order_stage_by_days_since_it(days, stage):
    assert stage_after(days) == stage


@pytest.mark.parametrize(
    ("since_last", "since_first", "stage"),
    [
        (0, 45, "new"),
        (0, 46, "active"),
        (45, 200, "active"),
        (46, 200, "cooling"),
        (90, 200, "cooling"),
        (91, 200, "easy_winback"),
    ],
)
def test_repeat_buyer_stage(since_last, since_first, stage):
    assert stage_after(since_last, since_first) == stage


def test_a_day_is_24_hours_not_a_calendar_date():
    last = T0 - 45 * D
    assert lifecycle_stage(last, last, T0 + D - timedelta(microseconds=1)) == "new"
    assert lifecycle_stage(last, last, T0 + D) == "cooling"


def test_next_change_is_the_first_instant_of_the_next_stage():
    first = last = T0
    moments = []
    at = T0
    while (change := next_stage_change(first, last, at)) is not None:
        assert change > at
        assert lifecycle_stage(first, last, change - timedelta(microseconds=1)) == lifecycle_stage(
            first, last, at
        )
        moments.append((round((change - T0) / D), lifecycle_stage(first, last, change)))
        at = change
    assert moments == [
        (46, "cooling"),
        (91, "easy_winback"),
        (181, "hard_winback"),
        (361, "lost"),
    ]


def test_new_member_with_a_second_order_becomes_active_when_the_first_turns_46_days():
    first, last = T0 - 30 * D, T0 - 2 * D
    change = next_stage_change(first, last, T0)
    assert change == first + 46 * D
    assert lifecycle_stage(first, last, change) == "active"


def test_windows_are_configurable_and_must_grow():
    windows = StageWindows(new=30, cooling=60, easy_winback=120, hard_winback=240)
    assert lifecycle_stage(T0 - 31 * D, T0 - 31 * D, T0, windows) == "cooling"
    with pytest.raises(ValueError):
        StageWindows(new=90, cooling=60)


def test_future_times_count_as_day_zero():
    assert days_since(T0 + timedelta(minutes=3), T0) == 0


@pytest.mark.parametrize(
    ("orders", "weight"), [(0, "none"), (1, "light"), (2, "medium"), (4, "medium"), (5, "heavy")]
)
def test_buyer_weight(orders, weight):
    assert buyer_weight(orders) == weight
