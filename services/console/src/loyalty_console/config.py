"""The console's settings: where the five services are, the session secret and how long a
sign-in lasts, which proxies are believed about the client's address and scheme, and the
sign-in throttle."""

from __future__ import annotations

from typing import Literal

from loyalty_shared.settings import SERVICE_PORT_OFFSETS, PlatformSettings
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .sessions import parse_secrets

NEIGHBOURS = ("member", "points", "coupon", "notifier", "segmenter")


class ConsoleSettings(BaseSettings):
    """`CONSOLE_*` variables; the ports come from `LOYALTY_PORT_BASE` like every service's."""

    model_config = SettingsConfigDict(env_prefix="CONSOLE_", extra="ignore", populate_by_name=True)

    member_url: str = ""  # default http://127.0.0.1:<LOYALTY_PORT_BASE + 1>
    points_url: str = ""  # + 2
    coupon_url: str = ""  # + 3
    notifier_url: str = ""  # + 4
    segmenter_url: str = ""  # + 5
    http_timeout_seconds: float = 10.0
    # Sessions travel sealed in a cookie (sessions.py says why): comma-separated secrets, the
    # first seals, all open. Empty: one made up per process (`make run`): sessions end at a
    # restart and are not shared, so several replicas need this set, to the same value.
    session_secret: SecretStr = SecretStr("")
    # A sign-in ends after this long without a request, or this long after it, whichever comes
    # first. Short, because a copied cookie cannot be revoked before then (sign-out deletes the
    # browser's own).
    session_idle_minutes: int = Field(default=30, ge=1)
    session_max_hours: float = Field(default=12, gt=0)
    # Failed sign-ins one client address may make per minute before it waits (429); 0: off.
    signin_failures_per_minute: int = Field(default=10, ge=0)
    # `auto`: cookies are Secure when the request came over https, as the connection or a
    # trusted proxy (FORWARDED_ALLOW_IPS) says; `true`: always (a console served only over TLS).
    cookie_secure: Literal["auto", "true"] = "auto"
    # Addresses or networks (comma-separated, `*` for any) whose X-Forwarded-Proto and
    # X-Forwarded-For uvicorn believes: uvicorn's own variable, without the CONSOLE_ prefix.
    forwarded_allow_ips: str = Field(
        default="127.0.0.1",
        validation_alias=AliasChoices("FORWARDED_ALLOW_IPS", "forwarded_allow_ips"),
    )

    @field_validator("session_secret")
    @classmethod
    def _secrets_long_enough(cls, value: SecretStr) -> SecretStr:
        parse_secrets(value.get_secret_value())
        return value

    def session_secrets(self) -> list[str]:
        """The secrets of CONSOLE_SESSION_SECRET, the sealing one first; [] when unset."""
        return parse_secrets(self.session_secret.get_secret_value())

    def url_of(self, service: str, platform: PlatformSettings) -> str:
        explicit = getattr(self, f"{service}_url")
        if explicit:
            return str(explicit).rstrip("/")
        return f"http://127.0.0.1:{platform.port_base + SERVICE_PORT_OFFSETS[service]}"
