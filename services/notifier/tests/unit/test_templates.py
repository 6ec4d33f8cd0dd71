"""Templates: built-in defaults for every kind, channel and locale; the sandbox; validation."""

from __future__ import annotations

import pytest
from loyalty_notifier.domain.policy import BUILTIN_KINDS, CHANNELS, LOCALES
from loyalty_notifier.domain.templates import (
    BUILTIN,
    InvalidTemplate,
    Template,
    message_context,
    money,
    render,
    resolve,
    validate,
)
from loyalty_notifier.service_layer.templates import sample_context

MEMBER = {"name": "Ada", "tier": "gold", "card_no": "8800012345678"}


@pytest.mark.parametrize("message_type", sorted(BUILTIN_KINDS))
@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("locale", LOCALES)
def test_every_builtin_renders(message_type: str, channel: str, locale: str) -> None:
    template = BUILTIN[(message_type, channel, locale)]
    rendered = validate(template, sample_context(message_type, channel, locale))
    assert rendered.body and "{{" not in rendered.body
    if channel == "email":
        assert rendered.subject


def test_rendering_uses_event_member_and_time_zone() -> None:
    context = message_context(
        {
            "points": 120,
            "available_after": 340,
            "status": "pending",
            "available_at": "2026-03-09T17:00:00Z",
        },
        MEMBER,
        timezone="Asia/Shanghai",
        locale="en",
        message_type="points.credited",
        channel="email",
    )
    rendered = render(BUILTIN[("points.credited", "email", "en")], context)
    assert rendered.subject == "Points credited"
    assert "Hello Ada," in rendered.body
    assert "You earned 120 points (usable from 2026-03-10)" in rendered.body  # 01:00 Shanghai


def test_locale_falls_back_to_the_default() -> None:
    custom = {
        ("order.shipped", "sms", "zh-CN"): Template("order.shipped", "sms", "zh-CN", None, "x")
    }
    assert resolve(custom, "order.shipped", "sms", "zh-CN").body == "x"
    assert resolve(custom, "order.shipped", "sms", "en").builtin  # the built-in en one
    only_zh = {("order.paid", "sms", "zh-CN"): Template("order.paid", "sms", "zh-CN", None, "y")}
    assert resolve(only_zh, "order.paid", "sms", "en").body == "y"
    assert resolve({}, "order.paid", "sms", "en") is None


def test_money() -> None:
    assert money(1990) == "¥19.90"
    assert money(5, "USD") == "0.05 USD"
    assert money(-250) == "-¥2.50"


@pytest.mark.parametrize(
    "body",
    [
        "{{ event.points ",  # does not compile
        "{{ event.no_such_field }}",  # undefined on sample data
        "{{ ''.__class__.__mro__ }}",  # unsafe in the sandbox
        "{{ event.points | no_such_filter }}",
        "{% if %}",
        "   ",  # renders to nothing
    ],
)
def test_invalid_templates_are_refused(body: str) -> None:
    template = Template("points.credited", "sms", "en", None, body)
    with pytest.raises(InvalidTemplate):
        validate(template, sample_context("points.credited", "sms", "en"))


def test_email_needs_a_subject_and_channels_and_locales_are_checked() -> None:
    ctx = sample_context("order.shipped", "email", "en")
    with pytest.raises(InvalidTemplate, match="subject"):
        validate(Template("order.shipped", "email", "en", None, "hi"), ctx)
    with pytest.raises(InvalidTemplate, match="channel"):
        validate(Template("order.shipped", "fax", "en", None, "hi"), ctx)
    with pytest.raises(InvalidTemplate, match="locale"):
        validate(Template("order.shipped", "sms", "fr", None, "hi"), ctx)
