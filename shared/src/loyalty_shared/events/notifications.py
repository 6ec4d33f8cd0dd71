"""Events on `loyalty.notifications`: the outcome of each delivery (one per event and channel).
Addresses never travel: a delivery names the member and the channel only."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, ConfigDict, Field

from .registry import NOTIFICATIONS, EventData, event_type

NotificationChannel = Literal["email", "sms", "wechat", "push", "inbox"]
NotificationCategory = Literal["transactional", "marketing"]

_DELIVERY = {
    "delivery_id": "01JDQ4D1E2F3G4H5J6K7M8N9P0",
    "member_id": "01JDQ3M7K8V2X9Y4Z5A6B7C8D9",
    "event_id": "01JDQ4C5D6E7F8G9H0J1K2M3P1",
    "event_type": "points.credited",
}


class _DeliveryEvent(EventData):
    delivery_id: str
    member_id: str
    event_id: str = Field(description="id of the event the message is about")
    event_type: str = Field(description="type of that event (selects the template)")
    channel: NotificationChannel
    category: NotificationCategory = Field(
        description="transactional (always sent) or marketing (consent, quiet hours, cap)"
    )
    locale: str | None = None
    attempts: int = Field(default=0, ge=0, description="send attempts made so far")
    occurred_at: AwareDatetime


@event_type("notification.sent", topic=NOTIFICATIONS)
class NotificationSent(_DeliveryEvent):
    """A message was handed to a provider (or stored in the inbox)."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    **_DELIVERY,
                    "channel": "sms",
                    "category": "transactional",
                    "locale": "zh-CN",
                    "attempts": 1,
                    "provider": "sms-primary",
                    "occurred_at": "2026-11-24T02:15:40Z",
                }
            ]
        },
    )

    provider: str = Field(description="the provider that took the message, e.g. sms-fallback")
    reason: str | None = None


@event_type("notification.failed", topic=NOTIFICATIONS)
class NotificationFailed(_DeliveryEvent):
    """A delivery failed for good: retries and fallback providers are used up."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    **_DELIVERY,
                    "channel": "email",
                    "category": "transactional",
                    "locale": "zh-CN",
                    "attempts": 6,
                    "provider": "smtp-fallback",
                    "reason": "provider_error: 550 mailbox unavailable",
                    "occurred_at": "2026-11-24T03:40:12Z",
                }
            ]
        },
    )

    provider: str | None = Field(default=None, description="the last provider tried")
    reason: str = Field(description="why the last attempt failed")


@event_type("notification.suppressed", topic=NOTIFICATIONS)
class NotificationSuppressed(_DeliveryEvent):
    """A delivery was decided against and will not be sent."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    **_DELIVERY,
                    "event_id": "01JDZ9A8B7C6D5E4F3G2H1J0K9",
                    "event_type": "coupon.expiring_soon",
                    "channel": "wechat",
                    "category": "marketing",
                    "reason": "no_consent",
                    "occurred_at": "2026-12-21T16:00:03Z",
                }
            ]
        },
    )

    reason: str = Field(
        description="why: no_consent, no_address, frequency_cap, no_template, member_erased, ..."
    )
    provider: str | None = None
