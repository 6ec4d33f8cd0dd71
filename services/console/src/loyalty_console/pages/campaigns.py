"""Coupon templates and campaigns, bulk issue with its progress, and campaign results."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..i18n import TIMEZONE
from ..neighbours import ApiError, gather_sections
from ..web import ActionDep, Console, FormError, PageDep, _console, money_minor, required, text

router = APIRouter()

TRIGGERS = [
    "manual",
    "member.registered",
    "first_order",
    "nth_order",
    "segment.entered",
    "tier_changed",
    "birthday",
    "checkin_streak",
]
KINDS = ["amount_off", "percent_off", "free_shipping", "gift"]


async def _overview(
    console: Console,
    *,
    status: int = 200,
    form: str | None = None,
    error: str | None = None,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
) -> Response:
    api = console.api
    s = await gather_sections(
        templates=api.get("coupon", "/v1/coupon-templates", limit=200),
        campaigns=api.get("coupon", "/v1/campaigns", limit=200),
        segments=api.get("segmenter", "/v1/segments", limit=200),
    )
    return console.render(
        "campaigns/list.html",
        status,
        s=s,
        triggers=TRIGGERS,
        kinds=KINDS,
        form=form,
        error=error,
        errors=errors or {},
        values=values or {},
    )


@router.get("/campaigns", include_in_schema=False)
async def overview(console: PageDep) -> Response:
    console.require("members:read")
    return await _overview(console)


def _local_time(form: Any, name: str, message: str) -> str | None:
    raw = text(form, name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise FormError(name, message) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=TIMEZONE)
    return value.isoformat()


def _optional_int(form: Any, name: str, message: str) -> int | None:
    raw = text(form, name)
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise FormError(name, message) from None


async def _create(console: Console, which: str, build: Any) -> Response:
    form = await console.request.form()
    values = {k: v for k, v in form.items() if isinstance(v, str) and k != "csrf"}
    try:
        path, body, done = build(form)
        await console.api.post("coupon", path, body, idempotency_key=text(form, "idem") or None)
    except FormError as exc:
        return await _overview(
            console, status=422, form=which, errors={exc.field: exc.message}, values=values
        )
    except ApiError as exc:
        if exc.status == 401 or (exc.status >= 500 and exc.code != "service_unavailable"):
            raise
        errors = {
            k.split(".")[-1] if k.startswith("trigger") else k: v
            for k, v in exc.field_errors().items()
        }
        return await _overview(
            console,
            status=min(exc.status, 503),
            form=which,
            error=exc.detail,
            errors=errors,
            values=values,
        )
    console.session.say("ok", done)
    return console.redirect("/campaigns")


@router.post("/campaigns/templates", include_in_schema=False)
async def create_template(console: ActionDep) -> Response:
    console.require("coupons:write")
    _ = console._

    def build(form: Any) -> tuple[str, dict[str, Any], str]:
        code = required(form, "code", _("Give the template a code."))
        kind = text(form, "kind")
        if kind not in KINDS:
            raise FormError("kind", _("Choose a kind."))
        if kind == "amount_off":
            value = money_minor(form, "value", _("Enter the amount off in yuan."))
        elif kind == "percent_off":
            value = _optional_int(form, "value", _("Enter a whole percent, 1 to 100.")) or 0
        else:
            value = 0
        body: dict[str, Any] = {
            "code": code,
            "name": required(form, "name", _("Give the template a name.")),
            "kind": kind,
            "value": value,
            "min_spend_minor": money_minor(
                form,
                "min_spend",
                _("Enter the minimum spend in yuan (0 for none)."),
                allow_zero=True,
            )
            if text(form, "min_spend")
            else 0,
            "valid_days": _optional_int(form, "valid_days", _("Enter whole days.")) or 30,
            "per_member_limit": _optional_int(form, "per_member_limit", _("Enter a number.")) or 1,
        }
        if text(form, "max_discount"):
            body["max_discount_minor"] = money_minor(form, "max_discount", _("Enter yuan."))
        if text(form, "gift_sku"):
            body["gift_sku"] = text(form, "gift_sku")
        stock = _optional_int(form, "stock", _("Enter a whole number."))
        if stock is not None:
            body["stock"] = stock
        cost = _optional_int(form, "points_cost", _("Enter a whole number of points."))
        if cost is not None:
            body["points_cost"] = cost
        categories = [c for c in re.split(r"[\s,\uff0c]+", text(form, "categories")) if c]
        if categories:
            body["categories"] = categories
        return "/v1/coupon-templates", body, _("Template %(code)s created.", code=code)

    return await _create(console, "template", build)


@router.post("/campaigns/new", include_in_schema=False)
async def create_campaign(console: ActionDep) -> Response:
    console.require("coupons:write")
    _ = console._

    def build(form: Any) -> tuple[str, dict[str, Any], str]:
        code = required(form, "code", _("Give the campaign a code."))
        templates = [c for c in form.getlist("template_codes") if isinstance(c, str) and c]
        if not templates:
            raise FormError("template_codes", _("Choose at least one template."))
        trigger_type = text(form, "trigger")
        if trigger_type not in TRIGGERS:
            raise FormError("trigger", _("Choose a trigger."))
        trigger: dict[str, Any] = {"type": trigger_type}
        if trigger_type == "nth_order":
            trigger["n"] = _optional_int(form, "n", _("Enter the order number (2 or more)."))
        elif trigger_type == "segment.entered":
            trigger["segment_code"] = required(form, "segment_code", _("Choose a segment."))
        elif trigger_type == "tier_changed":
            trigger["tier"] = required(form, "tier", _("Enter the tier code."))
        elif trigger_type == "checkin_streak":
            trigger["days"] = _optional_int(form, "days", _("Enter the streak length in days."))
        body: dict[str, Any] = {
            "code": code,
            "name": text(form, "name") or code,
            "template_codes": templates,
            "trigger": trigger,
        }
        for name in ("starts_at", "ends_at"):
            when = _local_time(form, name, _("Enter a date and time."))
            if when:
                body[name] = when
        budget = _optional_int(form, "budget", _("Enter a whole number of coupons."))
        if budget is not None:
            body["budget"] = budget
        if text(form, "holdout_percent"):
            try:
                body["holdout_percent"] = float(text(form, "holdout_percent"))
            except ValueError:
                raise FormError("holdout_percent", _("Enter a percent, e.g. 10.")) from None
        return "/v1/campaigns", body, _("Campaign %(code)s created.", code=code)

    return await _create(console, "campaign", build)


async def _campaign_page(
    console: Console,
    code: str,
    *,
    status: int = 200,
    error: str | None = None,
    errors: dict[str, str] | None = None,
) -> Response:
    api = console.api
    campaign = await api.get("coupon", f"/v1/campaigns/{quote(code)}")
    window = console.request.query_params.get("window_days") or "30"
    s = await gather_sections(
        results=api.get("segmenter", f"/v1/analytics/campaigns/{quote(code)}", window_days=window),
        segments=api.get("segmenter", "/v1/segments", limit=200),
    )
    return console.render(
        "campaigns/detail.html",
        status,
        campaign=campaign,
        s=s,
        error=error,
        errors=errors or {},
        window_days=window,
    )


@router.get("/campaigns/{code}", include_in_schema=False)
async def campaign_detail(console: PageDep, code: str) -> Response:
    console.require("members:read")
    return await _campaign_page(console, code)


@router.post("/campaigns/{code}/status", include_in_schema=False)
async def pause_or_resume(console: ActionDep, code: str) -> Response:
    console.require("coupons:write")
    form = await console.request.form()
    wanted = "paused" if text(form, "status") == "paused" else "active"
    await console.api.call(
        "coupon", "PATCH", f"/v1/campaigns/{quote(code)}", json={"status": wanted}
    )
    console.session.say(
        "ok", console._("Campaign %(code)s is %(status)s.", code=code, status=wanted)
    )
    return console.redirect(f"/campaigns/{quote(code)}")


@router.post("/campaigns/{code}/issue", include_in_schema=False)
async def bulk_issue(console: ActionDep, code: str) -> Response:
    console.require("coupons:write")
    _ = console._
    form = await console.request.form()
    try:
        segment = text(form, "segment_code")
        ids = [i for i in re.split(r"[\s,;]+", text(form, "member_ids")) if i]
        if bool(segment) == bool(ids):
            raise FormError("segment_code", _("Choose a segment or paste member ids (not both)."))
        body: dict[str, Any] = {"segment_code": segment} if segment else {"member_ids": ids}
        reply = await console.api.post(
            "coupon",
            f"/v1/campaigns/{quote(code)}/issue",
            body,
            idempotency_key=text(form, "idem") or None,
        )
    except FormError as exc:
        return await _campaign_page(console, code, status=422, errors={exc.field: exc.message})
    except ApiError as exc:
        if exc.status == 401 or (exc.status >= 500 and exc.code != "service_unavailable"):
            raise
        return await _campaign_page(
            console,
            code,
            status=min(exc.status, 503),
            error=exc.detail,
            errors=exc.field_errors(),
        )
    return console.redirect(f"/campaigns/{quote(code)}/jobs/{quote(reply.body['job_id'])}")


@router.get("/campaigns/{code}/jobs/{job_id}", include_in_schema=False)
async def job_page(console: PageDep, code: str, job_id: str) -> Response:
    console.require("members:read")
    job = await console.api.get("coupon", f"/v1/jobs/{quote(job_id)}")
    return console.render("campaigns/job.html", code=code, job=job)


@router.get("/api/jobs/{job_id}", include_in_schema=False)
async def job_api(request: Request, job_id: str) -> Response:
    """What the progress bar polls."""
    console = await _console(request)
    console.require("members:read")
    return JSONResponse(await console.api.get("coupon", f"/v1/jobs/{quote(job_id)}"))
