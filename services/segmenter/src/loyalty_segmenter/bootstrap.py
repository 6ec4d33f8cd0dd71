"""Wires the segmenter service: routes, topics, handlers, jobs."""

from __future__ import annotations

from loyalty_shared.db import migrations_dir
from loyalty_shared.events import SEGMENTS
from loyalty_shared.service import ServiceDefinition

import loyalty_segmenter


def definition() -> ServiceDefinition:
    return ServiceDefinition(
        name="segmenter",
        title="Loyalty segmenter service",
        description="Member profiles (RFM, lifecycle, tags), segments, analytics.",
        migrations=migrations_dir(loyalty_segmenter.__file__),
        publishes=[SEGMENTS],
    )
