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


# ---------------------------------------------------------------------------------------------
# Rendering limits: the sandbox stops code, these stop cost (domain/rendering.py)
# ---------------------------------------------------------------------------------------------

BOMBS = {
    "repeat a constant (folded at compile time)": '{{ "x" * 10**9 }}',
    "repeat by a variable": '{% set n = 999999999 %}{{ "x" * n }}',
    "repeat by event data": '{{ "x" * (event.points * 8333333) }}',
    "power with a huge exponent": "{{ 9**(9**9) }}",
    "nested huge ranges": (
        "{% for a in range(100000) %}{% for b in range(100000) %}.{% endfor %}{% endfor %}"
    ),
    "nested ranges within the range limit": (
        "{% for a in range(10000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}x"
    ),
    "a loop over a huge range with output": "{% for i in range(10**9) %}{{ i }} {% endfor %}",
    "a long loop with output": "{% for i in range(10000) %}{{ i }} points and more, {% endfor %}",
    "concatenation in a loop": (
        '{% set ns = namespace(s="x") %}{% for i in range(100) %}'
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}"
    ),
    "addition in a loop": (
        '{% set ns = namespace(s="x") %}{% for i in range(100) %}'
        "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}"
    ),
    "concatenate then repeat": '{{ ("x" ~ "y") * 10**8 }}',
    "a recursive macro": "{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}",
    "a macro calling itself twice": (
        "{% macro m(n) %}{% if n %}{{ m(n - 1) }}{{ m(n - 1) }}{% endif %}{% endmacro %}{{ m(45) }}"
    ),
    "padding by a method": '{{ "x".ljust(999999999) }}',
    "padding by a filter": '{{ "x" | center(999999999) }}',
    "a format width": '{{ "{:>999999999}".format(1) }}',
    "a % format width": '{{ "%999999999s" % 1 }}',
    "one string held many times": (
        '{% set a = "x" * 200000 %}{% set l = [a, a, a, a, a, a, a, a, a, a, a, a] %}'
        '{{ l | join("") }}'
    ),
    "replace amplifies": '{% set a = "x" * 100000 %}{{ a | replace("", a) }}',
    "fixed text repeated inside a macro": (
        "{% macro m() %}{% for i in range(10000) %}" + "y" * 500 + "{% endfor %}{% endmacro %}"
        "{{ m() | length }}"
    ),
    "nested loops over a string": (
        '{% set s = "x" * 1000 %}{% macro m() %}{% for a in s %}{% for b in s %}{% for c in s %}'
        "{{ c }}{% endfor %}{% endfor %}{% endfor %}{% endmacro %}{{ m() }}"
    ),
    "a list that extends itself": (
        "{% set l = [1] %}{% for i in range(64) %}{{ l.extend(l) }}{% endfor %}{{ l | length }}"
    ),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("body", BOMBS.values(), ids=BOMBS.keys())
def test_costly_templates_are_refused_quickly(body: str) -> None:
    """Refused within a couple of seconds and a few megabytes (not by a MemoryError)."""
    import time
    import tracemalloc

    template = Template("points.credited", "sms", "en", None, body)
    started = time.monotonic()
    tracemalloc.start()
    try:
        with pytest.raises(InvalidTemplate) as caught:
            validate(template, sample_context("points.credited", "sms", "en"))
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.monotonic() - started < 3
    assert peak < 32 * 1024 * 1024, peak
    assert "MemoryError" not in str(caught.value)


def test_ordinary_templates_render_within_the_limits() -> None:
    context = message_context(
        {
            "order_id": "o1",
            "lines": [{"sku": f"SKU-{i}", "quantity": i + 1} for i in range(200)],
            "total_minor": 12900,
        },
        MEMBER,
        timezone="Asia/Shanghai",
        locale="en",
        message_type="order.paid",
        channel="sms",
    )
    body = (
        "{% macro line(l) %}{{ l.sku }}x{{ l.quantity }}{% endmacro %}"
        "{% macro wrap() %}{{ caller('in') }}{% endmacro %}"
        "{{ member.name ~ ', ' ~ 'thanks' }}! {{ event.total_minor | money }} "
        "{% for l in event.lines if l.quantity < 4 %}{{ line(l) }}"
        "{{ ', ' if not loop.last }}{% endfor %} · {{ event.lines | length }} lines · "
        "{{ '%05.1f' % 3.14159 }} {{ '{:,}'.format(1234567) }} {{ 'ab' * 3 }} {{ 2 ** 10 }} "
        "{{ [1, 2] + [3] }} {{ range(3) | map('string') | join('-') }} {{ 9**9**9 > 0 }} "
        "{% set tail %}{% for i in range(3) %}<{{ i }}>{% endfor %}{% endset %}{{ tail }} "
        "{% call(x) wrap() %}[{{ x }}]{% endcall %}"
    )
    rendered = render(Template("order.paid", "sms", "en", None, body), context)
    assert rendered.body.startswith("Ada, thanks! ¥129.00 SKU-0x1, SKU-1x2, SKU-2x3 · 200 lines")
    assert rendered.body.endswith("003.1 1,234,567 ababab 1024 [1, 2, 3] 0-1-2 True <0><1><2> [in]")


def test_the_limits_say_which_one_and_never_quote_the_data() -> None:
    from loyalty_shared.templating import LimitedSandbox, Limits, RenderLimitExceeded

    env = LimitedSandbox(limits=Limits(output_chars=100, range_items=50))
    cases = {
        "{% for i in range(40) %}{{ secret }}{% endfor %}": "output",
        "{{ range(51) | list }}": "range",
        "{{ secret * 1000000 }}": "value",
        "{{ 7 ** 100000 }}": "number",
    }
    for source, limit in cases.items():
        with pytest.raises(RenderLimitExceeded) as caught:
            env.from_string(source).render(secret="Ada Lovelace")
        assert caught.value.limit == limit, source
        assert "Ada" not in str(caught.value)
    assert env.from_string("{{ range(50) | sum }}").render() == "1225"


def test_a_template_error_keeps_its_kind_and_line_but_not_the_data() -> None:
    body = "Hello\n{{ member.name }}\n{{ member.name | localtime }}"
    with pytest.raises(InvalidTemplate) as caught:
        render(Template("points.credited", "sms", "en", None, body), {"member": MEMBER})
    error = caught.value
    assert "Ada" in str(error)  # the full error, for whoever saves a template (sample data)
    assert error.public == "template_error: ValueError at line 3"
    limited = Template("points.credited", "sms", "en", None, '\n{{ "x" * 10**9 }}')
    with pytest.raises(InvalidTemplate) as caught:
        render(limited, {})
    assert caught.value.public == "template_error: RenderLimitExceeded (value) at line 2"


async def test_a_costly_template_renders_off_the_event_loop() -> None:
    import asyncio
    import time

    from loyalty_notifier.domain.templates import validate_off_loop

    loop = asyncio.get_running_loop()
    lags: list[float] = []

    async def tick() -> None:
        while True:
            started = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - started - 0.01)

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    body = BOMBS["a macro calling itself twice"]
    with pytest.raises(InvalidTemplate):
        await validate_off_loop(
            Template("points.credited", "sms", "en", None, body),
            sample_context("points.credited", "sms", "en"),
        )
    took = time.monotonic() - started
    ticker.cancel()
    assert took < 3
    assert len(lags) >= 3 and max(lags) < 0.25, (took, max(lags))


def test_a_console_style_environment_keeps_unknown_fields_and_the_limits() -> None:
    from jinja2 import DebugUndefined
    from loyalty_shared.templating import LimitedSandbox, RenderLimitExceeded

    env = LimitedSandbox(undefined=DebugUndefined, autoescape=False)
    env.filters["shout"] = lambda s: s.upper() + "!"  # added later: guarded when used
    assert env.from_string("{{ nope }} {{ 'hi' | shout }}").render() == "{{ nope }} HI!"
    with pytest.raises(RenderLimitExceeded):
        env.from_string("{{ ('x' * 1000) | shout | center(10**9) }}").render()
