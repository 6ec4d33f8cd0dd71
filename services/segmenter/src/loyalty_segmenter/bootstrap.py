"""Wires the segmenter service: routes, topics, handlers, jobs."""

from __future__ import annotations

from loyalty_shared.db import migrations_dir
from loyalty_shared.events import COUPONS, MEMBERS, ORDERS, POINTS, SEGMENTS
from loyalty_shared.service import ServiceDefinition

import loyalty_segmenter

from .entrypoints import analytics, profiles, segments
from .entrypoints.events import handlers
from .service_layer.jobs import JOBS


def definition() -> ServiceDefinition:
    return ServiceDefinition(
        name="segmenter",
        title="Loyalty segmenter service",
        description="Member profiles (RFM, lifecycle, tags, churn risk), segments, analytics.",
        migrations=migrations_dir(loyalty_segmenter.__file__),
        routers=[profiles.router, segments.router, analytics.router],
        publishes=[SEGMENTS],
        consumes=[MEMBERS, ORDERS, POINTS, COUPONS],
        handlers=handlers,
        jobs=JOBS,
    )
