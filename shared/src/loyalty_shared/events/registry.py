"""The registry of event types: name → payload model, topic and schema version."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, ConfigDict

MEMBERS = "loyalty.members"
ORDERS = "loyalty.orders"
POINTS = "loyalty.points"
COUPONS = "loyalty.coupons"
SEGMENTS = "loyalty.segments"
NOTIFICATIONS = "loyalty.notifications"
TOPICS = (MEMBERS, ORDERS, POINTS, COUPONS, SEGMENTS, NOTIFICATIONS)


class EventData(BaseModel):
    """Base of every event payload. Unknown fields are ignored so that producers may add
    optional fields (the only change a schema version allows)."""

    model_config = ConfigDict(extra="ignore", frozen=True)


@dataclass(frozen=True)
class EventSpec:
    type: str
    topic: str
    version: int
    model: builtins.type[EventData]

    @property
    def dataschema(self) -> str:
        return f"urn:loyalty:schema:{self.type}:{self.version}"


REGISTRY: dict[str, EventSpec] = {}

M = TypeVar("M", bound=type[EventData])


def event_type(name: str, *, topic: str, version: int = 1) -> Callable[[M], M]:
    """Class decorator that registers a payload model under its event type name."""

    def register(model: M) -> M:
        if name in REGISTRY:
            raise ValueError(f"event type {name} registered twice")
        if topic not in TOPICS:
            raise ValueError(f"{name}: unknown topic {topic}")
        REGISTRY[name] = EventSpec(type=name, topic=topic, version=version, model=model)
        return model

    return register


def spec_for(name: str) -> EventSpec:
    return REGISTRY[name]


def types_on(topic: str) -> list[str]:
    return sorted(t for t, spec in REGISTRY.items() if spec.topic == topic)
