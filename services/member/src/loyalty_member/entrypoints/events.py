"""Kafka handlers of the member service: which use case applies which event type."""

from __future__ import annotations

from functools import partial

from loyalty_shared.kafka import Handlers
from loyalty_shared.service import Runtime

from ..service_layer.tiers import on_points_changed


def handlers(runtime: Runtime) -> Handlers:
    table = Handlers()
    # Lifetime points earned (the lifetime_points tier metric): credits add, earn reversals
    # take back. Other points events change no tier and are skipped.
    table.by_type["points.credited"] = partial(on_points_changed, runtime)
    table.by_type["points.reversed"] = partial(on_points_changed, runtime)
    return table
