"""Wires the member service: routes, topics, jobs."""

from __future__ import annotations

from datetime import timedelta

from loyalty_shared.db import migrations_dir
from loyalty_shared.events import MEMBERS, ORDERS, POINTS
from loyalty_shared.jobs import Job
from loyalty_shared.service import ServiceDefinition

import loyalty_member

from .entrypoints import birthdays, cards, checkins, events, feedback, members, orders, tiers
from .service_layer.tiers import review_tiers


def definition() -> ServiceDefinition:
    return ServiceDefinition(
        name="member",
        title="Loyalty member service",
        description="Members, identities, cards, tiers, check-ins, orders intake, feedback.",
        migrations=migrations_dir(loyalty_member.__file__),
        routers=[
            members.router,
            checkins.router,
            feedback.router,
            orders.router,
            cards.router,
            tiers.router,
            birthdays.router,
        ],
        publishes=[MEMBERS, ORDERS],
        consumes=[POINTS],
        handlers=events.handlers,
        jobs=[
            Job(
                "tier-review",
                review_tiers,
                every=timedelta(days=1),
                description=(
                    "moves members above the lowest tier straight down to the tier their "
                    "metric still reaches as of as_of"
                ),
            )
        ],
    )
