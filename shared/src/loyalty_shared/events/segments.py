"""Events on `loyalty.segments`: segment membership and lifecycle stage changes, computed by
the segmenter on every event that touches a profile and by its recompute job."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, ConfigDict, Field

from .registry import SEGMENTS, EventData, event_type

LifecycleStage = Literal[
    "prospect", "new", "active", "cooling", "easy_winback", "hard_winback", "lost"
]

_MEMBER = "01JDQ3M7K8V2X9Y4Z5A6B7C8D9"


class _SegmentMembership(EventData):
    segment_code: str
    member_id: str
    as_of: AwareDatetime = Field(description="the time the membership was evaluated for")
    trigger_event_id: str | None = Field(
        default=None, description="the event that caused the evaluation; absent for recompute"
    )


@event_type("segment.entered", topic=SEGMENTS)
class SegmentEntered(_SegmentMembership):
    """A member started matching a segment's rule (once per change)."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "segment_code": "winback-easy-high-spend",
                    "member_id": _MEMBER,
                    "as_of": "2027-02-23T00:00:00Z",
                }
            ]
        },
    )


@event_type("segment.exited", topic=SEGMENTS)
class SegmentExited(_SegmentMembership):
    """A member stopped matching a segment's rule (once per change)."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "segment_code": "winback-easy-high-spend",
                    "member_id": _MEMBER,
                    "as_of": "2027-03-02T04:10:00Z",
                    "trigger_event_id": "01JN5X2Y3Z4A5B6C7D8E9F0G1H",
                }
            ]
        },
    )


@event_type("member.lifecycle_changed", topic=SEGMENTS)
class MemberLifecycleChanged(EventData):
    """A member moved to another lifecycle stage (by an order, or by time in recompute)."""

    model_config = ConfigDict(
        **EventData.model_config,
        json_schema_extra={
            "examples": [
                {
                    "member_id": _MEMBER,
                    "old_stage": "cooling",
                    "new_stage": "easy_winback",
                    "as_of": "2027-02-23T00:00:00Z",
                    "last_order_at": "2026-11-24T02:15:30Z",
                    "paid_orders_count": 3,
                },
                {
                    "member_id": _MEMBER,
                    "new_stage": "prospect",
                    "as_of": "2026-11-24T08:00:00Z",
                    "paid_orders_count": 0,
                },
            ]
        },
    )

    member_id: str
    old_stage: LifecycleStage | None = Field(
        default=None, description="absent when the member gets a stage for the first time"
    )
    new_stage: LifecycleStage
    as_of: AwareDatetime = Field(description="the time the stage was computed for")
    last_order_at: AwareDatetime | None = Field(default=None, description="last paid order")
    paid_orders_count: int | None = Field(default=None, ge=0)
    trigger_event_id: str | None = Field(
        default=None, description="the event that caused the change; absent for recompute"
    )
