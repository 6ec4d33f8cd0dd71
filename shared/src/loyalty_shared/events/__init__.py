"""The event contract: the CloudEvents envelope, one payload model per event type, a registry."""

# Importing the payload modules registers every event type of the contract.
from . import coupons, members, notifications, orders, points, segments  # noqa: F401
from .envelope import (
    CloudEvent,
    Event,
    EventDecodeError,
    UnknownEventType,
    UnknownSchemaVersion,
    decode_event,
    make_event,
    new_event_id,
)
from .registry import (
    COUPONS,
    MEMBERS,
    NOTIFICATIONS,
    ORDERS,
    POINTS,
    REGISTRY,
    SEGMENTS,
    TOPICS,
    EventData,
    EventSpec,
    event_type,
    spec_for,
    types_on,
)

__all__ = [
    "COUPONS",
    "MEMBERS",
    "NOTIFICATIONS",
    "ORDERS",
    "POINTS",
    "REGISTRY",
    "SEGMENTS",
    "TOPICS",
    "CloudEvent",
    "Event",
    "EventData",
    "EventDecodeError",
    "EventSpec",
    "UnknownEventType",
    "UnknownSchemaVersion",
    "decode_event",
    "event_type",
    "make_event",
    "new_event_id",
    "spec_for",
    "types_on",
]
