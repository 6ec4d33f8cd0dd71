"""The notifier's policy with a fake clock: categories, consent, quiet hours across midnight and
time zones, frequency caps across days, retries and failover."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest
from loyalty_notifier.domain.policy import (
    PAYMENT_REMINDER,
    WINBACK,
    FrequencyCap,
    Preferences,
    QuietHours,
    RetryPolicy,
    SendState,
    after_failure,
    category_of,
    counts_toward_cap,
    decide,
    message_types,
    plan,
)
from loyalty_shared.clock import FixedClock

SHANGHAI = "Asia/Shanghai"  # UTC+8, no DST
NIGHT = QuietHours(time(22, 0), time(8, 0))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def prefs(**kwargs) -> Preferences:
    base = {"member_id": "m1", "consents": {"email": True, "sms": True}, "quiet_hours": NIGHT}
    base.update(kwargs)
    return Preferences(**base)


@pytest.mark.parametrize(
    ("message_type", "category"),
    [
        ("member.registered", "marketing"),
        ("coupon.issued", "marketing"),
        ("coupon.expiring_soon", "marketing"),
        (WINBACK, "marketing"),
        ("points.credited", "transactional"),
        ("points.expiring_soon", "transactional"),
        ("member.tier_changed", "transactional"),
        ("order.shipped", "transactional"),
        ("order.delivered", "transactional"),
        (PAYMENT_REMINDER, "transactional"),
        ("order.paid", "transactional"),  # not built in: an order fact
        ("segment.entered", "marketing"),  # not built in: promotion
    ],
)
def test_categories(message_type: str, category: str) -> None:
    assert category_of(message_type) == category


def test_winback_is_derived_from_lifecycle_stage() -> None:
    assert message_types("member.lifecycle_changed", {"new_stage": "easy_winback"}) == [
        "member.lifecycle_changed",
        WINBACK,
    ]
    assert message_types("member.lifecycle_changed", {"new_stage": "active"}) == [
        "member.lifecycle_changed"
    ]


class TestQuietHours:
    def test_across_midnight_before_and_after_midnight(self) -> None:
        # 23:30 Shanghai = 15:30 UTC → ends 08:00 next local day = 00:00 UTC next day
        assert NIGHT.ends_at(utc(2026, 3, 2, 15, 30), SHANGHAI) == utc(2026, 3, 3, 0, 0)
        # 03:00 Shanghai = 19:00 UTC the day before → ends 08:00 the same local day
        assert NIGHT.ends_at(utc(2026, 3, 2, 19, 0), SHANGHAI) == utc(2026, 3, 3, 0, 0)

    def test_outside_the_window(self) -> None:
        assert NIGHT.ends_at(utc(2026, 3, 2, 4, 0), SHANGHAI) is None  # 12:00
        assert NIGHT.ends_at(utc(2026, 3, 2, 0, 0), SHANGHAI) is None  # exactly 08:00: over
        assert NIGHT.ends_at(utc(2026, 3, 2, 14, 0), SHANGHAI) == utc(2026, 3, 3, 0, 0)  # 22:00

    def test_same_day_window(self) -> None:
        lunch = QuietHours(time(12, 0), time(14, 0))
        assert lunch.ends_at(utc(2026, 3, 2, 5, 0), SHANGHAI) == utc(2026, 3, 2, 6, 0)
        assert lunch.ends_at(utc(2026, 3, 2, 6, 0), SHANGHAI) is None

    def test_empty_window(self) -> None:
        assert QuietHours(time(9), time(9)).ends_at(utc(2026, 3, 2, 1, 0), SHANGHAI) is None

    def test_member_time_zone_decides(self) -> None:
        at = utc(2026, 3, 2, 15, 30)  # 23:30 in Shanghai, 16:30 in Berlin
        assert NIGHT.ends_at(at, SHANGHAI) is not None
        assert NIGHT.ends_at(at, "Europe/Berlin") is None
        # 23:30 in Berlin (UTC+1 in March) → 08:00 Berlin = 07:00 UTC the next day
        assert NIGHT.ends_at(utc(2026, 3, 2, 22, 30), "Europe/Berlin") == utc(2026, 3, 3, 7, 0)

    def test_over_a_daylight_saving_change(self) -> None:
        # New York springs forward on 2026-03-08: 08:00 that day is 12:00 UTC, not 13:00
        assert NIGHT.ends_at(utc(2026, 3, 8, 4, 0), "America/New_York") == utc(2026, 3, 8, 12)

    def test_unknown_zone_falls_back_to_shanghai(self) -> None:
        assert NIGHT.ends_at(utc(2026, 3, 2, 15, 30), "Mars/Olympus") == utc(2026, 3, 3, 0, 0)


class TestDecide:
    def test_transactional_goes_out_at_night_without_consent(self) -> None:
        clock = FixedClock(utc(2026, 3, 2, 16, 0))  # midnight in Shanghai
        decision = decide("sms", "transactional", prefs(consents={}), clock.now())
        assert decision.status == "queued"

    def test_marketing_needs_consent_per_channel(self) -> None:
        noon = utc(2026, 3, 2, 4, 0)
        p = prefs(consents={"email": True, "sms": False})
        assert decide("email", "marketing", p, noon).status == "queued"
        sms = decide("sms", "marketing", p, noon)
        assert (sms.status, sms.reason) == ("suppressed", "no_consent")
        assert decide("wechat", "marketing", p, noon).reason == "no_consent"  # never asked

    def test_marketing_waits_out_quiet_hours(self) -> None:
        clock = FixedClock(utc(2026, 3, 2, 15, 0))  # 23:00 in Shanghai
        decision = decide("email", "marketing", prefs(), clock.now())
        assert decision == decision.__class__("deferred", "quiet_hours", utc(2026, 3, 3, 0, 0))
        clock.advance(timedelta(hours=9))  # 08:00: the window is over
        assert decide("email", "marketing", prefs(), clock.now()).status == "queued"

    def test_no_quiet_hours_when_the_member_turned_them_off(self) -> None:
        at = utc(2026, 3, 2, 15, 0)
        assert decide("email", "marketing", prefs(quiet_hours=None), at).status == "queued"

    def test_inbox_is_always_on_and_silent(self) -> None:
        at = utc(2026, 3, 2, 15, 0)
        assert decide("inbox", "marketing", prefs(consents={}), at).status == "queued"

    def test_erased_members_get_nothing(self) -> None:
        at = utc(2026, 3, 2, 4, 0)
        erased = prefs(erased=True)
        assert decide("inbox", "transactional", erased, at).reason == "member_erased"
        assert plan("order.shipped", {"inbox", "sms"}, erased, at) == []

    def test_plan_covers_channels_with_templates_in_a_stable_order(self) -> None:
        at = utc(2026, 3, 2, 4, 0)
        planned = plan("coupon.issued", {"push", "email", "inbox"}, prefs(), at)
        assert [(c, cat, d.status, d.reason) for c, cat, d in planned] == [
            ("inbox", "marketing", "queued", None),
            ("email", "marketing", "queued", None),
            ("push", "marketing", "suppressed", "no_consent"),
        ]


class TestFrequencyCap:
    cap = FrequencyCap(per_day=2, per_week=5)

    def test_two_a_day(self) -> None:
        clock = FixedClock(utc(2026, 3, 2, 2, 0))  # 10:00 Shanghai, Monday
        sent: list[datetime] = []
        for _ in range(2):
            assert self.cap.allows(sent, clock.now(), SHANGHAI)
            sent.append(clock.now())
            clock.advance(timedelta(hours=1))
        assert not self.cap.allows(sent, clock.now(), SHANGHAI)

    def test_the_day_is_the_members_local_day(self) -> None:
        # two sent at 10:00 and 11:00 Shanghai; 23:59 Shanghai is still that day
        sent = [utc(2026, 3, 2, 2, 0), utc(2026, 3, 2, 3, 0)]
        assert not self.cap.allows(sent, utc(2026, 3, 2, 15, 59), SHANGHAI)
        # 00:00 the next local day (16:00 UTC) opens a new day
        assert self.cap.allows(sent, utc(2026, 3, 2, 16, 0), SHANGHAI)

    def test_five_a_week_across_days(self) -> None:
        clock = FixedClock(utc(2026, 3, 2, 2, 0))
        sent: list[datetime] = []
        for _ in range(5):  # one a day for five days
            assert self.cap.allows(sent, clock.now(), SHANGHAI)
            sent.append(clock.now())
            clock.advance(timedelta(days=1))
        assert not self.cap.allows(sent, clock.now(), SHANGHAI)  # day 6
        clock.advance(timedelta(days=1))
        assert not self.cap.allows(sent, clock.now(), SHANGHAI)  # day 7: still 5 in 7 days
        clock.advance(timedelta(days=1))
        assert self.cap.allows(sent, clock.now(), SHANGHAI)  # day 8: the first fell out

    def test_only_marketing_off_the_inbox_counts(self) -> None:
        assert counts_toward_cap("sms", "marketing")
        assert not counts_toward_cap("inbox", "marketing")
        assert not counts_toward_cap("sms", "transactional")


class TestRetries:
    policy = RetryPolicy(attempts_per_provider=3, base_delay=timedelta(seconds=2))
    now = utc(2026, 3, 2, 4, 0)

    def test_exponential_backoff_then_failover_then_give_up(self) -> None:
        state = SendState()
        delays = []
        for _ in range(2):
            outcome = after_failure(state, 2, self.policy, self.now)
            assert outcome.retry_at is not None and not outcome.give_up
            delays.append(outcome.retry_at - self.now)
            state = outcome.state
        assert delays == [timedelta(seconds=2), timedelta(seconds=4)]
        outcome = after_failure(state, 2, self.policy, self.now)  # third failure: next provider
        assert (outcome.retry_at, outcome.give_up) == (None, False)
        assert outcome.state == SendState(provider_index=1, provider_attempts=0, attempts=3)
        state = outcome.state
        for _ in range(2):
            state = after_failure(state, 2, self.policy, self.now).state
        last = after_failure(state, 2, self.policy, self.now)
        assert last.give_up and last.state.attempts == 6

    def test_a_permanent_error_moves_on_at_once(self) -> None:
        outcome = after_failure(SendState(), 2, self.policy, self.now, permanent=True)
        assert outcome.state.provider_index == 1 and outcome.retry_at is None

    def test_backoff_is_capped(self) -> None:
        policy = RetryPolicy(attempts_per_provider=20, max_delay=timedelta(minutes=1))
        assert policy.delay(15) == timedelta(minutes=1)
