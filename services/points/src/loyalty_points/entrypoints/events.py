"""Kafka handlers of the points service: which use case applies which event type."""

from __future__ import annotations

from functools import partial

from loyalty_shared.kafka import Handlers
from loyalty_shared.service import Runtime

from ..service_layer.earning import on_member_registered


def handlers(runtime: Runtime) -> Handlers:
    table = Handlers()
    table.by_type["member.registered"] = partial(on_member_registered, runtime)
    return table
