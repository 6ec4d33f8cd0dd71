"""Wires the notifier service: routes, topics, handlers, jobs."""

from __future__ import annotations

from loyalty_shared.db import migrations_dir
from loyalty_shared.events import NOTIFICATIONS
from loyalty_shared.service import ServiceDefinition

import loyalty_notifier


def definition() -> ServiceDefinition:
    return ServiceDefinition(
        name="notifier",
        title="Loyalty notifier service",
        description="Templates, preferences and consent, deliveries, inbox.",
        migrations=migrations_dir(loyalty_notifier.__file__),
        publishes=[NOTIFICATIONS],
    )
