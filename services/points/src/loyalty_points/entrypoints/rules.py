"""HTTP routes for earning rules: list, change, simulate."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from fastapi import APIRouter, Path
from loyalty_shared.api_types import AwareDatetime, DocumentedAs, RequestModel
from loyalty_shared.auth import Scope
from loyalty_shared.events import spec_for
from loyalty_shared.service import RuntimeDep
from pydantic import BaseModel, ConfigDict, Field, RootModel, create_model

from ..service_layer.rules import SIMULATED_TYPES, change_rule, list_rules, simulate

router = APIRouter(prefix="/v1", tags=["rules"])


class RulePublic(BaseModel):
    code: str
    enabled: bool
    params: dict[str, Any]
    description: str


class RuleList(BaseModel):
    items: list[RulePublic]
    next_cursor: str | None = None


class RuleChange(RequestModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"enabled": True, "params": {"points": 1, "per_minor": 100, "pending_days": 7}}
            ]
        },
    )

    enabled: bool | None = None
    params: dict[str, Any] | None = Field(default=None, description="the rule's whole parameters")


class SimulatedEvent(RequestModel):
    model_config = ConfigDict(extra="forbid")

    type: str = Field(max_length=100)
    data: dict[str, Any]
    time: AwareDatetime | None = None


def _simulated(event_type: str) -> type[BaseModel]:
    model = spec_for(event_type).model
    kind: Any = Literal[event_type]  # type: ignore[valid-type]
    return create_model(
        f"Simulated{model.__name__}",
        __config__=ConfigDict(extra="forbid"),
        __doc__=f"A `{event_type}` event, its data as the event carries it.",
        type=(kind, ...),
        data=(model, ...),
        time=(AwareDatetime | None, Field(default=None, description="default: now")),
    )


class EventToSimulate(RootModel[Union[tuple(_simulated(t) for t in SIMULATED_TYPES)]]):  # type: ignore[misc]  # noqa: UP007
    """An event the points service consumes: its `type` and its `data` (the event's schema,
    see docs/asyncapi.yaml). The service checks both (422 `validation_error` naming the place);
    this is the OpenAPI document's word for what it takes."""


class SimulationRequest(RequestModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "event": {
                        "type": "order.paid",
                        "time": "2026-11-24T10:15:30+08:00",
                        # the event's own example (loyalty_shared.events)
                        "data": spec_for("order.paid").model.model_json_schema()["examples"][0],
                    }
                }
            ]
        },
    )

    event: Annotated[SimulatedEvent, DocumentedAs(EventToSimulate)]


@router.get(
    "/rules",
    response_model=RuleList,
    dependencies=[Scope("members:read")],
    summary="The earning rules in force",
)
async def get_rules(runtime: RuntimeDep) -> RuleList:
    return RuleList(items=[RulePublic(**r) for r in await list_rules(runtime)])


@router.put(
    "/rules/{code}",
    response_model=RulePublic,
    dependencies=[Scope("points:write")],
    summary="Switch a rule on or off, or replace its parameters",
)
async def put_rule(
    code: Annotated[str, Path(max_length=64)], body: RuleChange, runtime: RuntimeDep
) -> RulePublic:
    return RulePublic(**await change_rule(runtime, code, enabled=body.enabled, params=body.params))


@router.post(
    "/rules:simulate",
    dependencies=[Scope("members:read")],
    summary="What an event would earn, rule by rule, without writing anything",
)
async def post_simulation(body: SimulationRequest, runtime: RuntimeDep) -> dict[str, Any]:
    return await simulate(runtime, body.event.type, body.event.data, body.event.time)
