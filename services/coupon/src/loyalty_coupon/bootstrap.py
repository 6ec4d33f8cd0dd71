"""Wires the coupon service: routes, topics, handlers, jobs, and its neighbours' clients."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from loyalty_shared.db import migrations_dir
from loyalty_shared.events import COUPONS, MEMBERS, ORDERS, SEGMENTS
from loyalty_shared.service import ServiceDefinition

import loyalty_coupon

from .adapters.neighbours import Neighbours
from .config import CouponSettings
from .entrypoints import catalog, checkout
from .service_layer.jobs import JOBS
from .service_layer.triggers import handlers


@dataclass
class CouponDefinition(ServiceDefinition):
    """The service definition plus where the points service, the segmenter and the member
    service are."""

    neighbours: Neighbours = field(default_factory=Neighbours)


def definition(
    *,
    settings: CouponSettings | None = None,
    points_transport: httpx.AsyncBaseTransport | None = None,
    segmenter_transport: httpx.AsyncBaseTransport | None = None,
    member_transport: httpx.AsyncBaseTransport | None = None,
) -> CouponDefinition:
    return CouponDefinition(
        name="coupon",
        title="Loyalty coupon service",
        description="Coupon templates, campaigns, issued coupons, validation and redemption.",
        migrations=migrations_dir(loyalty_coupon.__file__),
        routers=[catalog.router, checkout.router],
        publishes=[COUPONS],
        consumes=[MEMBERS, ORDERS, SEGMENTS],
        handlers=handlers,
        jobs=JOBS,
        neighbours=Neighbours(
            settings=settings or CouponSettings(),
            points_transport=points_transport,
            segmenter_transport=segmenter_transport,
            member_transport=member_transport,
        ),
    )
