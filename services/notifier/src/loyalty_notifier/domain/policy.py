"""Who is sent what, when: categories, consent, quiet hours, frequency caps (pure rules, no I/O).

A message is about one event. Its category decides the rules: transactional messages (order
and account facts) always go out; marketing messages need the member's consent for the channel,
wait out the member's quiet hours and obey a frequency cap. The inbox is the member's own
mailbox in the app: always on, silent (no quiet hours) and not counted by the cap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

Channel = Literal["email", "sms", "wechat", "push", "inbox"]
Category = Literal["transactional", "marketing"]
Status = Literal["queued", "deferred", "sent", "failed", "suppressed"]

CHANNELS: tuple[Channel, ...] = ("inbox", "email", "sms", "wechat", "push")
CONSENT_CHANNELS: tuple[Channel, ...] = ("email", "sms", "wechat", "push")
LOCALES = ("zh-CN", "en")
DEFAULT_LOCALE = "zh-CN"
DEFAULT_TIMEZONE = "Asia/Shanghai"

# Message types derived from an event rather than equal to its type.
PAYMENT_REMINDER = "order.payment_reminder"  # an order.placed still unpaid after a delay
WINBACK = "member.winback"  # a member.lifecycle_changed into a win-back stage
WINBACK_STAGES = frozenset({"easy_winback", "hard_winback"})

# The message kinds of contract §7 that have built-in templates, and their category.
BUILTIN_KINDS: dict[str, Category] = {
    "member.registered": "marketing",  # welcome
    "points.credited": "transactional",
    "points.expiring_soon": "transactional",  # a fact about the member's own account
    "coupon.issued": "marketing",
    "coupon.expiring_soon": "marketing",
    "member.tier_changed": "transactional",
    "order.shipped": "transactional",
    "order.delivered": "transactional",
    PAYMENT_REMINDER: "transactional",
    WINBACK: "marketing",
}

# Event types an operator may give templates to beyond the built-in kinds are categorised by
# what they are about: orders, points, stored value and the member's own record are facts;
# coupons, segments and lifecycle stages are promotion.
_MARKETING_PREFIXES = ("coupon.", "segment.", "member.lifecycle_changed", "member.winback")


def category_of(message_type: str) -> Category:
    if message_type in BUILTIN_KINDS:
        return BUILTIN_KINDS[message_type]
    if message_type.startswith(_MARKETING_PREFIXES):
        return "marketing"
    return "transactional"


def message_types(event_type: str, data: Mapping[str, Any]) -> list[str]:
    """The message types an event may produce; each is sent only on channels with a template."""
    types = [event_type]
    if event_type == "member.lifecycle_changed" and data.get("new_stage") in WINBACK_STAGES:
        types.append(WINBACK)
    return types


def zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or DEFAULT_TIMEZONE)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(DEFAULT_TIMEZONE)


@dataclass(frozen=True)
class QuietHours:
    """A daily window in the member's local time; `start > end` spans midnight (22:00-08:00)."""

    start: time
    end: time

    def ends_at(self, at: datetime, timezone: str) -> datetime | None:
        """When the window that holds `at` ends (UTC-aware), or None when `at` is outside it."""
        if self.start == self.end:
            return None
        tz = zone(timezone)
        local = at.astimezone(tz)
        now = local.time().replace(tzinfo=None)
        today = local.date()
        if self.start < self.end:
            if not (self.start <= now < self.end):
                return None
            end_day = today
        elif now >= self.start:
            end_day = today + timedelta(days=1)
        elif now < self.end:
            end_day = today
        else:
            return None
        return datetime.combine(end_day, self.end, tzinfo=tz).astimezone(at.tzinfo)

    @classmethod
    def parse(cls, start: str, end: str) -> QuietHours:
        return cls(time.fromisoformat(start), time.fromisoformat(end))

    def as_dict(self) -> dict[str, str]:
        return {"start": self.start.strftime("%H:%M"), "end": self.end.strftime("%H:%M")}


DEFAULT_QUIET_HOURS = QuietHours(time(22, 0), time(8, 0))


@dataclass
class Preferences:
    """What the notifier knows of a member: consents, quiet hours, timezone, locale, erasure."""

    member_id: str
    consents: dict[str, bool] = field(default_factory=dict)
    quiet_hours: QuietHours | None = DEFAULT_QUIET_HOURS
    timezone: str = DEFAULT_TIMEZONE
    locale: str = DEFAULT_LOCALE
    erased: bool = False
    # False until the member's consents are known (member.registered, the preferences API, or
    # the member service): an event may arrive before the sign-up that carries them.
    known: bool = True

    def consents_to(self, channel: str) -> bool:
        return channel == "inbox" or bool(self.consents.get(channel, False))


@dataclass(frozen=True)
class Decision:
    """What to do with one message on one channel now."""

    status: Status
    reason: str | None = None
    not_before: datetime | None = None


QUEUE = Decision("queued")


def decide(channel: str, category: Category, preferences: Preferences, now: datetime) -> Decision:
    """Queue, defer (quiet hours) or suppress (erased, no consent) a message on a channel.

    Taken when the event arrives and again just before sending, so that consent withdrawn or
    quiet hours begun in between are honoured. The frequency cap is applied when sending."""
    if preferences.erased:
        return Decision("suppressed", "member_erased")
    if category == "transactional" or channel == "inbox":
        return QUEUE
    if not preferences.consents_to(channel):
        if not preferences.known:
            return QUEUE  # decided when sending, once the member's consents are known
        return Decision("suppressed", "no_consent")
    if preferences.quiet_hours is not None:
        ends = preferences.quiet_hours.ends_at(now, preferences.timezone)
        if ends is not None:
            return Decision("deferred", "quiet_hours", not_before=ends)
    return QUEUE


def plan(
    message_type: str,
    channels: Iterable[str],
    preferences: Preferences,
    now: datetime,
) -> list[tuple[str, Category, Decision]]:
    """One decision per channel that has a template for the message; nothing for erased members."""
    if preferences.erased:
        return []
    category = category_of(message_type)
    wanted = set(channels)
    return [
        (channel, category, decide(channel, category, preferences, now))
        for channel in CHANNELS
        if channel in wanted
    ]


def counts_toward_cap(channel: str, category: Category) -> bool:
    return category == "marketing" and channel != "inbox"


@dataclass(frozen=True)
class FrequencyCap:
    """At most `per_day` marketing messages a member's local day and `per_week` in the seven
    local days ending today, counted once per event (across channels) when first sent."""

    per_day: int = 2
    per_week: int = 5

    def windows(self, now: datetime, timezone: str) -> tuple[datetime, datetime]:
        """Starts of the day and week windows that hold `now` (aware, in the member's zone)."""
        tz = zone(timezone)
        local = now.astimezone(tz)
        day_start = datetime.combine(local.date(), time(0), tzinfo=tz)
        week_start = datetime.combine(local.date() - timedelta(days=6), time(0), tzinfo=tz)
        return day_start, week_start

    def allows(self, counted: Iterable[datetime], now: datetime, timezone: str) -> bool:
        """Whether one more event may be counted at `now`, given when earlier ones were."""
        day_start, week_start = self.windows(now, timezone)
        times = [t for t in counted if t <= now]
        today = sum(1 for t in times if t >= day_start)
        week = sum(1 for t in times if t >= week_start)
        return today < self.per_day and week < self.per_week


@dataclass(frozen=True)
class RetryPolicy:
    """Each provider of a channel gets `attempts_per_provider` tries, `base_delay` doubling
    between them (up to `max_delay`); then the next provider takes over at once."""

    attempts_per_provider: int = 3
    base_delay: timedelta = timedelta(seconds=2)
    max_delay: timedelta = timedelta(minutes=5)

    def delay(self, failures_on_provider: int) -> timedelta:
        return min(self.base_delay * (2 ** max(failures_on_provider - 1, 0)), self.max_delay)


@dataclass(frozen=True)
class SendState:
    provider_index: int = 0
    provider_attempts: int = 0
    attempts: int = 0


@dataclass(frozen=True)
class AfterFailure:
    """What follows a failed attempt: `retry_at` the same provider, the next provider now
    (`state.provider_index` moved on, `retry_at` None), or give up (`give_up`)."""

    state: SendState
    retry_at: datetime | None = None
    give_up: bool = False


def after_failure(
    state: SendState,
    providers: int,
    policy: RetryPolicy,
    now: datetime,
    *,
    permanent: bool = False,
) -> AfterFailure:
    tried = SendState(state.provider_index, state.provider_attempts + 1, state.attempts + 1)
    if not permanent and tried.provider_attempts < policy.attempts_per_provider:
        return AfterFailure(tried, retry_at=now + policy.delay(tried.provider_attempts))
    following = SendState(tried.provider_index + 1, 0, tried.attempts)
    if following.provider_index >= providers:
        return AfterFailure(tried, give_up=True)
    return AfterFailure(following)
