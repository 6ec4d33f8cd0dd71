"""HTTP routes for earning rules: list, change, simulate."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from loyalty_shared.api_types import AwareDatetime, RequestModel
from loyalty_shared.auth import Scope
from loyalty_shared.service import RuntimeDep
from pydantic import BaseModel, ConfigDict, Field

from ..service_layer.rules import change_rule, list_rules, simulate

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
    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = None
    params: dict[str, Any] | None = Field(default=None, description="the rule's whole parameters")


class SimulatedEvent(RequestModel):
    model_config = ConfigDict(extra="forbid")

    type: str = Field(max_length=100)
    data: dict[str, Any]
    time: AwareDatetime | None = None


class SimulationRequest(RequestModel):
    model_config = ConfigDict(extra="forbid")

    event: SimulatedEvent


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
