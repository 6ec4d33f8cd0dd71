"""Wires the coupon service: routes, topics, handlers, jobs."""

from __future__ import annotations

from loyalty_shared.db import migrations_dir
from loyalty_shared.events import COUPONS
from loyalty_shared.service import ServiceDefinition

import loyalty_coupon


def definition() -> ServiceDefinition:
    return ServiceDefinition(
        name="coupon",
        title="Loyalty coupon service",
        description="Coupon templates, campaigns, issued coupons, validation and redemption.",
        migrations=migrations_dir(loyalty_coupon.__file__),
        publishes=[COUPONS],
    )
