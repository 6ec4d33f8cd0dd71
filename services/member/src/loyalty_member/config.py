"""Settings of the member service (env prefix MEMBER_ for its own, LOYALTY_ for the platform's)."""

from loyalty_shared.settings import ServiceSettings


def settings() -> ServiceSettings:
    return ServiceSettings.for_service("member")
