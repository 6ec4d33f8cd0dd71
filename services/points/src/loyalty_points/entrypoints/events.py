"""Kafka handlers of the points service: which use case applies which event type."""

from __future__ import annotations

from ..service_layer.earning import handlers

__all__ = ["handlers"]
