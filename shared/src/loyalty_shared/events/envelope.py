"""The CloudEvents 1.0 envelope (structured JSON mode) that every Kafka message value uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ulid import ULID

from ..observability import event_traceparent
from .registry import EventData, spec_for

D = TypeVar("D", bound=EventData)


def new_event_id() -> str:
    return str(ULID())


class CloudEvent(BaseModel):
    """The envelope as it travels; `data` is checked against the type's own model separately."""

    model_config = ConfigDict(extra="allow")

    specversion: Literal["1.0"]
    id: str = Field(min_length=1, max_length=64)
    source: str = Field(min_length=1)
    type: str = Field(min_length=1)
    time: datetime
    subject: str | None = None
    datacontenttype: str = "application/json"
    dataschema: str | None = None
    traceparent: str | None = None
    data: dict[str, Any]


class EventDecodeError(Exception):
    """A message that cannot become a typed event; the consumer sends it to the DLQ."""

    reason = "malformed"


class UnknownEventType(EventDecodeError):
    reason = "unknown_type"


class UnknownSchemaVersion(EventDecodeError):
    reason = "unknown_schema_version"


@dataclass(frozen=True, slots=True)
class Event(Generic[D]):
    """One business fact, with its typed payload and envelope attributes."""

    type: str
    data: D
    subject: str | None
    source: str
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    id: str = field(default_factory=new_event_id)
    traceparent: str | None = None
    key_override: str | None = None

    @property
    def key(self) -> str:
        """The Kafka message key: the member, or (anonymous orders) the given key."""
        return self.key_override or self.subject or self.id

    @property
    def topic(self) -> str:
        return spec_for(self.type).topic

    def to_cloudevent(self) -> dict[str, Any]:
        spec = spec_for(self.type)
        body: dict[str, Any] = {
            "specversion": "1.0",
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "time": _rfc3339(self.time),
            "subject": self.subject,
            "datacontenttype": "application/json",
            "dataschema": spec.dataschema,
            "data": self.data.model_dump(mode="json", exclude_none=True),
        }
        if self.traceparent:
            body["traceparent"] = self.traceparent
        return body

    def encode(self) -> bytes:
        return orjson.dumps(self.to_cloudevent())


def _rfc3339(at: datetime) -> str:
    if at.tzinfo is None:
        raise ValueError("event times must be timezone-aware")
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def make_event(
    type_: str,
    data: EventData,
    *,
    subject: str | None,
    source: str,
    time: datetime,
    traceparent: str | None = None,
    key: str | None = None,
    event_id: str | None = None,
) -> Event[Any]:
    spec = spec_for(type_)
    if traceparent is None:
        # the trace of the request or event that causes this one (`observability.py`)
        traceparent = event_traceparent(subject)
    if not isinstance(data, spec.model):
        raise TypeError(f"{type_} carries {spec.model.__name__}, not {type(data).__name__}")
    return Event(
        type=type_,
        data=data,
        subject=subject,
        source=source,
        time=time,
        id=event_id or new_event_id(),
        traceparent=traceparent,
        key_override=key,
    )


def parse_value(value: bytes | None) -> Any:
    """The JSON of a message value, or EventDecodeError."""
    if value is None:
        raise EventDecodeError("message has no value")
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise EventDecodeError(f"value is not JSON: {exc}") from exc


def decode_event(value: bytes | None) -> Event[Any]:
    """Parse a message value into a typed event, or raise EventDecodeError saying why."""
    return event_from_json(parse_value(value))


def event_from_json(raw: Any) -> Event[Any]:
    """A typed event from a parsed CloudEvent, or EventDecodeError saying why."""
    try:
        envelope = CloudEvent.model_validate(raw)
    except ValidationError as exc:
        raise EventDecodeError(f"not a CloudEvents 1.0 envelope: {exc.errors()[:3]}") from exc
    try:
        spec = spec_for(envelope.type)
    except KeyError as exc:
        raise UnknownEventType(f"unknown event type {envelope.type!r}") from exc
    if envelope.dataschema is not None and envelope.dataschema != spec.dataschema:
        raise UnknownSchemaVersion(
            f"{envelope.type} with schema {envelope.dataschema!r}; this consumer reads "
            f"{spec.dataschema!r}"
        )
    try:
        data = spec.model.model_validate(envelope.data)
    except ValidationError as exc:
        raise EventDecodeError(
            f"{envelope.type} data does not match its schema: {exc.errors()[:3]}"
        ) from exc
    when = envelope.time if envelope.time.tzinfo else envelope.time.replace(tzinfo=UTC)
    return Event(
        type=envelope.type,
        data=data,
        subject=envelope.subject,
        source=envelope.source,
        time=when,
        id=envelope.id,
        traceparent=envelope.traceparent,
    )
