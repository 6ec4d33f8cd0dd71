"""Use cases on templates: list the effective ones, save one after rendering it with sample
data, revert one to the built-in default."""

from __future__ import annotations

from typing import Any

from loyalty_shared.errors import NotFound, Unprocessable
from loyalty_shared.events import NOTIFICATIONS, REGISTRY
from loyalty_shared.service import Runtime
from sqlalchemy import text

from ..domain.policy import BUILTIN_KINDS, PAYMENT_REMINDER, WINBACK, category_of
from ..domain.templates import (
    BUILTIN,
    InvalidTemplate,
    Template,
    TemplateKey,
    message_context,
    validate_off_loop,
)
from .context import Notifier

_SAMPLE_MEMBER = {"name": "Sample Member", "tier": "silver", "card_no": "8800012345678"}
# Derived message types render with the data of the event they come from.
_SOURCE_OF = {PAYMENT_REMINDER: "order.placed", WINBACK: "member.lifecycle_changed"}


# Facts no member may ever be told about: telling the control group it is one spoils the
# comparison the holdout exists for.
NEVER_MESSAGED = frozenset({"coupon.holdout_assigned"})


def message_type_known(message_type: str) -> bool:
    if message_type in BUILTIN_KINDS:
        return True
    spec = REGISTRY.get(message_type)
    return spec is not None and spec.topic != NOTIFICATIONS and message_type not in NEVER_MESSAGED


def sample_event_data(message_type: str) -> dict[str, Any]:
    spec = REGISTRY[_SOURCE_OF.get(message_type, message_type)]
    extra = spec.model.model_config.get("json_schema_extra") or {}
    examples = extra.get("examples") if isinstance(extra, dict) else None
    if not examples:
        return {}
    data: dict[str, Any] = spec.model.model_validate(examples[0]).model_dump(mode="json")
    if message_type == WINBACK:
        data["new_stage"] = "easy_winback"
    return data


def sample_context(message_type: str, channel: str, locale: str) -> dict[str, Any]:
    return message_context(
        sample_event_data(message_type),
        _SAMPLE_MEMBER,
        timezone="Asia/Shanghai",
        locale=locale,
        message_type=message_type,
        channel=channel,
    )


def template_view(template: Template) -> dict[str, Any]:
    return {
        "event_type": template.message_type,
        "channel": template.channel,
        "locale": template.locale,
        "category": category_of(template.message_type),
        "subject": template.subject,
        "body": template.body,
        "source": "builtin" if template.builtin else "custom",
    }


async def effective_templates(
    runtime: Runtime, notifier: Notifier, event_type: str | None = None
) -> list[dict[str, Any]]:
    async with runtime.engine.connect() as conn:
        notifier.templates.invalidate()
        custom = await notifier.templates.get(conn)
    merged: dict[TemplateKey, Template] = {**BUILTIN, **custom}
    return [
        template_view(t)
        for key, t in sorted(merged.items())
        if event_type is None or key[0] == event_type
    ]


async def one_template(
    runtime: Runtime, notifier: Notifier, event_type: str, channel: str, locale: str
) -> dict[str, Any]:
    key = (event_type, channel, locale)
    async with runtime.engine.connect() as conn:
        notifier.templates.invalidate()
        custom = await notifier.templates.get(conn)
    template = custom.get(key) or BUILTIN.get(key)
    if template is None:
        raise NotFound(f"no template for {event_type} on {channel} in {locale}")
    return template_view(template)


async def save_template(
    runtime: Runtime,
    notifier: Notifier,
    event_type: str,
    channel: str,
    locale: str,
    subject: str | None,
    body: str,
) -> dict[str, Any]:
    if not message_type_known(event_type):
        raise Unprocessable(
            "invalid_template",
            f"unknown event type '{event_type}'",
            errors=[{"loc": ["path", "event_type"], "msg": "not an event or message type"}],
        )
    template = Template(event_type, channel, locale, subject, body)
    try:
        # off the event loop, within the rendering limits (time, size, steps): a template that
        # cannot render within them is refused here rather than failing every delivery later
        await validate_off_loop(template, sample_context(event_type, channel, locale))
    except InvalidTemplate as exc:
        raise Unprocessable(
            "invalid_template",
            f"the template cannot be used: {exc}",
            errors=[{"loc": ["body"], "msg": str(exc)}],
        ) from exc
    async with runtime.transaction() as conn:
        await conn.execute(
            text(
                "INSERT INTO templates (event_type, channel, locale, subject, body, updated_at) "
                "VALUES (:t, :c, :l, :s, :b, :now) ON CONFLICT (event_type, channel, locale) "
                "DO UPDATE SET subject = EXCLUDED.subject, body = EXCLUDED.body, "
                "updated_at = EXCLUDED.updated_at"
            ),
            {
                "t": event_type,
                "c": channel,
                "l": locale,
                "s": subject,
                "b": body,
                "now": runtime.clock.now(),
            },
        )
    notifier.templates.invalidate()
    return template_view(template)


async def delete_template(
    runtime: Runtime, notifier: Notifier, event_type: str, channel: str, locale: str
) -> None:
    async with runtime.transaction() as conn:
        deleted = await conn.scalar(
            text(
                "DELETE FROM templates WHERE event_type = :t AND channel = :c AND locale = :l "
                "RETURNING 1"
            ),
            {"t": event_type, "c": channel, "l": locale},
        )
    notifier.templates.invalidate()
    if not deleted:
        raise NotFound(f"no custom template for {event_type} on {channel} in {locale}")
