"""Message templates: sandboxed Jinja2 per (message type, channel, locale), built-in defaults,
resolution with locale fallback, rendering and save-time validation.

Templates render in `rendering.LimitedSandbox` (limits on time, size and steps; see there), off
the event loop (`render_off_loop`, `validate_off_loop`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, pass_context
from jinja2.runtime import Context
from loyalty_shared.templating import (
    DEFAULT_LIMITS,
    LimitedSandbox,
    RenderLimitExceeded,
    budget,
    run_off_loop,
)

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
    """A template that cannot be used: it does not compile, fails on sample data, is over the
    rendering limits, or names an unknown channel or locale.

    `str(exc)` is the full explanation, for whoever saves the template (it may quote the data it
    was rendered with: only sample data at save time). `public` is what may be stored and
    published about a failure at send time: the kind of error and where in the template, never
    a value of the message's context (a member's name can turn up in an error's message)."""

    def __init__(self, detail: str, *, kind: str = "InvalidTemplate", line: int | None = None):
        super().__init__(detail)
        self.kind = kind
        self.line = line

    @classmethod
    def from_error(cls, exc: BaseException) -> InvalidTemplate:
        kind = type(exc).__name__
        if isinstance(exc, RenderLimitExceeded):
            kind = f"{kind} ({exc.limit})"
        return cls(f"{type(exc).__name__}: {exc}", kind=kind, line=_template_line(exc))

    @property
    def public(self) -> str:
        where = f" at line {self.line}" if self.line else ""
        return f"template_error: {self.kind}{where}"


def _template_line(exc: BaseException) -> int | None:
    """The template line an error was raised at: Jinja2 rewrites tracebacks so that template
    code appears as frames of the file `<template>`."""
    if isinstance(exc, TemplateSyntaxError):
        return exc.lineno
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


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


def _environment() -> LimitedSandbox:
    env = LimitedSandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
    env.filters.update(money=money, localtime=localtime, localdate=localdate)
    return env


_ENV = _environment()


@lru_cache(maxsize=1024)
def _compile(source: str) -> Any:
    return _ENV.from_string(source)


def render(template: Template, context: Mapping[str, Any]) -> Rendered:
    """Render a template (subject and body under one budget of `rendering.DEFAULT_LIMITS`);
    raises InvalidTemplate saying why it cannot be. Blocks for up to the time limit: from async
    code use `render_off_loop`."""
    try:
        with budget(DEFAULT_LIMITS):
            subject = _compile(template.subject).render(context) if template.subject else None
            body = _compile(template.body).render(context)
    except Exception as exc:  # template errors, limits, a filter given the wrong type...
        raise InvalidTemplate.from_error(exc) from exc
    return Rendered(subject.strip() if subject else None, body.strip())


async def render_off_loop(template: Template, context: Mapping[str, Any]) -> Rendered:
    """`render` in a template worker thread: the event loop goes on serving meanwhile."""
    try:
        return await run_off_loop(render, template, context)
    except RenderLimitExceeded as exc:  # gave up waiting for the worker
        raise InvalidTemplate.from_error(exc) from exc


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


async def validate_off_loop(template: Template, sample: Mapping[str, Any]) -> Rendered:
    """`validate` in a template worker thread."""
    try:
        return await run_off_loop(validate, template, sample)
    except RenderLimitExceeded as exc:
        raise InvalidTemplate.from_error(exc) from exc


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
