"""Wires the member service: routes, topics, jobs."""

from __future__ import annotations

from loyalty_shared.db import migrations_dir
from loyalty_shared.events import MEMBERS, ORDERS
from loyalty_shared.service import ServiceDefinition

import loyalty_member

from .entrypoints import checkins, feedback, members


def definition() -> ServiceDefinition:
    return ServiceDefinition(
        name="member",
        title="Loyalty member service",
        description="Members, identities, cards, tiers, check-ins, orders intake, feedback.",
        migrations=migrations_dir(loyalty_member.__file__),
        routers=[members.router, checkins.router, feedback.router],
        publishes=[MEMBERS, ORDERS],
    )
