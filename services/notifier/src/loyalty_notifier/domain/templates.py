"""Message templates: sandboxed Jinja2 per (message type, channel, locale), built-in defaults,
resolution with locale fallback, rendering and save-time validation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, pass_context
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

from .builtin_templates import EMAIL_FRAME, SMS_BRAND, TEXTS
from .policy import CHANNELS, DEFAULT_LOCALE, LOCALES, zone

MAX_BODY = 20_000
MAX_SUBJECT = 500

TemplateKey = tuple[str, str, str]  # (message type, channel, locale)


@dataclass(frozen=True)
class Template:
    message_type: str
    channel: str
    locale: str
    subject: str | None
    body: str
    builtin: bool = False

    @property
    def key(self) -> TemplateKey:
        return (self.message_type, self.channel, self.locale)


@dataclass(frozen=True)
class Rendered:
    subject: str | None
    body: str


class InvalidTemplate(Exception):
    """A template that cannot be used: it does not compile, fails on sample data, or names an
    unknown channel or locale."""


def _channel_template(channel: str, subject: str, body: str, locale: str) -> tuple[str | None, str]:
    if channel == "email":
        greeting, sign = EMAIL_FRAME[locale]
        return subject, f"{greeting}\n\n{body}\n\n{sign}\n"
    if channel == "sms":
        return None, SMS_BRAND[locale] + body
    return subject, body


def _builtins() -> dict[TemplateKey, Template]:
    templates: dict[TemplateKey, Template] = {}
    for (message_type, locale), (subject, body) in TEXTS.items():
        for channel in CHANNELS:
            s, b = _channel_template(channel, subject, body, locale)
            templates[(message_type, channel, locale)] = Template(
                message_type, channel, locale, s, b, builtin=True
            )
    return templates


BUILTIN: dict[TemplateKey, Template] = _builtins()


def resolve(
    custom: Mapping[TemplateKey, Template], message_type: str, channel: str, locale: str
) -> Template | None:
    """The template for a message: the operator's over the built-in one, in the member's
    locale, else the default locale, else any locale."""
    for candidate in dict.fromkeys((locale, DEFAULT_LOCALE, *LOCALES)):
        key = (message_type, channel, candidate)
        found = custom.get(key) or BUILTIN.get(key)
        if found is not None:
            return found
    return None


def channels_with_template(
    custom_keys: set[TemplateKey] | Mapping[TemplateKey, Any], message_type: str
) -> set[str]:
    return {c for (t, c, _) in (*BUILTIN, *custom_keys) if t == message_type}


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def money(minor: int | None, currency: str = "CNY") -> str:
    """Integer minor units as an amount: 1990 → ¥19.90."""
    if minor is None:
        return ""
    sign = "-" if minor < 0 else ""
    units, cents = divmod(abs(int(minor)), 100)
    if currency == "CNY":
        return f"{sign}¥{units}.{cents:02d}"
    return f"{sign}{units}.{cents:02d} {currency}"


def _as_datetime(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


@pass_context
def localtime(context: Context, value: Any, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """An RFC 3339 time in the member's own time zone."""
    at = _as_datetime(value)
    if at is None:
        return ""
    return at.astimezone(zone(context.get("timezone"))).strftime(fmt)


@pass_context
def localdate(context: Context, value: Any) -> str:
    return str(localtime(context, value, "%Y-%m-%d"))


def _environment() -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False
    )
    env.filters.update(money=money, localtime=localtime, localdate=localdate)
    return env


_ENV = _environment()


@lru_cache(maxsize=1024)
def _compile(source: str) -> Any:
    return _ENV.from_string(source)


def render(template: Template, context: Mapping[str, Any]) -> Rendered:
    """Render a template; raises InvalidTemplate saying why it cannot be."""
    try:
        subject = _compile(template.subject).render(context) if template.subject else None
        body = _compile(template.body).render(context)
    except TemplateError as exc:
        raise InvalidTemplate(f"{type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # a filter given the wrong type, a division by zero...
        raise InvalidTemplate(f"{type(exc).__name__}: {exc}") from exc
    return Rendered(subject.strip() if subject else None, body.strip())


def validate(template: Template, sample: Mapping[str, Any]) -> Rendered:
    """Check a template before it is saved: known channel and locale, sizes, and that it
    renders with sample data for its message type."""
    if template.channel not in CHANNELS:
        raise InvalidTemplate(f"unknown channel '{template.channel}'; use one of {list(CHANNELS)}")
    if template.locale not in LOCALES:
        raise InvalidTemplate(f"unknown locale '{template.locale}'; use one of {list(LOCALES)}")
    if len(template.body) > MAX_BODY or len(template.subject or "") > MAX_SUBJECT:
        raise InvalidTemplate(f"the body may hold {MAX_BODY} and the subject {MAX_SUBJECT} chars")
    if template.channel == "email" and not (template.subject or "").strip():
        raise InvalidTemplate("an email template needs a subject")
    rendered = render(template, sample)
    if not rendered.body:
        raise InvalidTemplate("the body renders to an empty message")
    return rendered


def message_context(
    event: Mapping[str, Any],
    member: Mapping[str, Any] | None,
    *,
    timezone: str,
    locale: str,
    message_type: str,
    channel: str,
) -> dict[str, Any]:
    """What a template sees. `member` holds only what messages need (name, tier, card_no)."""
    member = member or {}
    return {
        "event": dict(event),
        "member": {
            "name": member.get("name"),
            "tier": member.get("tier"),
            "card_no": member.get("card_no"),
        },
        "timezone": timezone,
        "locale": locale,
        "message_type": message_type,
        "channel": channel,
    }
