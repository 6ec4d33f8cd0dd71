"""Wires the notifier service: settings, providers, the member directory, routes, topics,
handlers and jobs. Tests call `build` with their own settings, providers or member API."""

from __future__ import annotations

import httpx
from loyalty_shared.db import migrations_dir
from loyalty_shared.events import COUPONS, MEMBERS, NOTIFICATIONS, ORDERS, POINTS, SEGMENTS
from loyalty_shared.service import ServiceDefinition

import loyalty_notifier

from .adapters.member_directory import MemberDirectory
from .adapters.providers import Provider, build_providers
from .config import NotifierSettings
from .entrypoints import deliveries, preferences, templates
from .service_layer.context import Notifier
from .service_layer.intake import handlers
from .service_layer.jobs import jobs


def build(
    settings: NotifierSettings | None = None,
    *,
    providers: dict[str, list[Provider]] | None = None,
    member_transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[ServiceDefinition, Notifier]:
    settings = settings or NotifierSettings()
    notifier = Notifier(
        settings=settings,
        providers=providers if providers is not None else build_providers(settings.providers),
        directory=MemberDirectory(
            settings.resolved_member_url(),
            settings.resolved_member_api_key(),
            ttl=settings.member_cache_seconds,
            timeout=settings.member_timeout_seconds,
            transport=member_transport,
        ),
    )
    definition = ServiceDefinition(
        name="notifier",
        title="Loyalty notifier service",
        description="Templates, preferences and consent, deliveries, inbox.",
        migrations=migrations_dir(loyalty_notifier.__file__),
        routers=[templates.router(notifier), preferences.router(notifier), deliveries.router],
        publishes=[NOTIFICATIONS],
        consumes=[MEMBERS, ORDERS, POINTS, COUPONS, SEGMENTS],
        handlers=handlers(notifier),
        jobs=jobs(notifier),
    )
    return definition, notifier


def definition() -> ServiceDefinition:
    return build()[0]
