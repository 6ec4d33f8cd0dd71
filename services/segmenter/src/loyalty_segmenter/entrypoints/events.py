"""Kafka handlers of the segmenter: which use case applies which event type."""

from __future__ import annotations

from ..service_layer.profiles import handlers

__all__ = ["handlers"]
