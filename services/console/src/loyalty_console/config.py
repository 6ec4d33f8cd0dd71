"""The console's settings: where the five services are, and how long a sign-in lasts."""

from __future__ import annotations

from loyalty_shared.settings import SERVICE_PORT_OFFSETS, PlatformSettings
from pydantic_settings import BaseSettings, SettingsConfigDict

NEIGHBOURS = ("member", "points", "coupon", "notifier", "segmenter")


class ConsoleSettings(BaseSettings):
    """`CONSOLE_*` variables; the ports come from `LOYALTY_PORT_BASE` like every service's."""

    model_config = SettingsConfigDict(env_prefix="CONSOLE_", extra="ignore")

    member_url: str = ""  # default http://127.0.0.1:<LOYALTY_PORT_BASE + 1>
    points_url: str = ""  # + 2
    coupon_url: str = ""  # + 3
    notifier_url: str = ""  # + 4
    segmenter_url: str = ""  # + 5
    http_timeout_seconds: float = 10.0
    session_idle_minutes: int = 480  # a shift at the till
    max_sessions: int = 10_000

    def url_of(self, service: str, platform: PlatformSettings) -> str:
        explicit = getattr(self, f"{service}_url")
        if explicit:
            return str(explicit).rstrip("/")
        return f"http://127.0.0.1:{platform.port_base + SERVICE_PORT_OFFSETS[service]}"
