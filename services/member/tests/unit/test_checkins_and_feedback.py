"""Check-in days and streaks across time zones, and the feedback rules (no database)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from loyalty_member.domain.checkins import (
    BusinessTimeInFuture,
    business_time,
    current_streak,
    local_day,
    run_ending,
    streak_for,
)
from loyalty_member.domain.feedback import (
    InvalidStatusTransition,
    check_transition,
    is_overdue,
    is_working_day,
    next_statuses,
    recommend_level,
    response_deadline,
)

SHANGHAI = "Asia/Shanghai"
NEW_YORK = "America/New_York"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


class Calendar:
    """What the service does, without a database: record check-ins, one per local day."""

    def __init__(self) -> None:
        self.days: dict[date, int] = {}

    def check_in(self, at: datetime, timezone: str = SHANGHAI) -> int:
        day = local_day(at, timezone)
        assert day not in self.days, f"{day} has a check-in already"
        self.days[day] = streak_for(day, self.days)
        return self.days[day]


# ---------------------------------------------------------------------------------------------
# Local days
# ---------------------------------------------------------------------------------------------


def test_utc_afternoon_is_the_next_day_in_shanghai():
    assert local_day(utc(2026, 11, 30, 15, 59), SHANGHAI) == date(2026, 11, 30)
    assert local_day(utc(2026, 11, 30, 16, 0), SHANGHAI) == date(2026, 12, 1)
    assert local_day(utc(2026, 11, 30, 16, 30), SHANGHAI) == date(2026, 12, 1)
    assert local_day(utc(2026, 11, 30, 16, 30), "UTC") == date(2026, 11, 30)
    assert local_day(utc(2026, 12, 1, 3, 0), "America/Los_Angeles") == date(2026, 11, 30)


def test_the_default_timezone_is_shanghai():
    assert local_day(utc(2026, 11, 30, 16, 30)) == date(2026, 12, 1)


def test_two_check_ins_16_hours_apart_in_utc_can_be_consecutive_days_in_shanghai():
    calendar = Calendar()
    assert calendar.check_in(utc(2026, 11, 30, 1, 0)) == 1  # 09:00 Nov 30 in Shanghai
    assert calendar.check_in(utc(2026, 11, 30, 16, 30)) == 2  # 00:30 Dec 1 in Shanghai


def test_same_utc_day_but_another_local_day_is_not_a_duplicate():
    calendar = Calendar()
    calendar.check_in(utc(2026, 11, 30, 15, 0))
    calendar.check_in(utc(2026, 11, 30, 17, 0))
    assert sorted(calendar.days) == [date(2026, 11, 30), date(2026, 12, 1)]


# ---------------------------------------------------------------------------------------------
# Streaks
# ---------------------------------------------------------------------------------------------


def test_consecutive_days_grow_the_streak_and_a_missed_day_resets_it():
    calendar = Calendar()
    streaks = [calendar.check_in(utc(2026, 11, d, 2)) for d in (1, 2, 3, 4, 5, 6, 7)]
    assert streaks == [1, 2, 3, 4, 5, 6, 7]
    assert calendar.check_in(utc(2026, 11, 9, 2)) == 1  # the 8th was missed
    assert calendar.check_in(utc(2026, 11, 10, 2)) == 2


def test_streaks_run_across_month_and_year_ends():
    calendar = Calendar()
    assert calendar.check_in(utc(2026, 11, 30, 2)) == 1
    assert calendar.check_in(utc(2026, 12, 1, 2)) == 2
    calendar = Calendar()
    assert calendar.check_in(utc(2026, 12, 31, 2)) == 1
    assert calendar.check_in(utc(2027, 1, 1, 2)) == 2
    calendar = Calendar()
    assert calendar.check_in(utc(2027, 2, 28, 2)) == 1
    assert calendar.check_in(utc(2027, 3, 1, 2)) == 2  # 2027 has no Feb 29


def test_streaks_run_across_a_leap_day_and_miss_it_when_it_is_skipped():
    calendar = Calendar()
    days = [calendar.check_in(utc(2028, 2, 28, 2)), calendar.check_in(utc(2028, 2, 29, 2))]
    assert [*days, calendar.check_in(utc(2028, 3, 1, 2))] == [1, 2, 3]
    calendar = Calendar()
    calendar.check_in(utc(2028, 2, 28, 2))
    assert calendar.check_in(utc(2028, 3, 1, 2)) == 1  # Feb 29 was missed


def test_new_york_spring_forward_day_of_23_hours_keeps_the_streak():
    # 2026-03-08: clocks go from 02:00 EST to 03:00 EDT. Check-ins at 23:30 local each night
    # are only 23 hours apart around the change, yet they are consecutive days.
    calendar = Calendar()
    assert calendar.check_in(utc(2026, 3, 8, 4, 30), NEW_YORK) == 1  # Mar 7 23:30 EST
    assert calendar.check_in(utc(2026, 3, 9, 3, 30), NEW_YORK) == 2  # Mar 8 23:30 EDT
    assert calendar.check_in(utc(2026, 3, 10, 3, 30), NEW_YORK) == 3  # Mar 9 23:30 EDT
    assert sorted(calendar.days) == [date(2026, 3, 7), date(2026, 3, 8), date(2026, 3, 9)]


def test_new_york_fall_back_day_of_25_hours_is_one_day():
    # 2026-11-01 has 25 hours: 00:10 EDT and 23:50 EST are 24h40m apart but the same day.
    assert local_day(utc(2026, 11, 1, 4, 10), NEW_YORK) == date(2026, 11, 1)
    assert local_day(utc(2026, 11, 2, 4, 50), NEW_YORK) == date(2026, 11, 1)
    calendar = Calendar()
    calendar.check_in(utc(2026, 11, 1, 4, 10), NEW_YORK)
    with pytest.raises(AssertionError, match="has a check-in already"):
        calendar.check_in(utc(2026, 11, 2, 4, 50), NEW_YORK)
    # ...and 00:05 the next morning, 25 minutes after that, is the next day.
    assert calendar.check_in(utc(2026, 11, 2, 5, 5), NEW_YORK) == 2


def test_a_backdated_check_in_counts_the_run_before_it_and_later_days_keep_theirs():
    calendar = Calendar()
    calendar.check_in(utc(2026, 11, 1, 2))
    calendar.check_in(utc(2026, 11, 3, 2))  # the 2nd is missing: streak 1
    assert calendar.check_in(utc(2026, 11, 2, 2)) == 2  # imported later, fills the gap
    assert calendar.days[date(2026, 11, 3)] == 1  # recorded (and announced) as 1: kept
    assert calendar.check_in(utc(2026, 11, 4, 2)) == 4  # the run is counted from the days


def test_run_and_current_streak():
    days = {date(2026, 11, d) for d in (1, 2, 3, 5, 6)}
    assert run_ending(date(2026, 11, 6), days) == 2
    assert run_ending(date(2026, 11, 3), days) == 3
    assert run_ending(date(2026, 11, 4), days) == 0
    # the streak stays alive through the day after the last check-in, then drops to 0
    assert current_streak(date(2026, 11, 6), days) == 2
    assert current_streak(date(2026, 11, 7), days) == 2
    assert current_streak(date(2026, 11, 8), days) == 0
    assert current_streak(date(2026, 11, 1), set()) == 0


# ---------------------------------------------------------------------------------------------
# Business time
# ---------------------------------------------------------------------------------------------


def test_business_time_defaults_to_now_accepts_the_past_and_five_minutes_ahead():
    now = utc(2026, 11, 30, 8, 0)
    assert business_time(None, now) == now
    assert business_time(utc(2020, 1, 1), now) == utc(2020, 1, 1)
    assert business_time(now + timedelta(minutes=5), now) == now + timedelta(minutes=5)
    shanghai = datetime(2026, 11, 30, 16, 0, tzinfo=ZoneInfo(SHANGHAI))
    assert business_time(shanghai, now) == now  # normalised to UTC
    assert business_time(shanghai, now).tzinfo == UTC
    with pytest.raises(BusinessTimeInFuture):
        business_time(now + timedelta(minutes=5, seconds=1), now)


# ---------------------------------------------------------------------------------------------
# Complaints
# ---------------------------------------------------------------------------------------------


def test_tickets_only_move_forward_and_may_skip_stages():
    check_transition("received", "acknowledged")
    check_transition("received", "resolved")  # fixed on the spot
    check_transition("acknowledged", "investigating")
    check_transition("investigating", "closed")
    assert next_statuses("received") == ["acknowledged", "investigating", "resolved", "closed"]
    assert next_statuses("resolved") == ["closed"]
    assert next_statuses("closed") == []
    for current, target in [
        ("acknowledged", "received"),
        ("resolved", "investigating"),
        ("investigating", "investigating"),
        ("closed", "resolved"),
        ("closed", "closed"),
        ("received", "reopened"),
    ]:
        with pytest.raises(InvalidStatusTransition):
            check_transition(current, target)
    with pytest.raises(InvalidStatusTransition, match="closed ticket is final"):
        check_transition("closed", "received")


def test_weekends_are_not_working_days():
    assert [is_working_day(date(2026, 11, d)) for d in range(23, 30)] == [
        True,  # Monday
        True,
        True,
        True,
        True,  # Friday
        False,
        False,
    ]


@pytest.mark.parametrize(
    ("received_local", "due_local"),
    [
        (datetime(2026, 11, 23, 10, 0), datetime(2026, 11, 24, 10, 0)),  # Monday -> Tuesday
        (datetime(2026, 11, 26, 18, 45), datetime(2026, 11, 27, 18, 45)),  # Thursday -> Friday
        (datetime(2026, 11, 27, 15, 0), datetime(2026, 11, 30, 15, 0)),  # Friday -> Monday
        (datetime(2026, 11, 28, 10, 0), datetime(2026, 11, 30, 10, 0)),  # Saturday -> Monday
        (datetime(2026, 11, 29, 23, 0), datetime(2026, 11, 30, 23, 0)),  # Sunday -> Monday
        (datetime(2026, 12, 31, 9, 0), datetime(2027, 1, 1, 9, 0)),  # holidays not modelled
    ],
)
def test_the_response_is_due_the_next_working_day_at_the_same_local_time(received_local, due_local):
    zone = ZoneInfo(SHANGHAI)
    due = response_deadline(received_local.replace(tzinfo=zone), SHANGHAI)
    assert due == due_local.replace(tzinfo=zone)
    assert due.tzinfo == UTC


def test_the_deadline_is_computed_in_the_members_timezone():
    # Friday 2026-11-27 20:00 UTC is already Saturday 04:00 in Shanghai, but Friday 15:00 in
    # New York: one is due Monday 04:00 Shanghai, the other Monday 15:00 New York.
    received = utc(2026, 11, 27, 20, 0)
    assert response_deadline(received, SHANGHAI) == utc(2026, 11, 29, 20, 0)
    assert response_deadline(received, NEW_YORK) == utc(2026, 11, 30, 20, 0)


def test_the_deadline_keeps_the_wall_clock_across_a_dst_change():
    # Friday 2026-03-06 10:00 EST (15:00 UTC) -> Monday 2026-03-09 10:00 EDT (14:00 UTC)
    assert response_deadline(utc(2026, 3, 6, 15, 0), NEW_YORK) == utc(2026, 3, 9, 14, 0)
    # Saturday 2026-03-07 02:30 EST -> Monday 02:30 EDT, over the 23-hour Sunday
    assert response_deadline(utc(2026, 3, 7, 7, 30), NEW_YORK) == utc(2026, 3, 9, 6, 30)
    # Friday 2026-10-30 10:00 EDT (14:00 UTC) -> Monday 2026-11-02 10:00 EST (15:00 UTC)
    assert response_deadline(utc(2026, 10, 30, 14, 0), NEW_YORK) == utc(2026, 11, 2, 15, 0)


def test_overdue_means_still_received_after_the_deadline():
    due = utc(2026, 11, 30, 7, 0)
    assert is_overdue("received", due, due + timedelta(seconds=1))
    assert not is_overdue("received", due, due)
    assert not is_overdue("acknowledged", due, due + timedelta(days=3))
    assert not is_overdue("closed", due, due + timedelta(days=3))


# ---------------------------------------------------------------------------------------------
# Surveys
# ---------------------------------------------------------------------------------------------


def test_recommend_likelihood_in_three_levels():
    levels = [recommend_level(r) for r in range(11)]
    assert levels == ["unlikely"] * 7 + ["possible"] * 2 + ["very_likely"] * 2
    assert recommend_level(None) is None
