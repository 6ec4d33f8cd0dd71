"""Settings of the notifier service (env prefix NOTIFIER_ for its own, LOYALTY_ for the
platform's): where contact data comes from, providers per channel, retries, caps, delays."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from loyalty_shared.auth import key_with_scope
from loyalty_shared.settings import SERVICE_PORT_OFFSETS, PlatformSettings
from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .domain.policy import FrequencyCap, QuietHours, RetryPolicy


class SmtpProviderConfig(BaseModel):
    """Email over SMTP (aiosmtplib)."""

    kind: Literal["smtp"] = "smtp"
    name: str = "smtp"
    host: str = "127.0.0.1"
    port: int = 25
    sender: str = "Loyalty <no-reply@loyalty.example>"
    username: str | None = None
    password: str | None = None
    use_tls: bool = Field(default=False, description="TLS from the start (usually port 465)")
    start_tls: bool | None = Field(default=None, description="STARTTLS; None: when offered")
    timeout_seconds: float = 10.0


class WebhookProviderConfig(BaseModel):
    """An HTTP provider (SMS gateway, WeChat template messages, push): POSTs a JSON message."""

    kind: Literal["webhook"] = "webhook"
    name: str
    url: str
    headers: dict[str, str] = Field(default_factory=dict, description="e.g. Authorization")
    timeout_seconds: float = 10.0


class ConsoleProviderConfig(BaseModel):
    """Logs that a message would be sent (ids and sizes only), for `make run`."""

    kind: Literal["console"] = "console"
    name: str = "console"


ProviderConfig = Annotated[
    SmtpProviderConfig | WebhookProviderConfig | ConsoleProviderConfig,
    Field(discriminator="kind"),
]


def _console_everywhere() -> dict[str, list[ProviderConfig]]:
    return {
        channel: [ConsoleProviderConfig(name=f"console-{channel}")]
        for channel in ("email", "sms", "wechat", "push")
    }


class NotifierSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NOTIFIER_", extra="ignore")

    member_url: str = Field(
        default="", description="base URL of the member service; default 127.0.0.1:<base+1>"
    )
    member_api_key: str = Field(
        default="", description="API key with members:read; default: one from LOYALTY_API_KEYS"
    )
    member_timeout_seconds: float = 5.0
    member_cache_seconds: float = 60.0
    providers: dict[str, list[ProviderConfig]] = Field(
        default_factory=_console_everywhere,
        description="ordered providers per channel (email, sms, wechat, push), as JSON",
    )
    retry_attempts: int = Field(default=3, ge=1, description="attempts per provider")
    retry_base_seconds: float = Field(default=2.0, gt=0)
    retry_max_seconds: float = Field(default=300.0, gt=0)
    cap_per_day: int = Field(default=2, ge=0)
    cap_per_week: int = Field(default=5, ge=0)
    quiet_start: str = "22:00"
    quiet_end: str = "08:00"
    payment_reminder_minutes: int = Field(default=30, ge=1)
    payment_reminder_horizon_hours: int = Field(
        default=24, ge=1, description="reminders overdue by more than this are dropped"
    )
    dispatch_batch_size: int = Field(default=200, ge=1)
    dispatch_concurrency: int = Field(default=20, ge=1)
    dispatch_every_seconds: float = Field(default=2.0, gt=0)

    @field_validator("providers")
    @classmethod
    def _every_channel(
        cls, value: dict[str, list[ProviderConfig]]
    ) -> dict[str, list[ProviderConfig]]:
        unknown = set(value) - {"email", "sms", "wechat", "push"}
        if unknown:
            raise ValueError(f"providers for unknown channels {sorted(unknown)}")
        return {**_console_everywhere(), **value}  # channels left out keep the console

    def resolved_member_url(self) -> str:
        if self.member_url:
            return self.member_url.rstrip("/")
        platform = PlatformSettings()
        return f"http://127.0.0.1:{platform.port_base + SERVICE_PORT_OFFSETS['member']}"

    def resolved_member_api_key(self) -> str:
        if self.member_api_key:
            return self.member_api_key
        return key_with_scope(PlatformSettings().api_keys, "members:read")

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(
            attempts_per_provider=self.retry_attempts,
            base_delay=timedelta(seconds=self.retry_base_seconds),
            max_delay=timedelta(seconds=self.retry_max_seconds),
        )

    @property
    def cap(self) -> FrequencyCap:
        return FrequencyCap(per_day=self.cap_per_day, per_week=self.cap_per_week)

    @property
    def quiet_hours(self) -> QuietHours:
        return QuietHours.parse(self.quiet_start, self.quiet_end)
