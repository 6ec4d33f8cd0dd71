"""Messages: the notifier's templates with a preview on sample data, and the delivery log."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.responses import Response
from jinja2 import DebugUndefined
from loyalty_shared.templating import LimitedSandbox, run_off_loop

from ..i18n import TIMEZONE
from ..neighbours import ApiError
from ..web import ActionDep, Console, PageDep, text

router = APIRouter()

CHANNELS = ["inbox", "sms", "email", "wechat", "push"]
LOCALES = ["zh-CN", "en"]
DELIVERY_STATUSES = ["queued", "deferred", "sent", "failed", "suppressed"]

# Sample data for the preview: the fields the platform's events carry, with plausible values.
SAMPLE_EVENT: dict[str, Any] = {
    "member_id": "01JSAMPLEMEMBER0000000000",
    "points": 120,
    "available_after": 1380,
    "pending_after": 0,
    "expires_at": "2027-11-30T16:00:00Z",
    "available_at": "2026-12-07T02:00:00Z",
    "on": "2026-12-31",
    "coupon_code": "CPN-7H2K-9QX4",
    "kind": "amount_off",
    "value": 2000,
    "currency": "CNY",
    "min_spend_minor": 10000,
    "max_discount_minor": None,
    "gift_sku": None,
    "name": "20 yuan off 100",
    "valid_from": "2026-12-01T00:00:00Z",
    "valid_until": "2026-12-31T16:00:00Z",
    "campaign_code": "WELCOME",
    "template_code": "NEW-20OFF",
    "order_id": "01JSAMPLEORDER00000000000",
    "external_id": "POS-SH001-20261201-0042",
    "total_minor": 12800,
    "paid_minor": 12800,
    "carrier": "SF Express",
    "tracking_no": "SF1402837746512",
    "old_tier": "silver",
    "new_tier": "gold",
    "tier": "gold",
    "reason": "upgrade",
    "card_no": "8000123412341234",
    "referral_code": "ABCD2345",
    "old_stage": "cooling",
    "new_stage": "easy_winback",
    "lifecycle_stage": "easy_winback",
    "occurred_at": "2026-12-01T02:15:00Z",
    "registered_at": "2026-12-01T02:15:00Z",
}
SAMPLE_MEMBER = {"name": "王小美", "tier": "gold", "card_no": "8000123412341234"}


def _time(value: Any) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(TIMEZONE)


def _money(minor: Any, currency: str = "CNY") -> str:
    symbol = {"CNY": "¥", "USD": "$", "EUR": "€"}.get(currency or "CNY", f"{currency} ")
    return f"{symbol}{Decimal(int(minor or 0)) / 100:.2f}"


def render_preview(subject: str, body: str, locale: str, channel: str) -> tuple[str, str]:
    """The template on sample data, like the notifier renders it (sandboxed). Fields the
    sample lacks stay as written; the notifier checks the template for real when it is saved."""
    env = LimitedSandbox(undefined=DebugUndefined, autoescape=False)  # the notifier's limits
    env.filters["money"] = _money
    env.filters["localdate"] = lambda v: t.date().isoformat() if (t := _time(v)) else str(v)
    env.filters["localtime"] = lambda v: t.strftime("%Y-%m-%d %H:%M") if (t := _time(v)) else str(v)
    context = {
        "event": SAMPLE_EVENT,
        "member": SAMPLE_MEMBER,
        "timezone": "Asia/Shanghai",
        "locale": locale,
        "channel": channel,
    }
    rendered_subject = env.from_string(subject).render(context) if subject else ""
    return rendered_subject, env.from_string(body).render(context)


@router.get("/messages", include_in_schema=False)
async def templates(console: PageDep, event_type: str = "") -> Response:
    console.require("members:read")
    page = await console.api.get("notifier", "/v1/templates", event_type=event_type or None)
    items = page.get("items", [])
    types = sorted({i["event_type"] for i in items})
    return console.render(
        "messages/templates.html", items=items, types=types, event_type=event_type
    )


async def _editor(
    console: Console,
    event_type: str,
    channel: str,
    locale: str,
    *,
    status: int = 200,
    values: dict[str, str] | None = None,
    error: str | None = None,
    preview: tuple[str, str] | None = None,
) -> Response:
    current: dict[str, Any] | None
    try:
        current = await console.api.get(
            "notifier", f"/v1/templates/{quote(event_type)}/{quote(channel)}/{quote(locale)}"
        )
    except ApiError as exc:
        if exc.status != 404:
            raise
        current = None
    if values is None:
        values = {
            "subject": (current or {}).get("subject") or "",
            "body": (current or {}).get("body") or "",
        }
    return console.render(
        "messages/edit.html",
        status,
        event_type=event_type,
        channel=channel,
        tpl_locale=locale,
        current=current,
        values=values,
        error=error,
        preview=preview,
        channels=CHANNELS,
        tpl_locales=LOCALES,
    )


@router.get("/messages/templates/{event_type}/{channel}/{locale}", include_in_schema=False)
async def edit_template(console: PageDep, event_type: str, channel: str, locale: str) -> Response:
    console.require("members:read")
    return await _editor(console, event_type, channel, locale)


@router.post("/messages/templates/{event_type}/{channel}/{locale}", include_in_schema=False)
async def save_template(console: ActionDep, event_type: str, channel: str, locale: str) -> Response:
    form = await console.request.form()
    values = {"subject": text(form, "subject"), "body": form.get("body") or ""}
    values["body"] = values["body"] if isinstance(values["body"], str) else ""
    do = text(form, "do")
    if do == "preview":
        try:
            preview = await run_off_loop(
                render_preview, values["subject"], values["body"], locale, channel
            )
        except Exception as exc:  # template errors, the limits, `1 + "x"`...: shown inline
            return await _editor(
                console,
                event_type,
                channel,
                locale,
                status=422,
                values=values,
                error=f"{type(exc).__name__}: {exc}",
            )
        return await _editor(console, event_type, channel, locale, values=values, preview=preview)
    console.require("notify:write")
    path = f"/v1/templates/{quote(event_type)}/{quote(channel)}/{quote(locale)}"
    try:
        if do == "reset":
            await console.api.call("notifier", "DELETE", path)
            console.session.say("ok", console._("The built-in template applies again."))
        else:
            body = {"body": values["body"], "subject": values["subject"] or None}
            await console.api.call("notifier", "PUT", path, json=body)
            console.session.say("ok", console._("Template saved."))
    except ApiError as exc:
        if exc.status == 401 or (exc.status >= 500 and exc.code != "service_unavailable"):
            raise
        return await _editor(
            console,
            event_type,
            channel,
            locale,
            status=min(exc.status, 503),
            values=values,
            error=exc.detail,
        )
    return console.redirect(f"/messages/templates/{path.removeprefix('/v1/templates/')}")


@router.get("/messages/deliveries", include_in_schema=False)
async def deliveries(
    console: PageDep, member_id: str = "", status: str = "", event_id: str = "", cursor: str = ""
) -> Response:
    console.require("members:read")
    page = await console.api.get(
        "notifier",
        "/v1/deliveries",
        member_id=member_id,
        event_id=event_id,
        status=status if status in DELIVERY_STATUSES else None,
        cursor=cursor,
        limit=50,
    )
    return console.render(
        "messages/deliveries.html",
        page=page,
        member_id=member_id,
        status_filter=status,
        event_id=event_id,
        statuses=DELIVERY_STATUSES,
    )
