"""Providers that carry a message on a channel: SMTP email, HTTP webhooks (SMS, WeChat, push),
and a console provider that only logs. A provider raises ProviderError on failure, saying
whether trying again could help (timeouts, 5xx, 429) or not (a refused address, other 4xx)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Protocol

import aiosmtplib
import httpx
import structlog

from ..config import (
    ConsoleProviderConfig,
    ProviderConfig,
    SmtpProviderConfig,
    WebhookProviderConfig,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class OutgoingMessage:
    delivery_id: str
    member_id: str
    event_type: str
    channel: str
    to: str  # the address: phone, email, WeChat openid or push token; never logged
    subject: str | None
    body: str


_PERSONAL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+|\+?\d[\d -]{6,}\d")


def redact(detail: str) -> str:
    """A provider's error text without addresses or phone numbers: it is stored and published."""
    return _PERSONAL.sub("<redacted>", detail)


class ProviderError(Exception):
    def __init__(self, detail: str, *, permanent: bool = False) -> None:
        detail = redact(detail)
        super().__init__(detail)
        self.detail = detail
        self.permanent = permanent


class Provider(Protocol):
    name: str

    async def send(self, message: OutgoingMessage) -> None: ...


class ConsoleProvider:
    """Logs the message's ids and size instead of sending it (no address, no text: the text
    may hold the member's name; read it in the inbox)."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def send(self, message: OutgoingMessage) -> None:
        log.info(
            "notification_console",
            provider=self.name,
            delivery_id=message.delivery_id,
            member_id=message.member_id,
            event_type=message.event_type,
            channel=message.channel,
            chars=len(message.body),
        )


class SmtpProvider:
    def __init__(self, config: SmtpProviderConfig) -> None:
        self.name = config.name
        self.config = config

    async def send(self, message: OutgoingMessage) -> None:
        email = EmailMessage()
        email["From"] = self.config.sender
        email["To"] = message.to
        email["Subject"] = message.subject or ""
        email["Message-ID"] = make_msgid(idstring=message.delivery_id)
        email["X-Loyalty-Delivery"] = message.delivery_id
        email.set_content(message.body)
        c = self.config
        try:
            await aiosmtplib.send(
                email,
                hostname=c.host,
                port=c.port,
                username=c.username,
                password=c.password,
                use_tls=c.use_tls,
                start_tls=c.start_tls,
                timeout=c.timeout_seconds,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise ProviderError(f"recipient refused: {_codes(exc)}", permanent=True) from exc
        except aiosmtplib.SMTPResponseException as exc:
            permanent = 500 <= exc.code < 600
            raise ProviderError(
                f"smtp {exc.code}: {exc.message[:200]}", permanent=permanent
            ) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise ProviderError(f"smtp unavailable: {type(exc).__name__}") from exc


def _codes(exc: aiosmtplib.SMTPRecipientsRefused) -> str:
    return ", ".join(str(getattr(r, "code", "?")) for r in exc.recipients)


class WebhookProvider:
    """POSTs `{message_id, member_id, channel, event_type, to, subject, body}` as JSON with the
    delivery id as Idempotency-Key, so a retry after a lost answer sends nothing twice."""

    def __init__(
        self, config: WebhookProviderConfig, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.name = config.name
        self.config = config
        self.transport = transport

    async def send(self, message: OutgoingMessage) -> None:
        payload = {
            "message_id": message.delivery_id,
            "member_id": message.member_id,
            "channel": message.channel,
            "event_type": message.event_type,
            "to": message.to,
            "subject": message.subject,
            "body": message.body,
        }
        headers = {**self.config.headers, "Idempotency-Key": message.delivery_id}
        try:
            async with httpx.AsyncClient(
                transport=self.transport, timeout=self.config.timeout_seconds
            ) as client:
                response = await client.post(self.config.url, json=payload, headers=headers)
        except httpx.HTTPError as exc:
            raise ProviderError(f"webhook unavailable: {type(exc).__name__}") from exc
        if response.is_success:
            return
        status = response.status_code
        permanent = 400 <= status < 500 and status not in (408, 409, 425, 429)
        raise ProviderError(f"webhook answered {status}", permanent=permanent)


def build_provider(config: ProviderConfig) -> Provider:
    if isinstance(config, SmtpProviderConfig):
        return SmtpProvider(config)
    if isinstance(config, WebhookProviderConfig):
        return WebhookProvider(config)
    assert isinstance(config, ConsoleProviderConfig)
    return ConsoleProvider(config.name)


def build_providers(configs: dict[str, list[ProviderConfig]]) -> dict[str, list[Provider]]:
    return {channel: [build_provider(c) for c in chain] for channel, chain in configs.items()}
