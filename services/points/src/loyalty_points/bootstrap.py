"""Wires the points service: routes, topics, handlers, jobs."""

from __future__ import annotations

from loyalty_shared.db import migrations_dir
from loyalty_shared.events import MEMBERS, ORDERS, POINTS
from loyalty_shared.service import ServiceDefinition

import loyalty_points

from .entrypoints import accounts, redemptions, rules, stored_value
from .entrypoints.events import handlers
from .service_layer.jobs import JOBS


def definition() -> ServiceDefinition:
    return ServiceDefinition(
        name="points",
        title="Loyalty points service",
        description="Points and stored-value ledgers, earning rules, expiry, redemptions.",
        migrations=migrations_dir(loyalty_points.__file__),
        routers=[accounts.router, redemptions.router, rules.router, stored_value.router],
        publishes=[POINTS],
        consumes=[MEMBERS, ORDERS],
        handlers=handlers,
        jobs=JOBS,
    )
