"""Segments: the rule builder and its JSON, a live count as the rule is typed, members, CSV."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from loyalty_shared.errors import problem_response

from ..neighbours import ApiError
from ..web import ActionDep, Console, FormError, PageDep, _console, check_csrf, required, text

router = APIRouter()
CSV_LIMIT = 100_000  # members per export; a bigger list is a job for the API, not a browser

EXAMPLE_RULE = {
    "all": [
        {"field": "lifecycle_stage", "op": "eq", "value": "easy_winback"},
        {"field": "spend_minor", "op": "gte", "value": 100000},
    ]
}


@router.get("/segments", include_in_schema=False)
async def segment_list(console: PageDep, cursor: str = "") -> Response:
    console.require("members:read")
    page = await console.api.get("segmenter", "/v1/segments", limit=100, cursor=cursor)
    return console.render("segments/list.html", page=page)


async def _fields(console: Console) -> list[dict[str, Any]]:
    try:
        body = await console.api.get("segmenter", "/v1/segments:fields")
    except ApiError:
        return []
    return list(body.get("items", []))


def _builder_rows(rule: Any) -> tuple[str, list[dict[str, Any]]]:
    """The builder can show a flat rule (one condition, or all/any of conditions)."""
    if isinstance(rule, dict) and "field" in rule:
        return "all", [rule]
    for join in ("all", "any"):
        items = rule.get(join) if isinstance(rule, dict) else None
        if isinstance(items, list) and all(isinstance(i, dict) and "field" in i for i in items):
            return join, items
    return "all", []


def _value_text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


async def _editor(
    console: Console,
    *,
    segment: dict[str, Any] | None,
    values: dict[str, str],
    status: int = 200,
    error: str | None = None,
    errors: dict[str, str] | None = None,
    preview: dict[str, Any] | None = None,
) -> Response:
    fields = await _fields(console)
    try:
        rule = json.loads(values.get("rule") or "null")
    except ValueError:
        rule = None
    join, rows = _builder_rows(rule)
    return console.render(
        "segments/edit.html",
        status,
        segment=segment,
        values=values,
        fields=fields,
        fields_json=json.dumps({f["field"]: f for f in fields}),
        join=join,
        rows=[{**r, "value_text": _value_text(r.get("value"))} for r in rows] or [{}],
        error=error,
        errors=errors or {},
        preview=preview,
    )


@router.get("/segments/new", include_in_schema=False)
async def new_segment(console: PageDep) -> Response:
    console.require("admin")
    return await _editor(console, segment=None, values={"rule": json.dumps(EXAMPLE_RULE, indent=2)})


@router.get("/segments/{code}/edit", include_in_schema=False)
async def edit_segment(console: PageDep, code: str) -> Response:
    console.require("admin")
    segment = await console.api.get("segmenter", f"/v1/segments/{quote(code)}")
    values = {
        "code": segment["code"],
        "name": segment.get("name") or "",
        "description": segment.get("description") or "",
        "rule": json.dumps(segment.get("rule"), indent=2, ensure_ascii=False),
    }
    return await _editor(console, segment=segment, values=values)


def _parse_rule(raw: str, message: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise FormError("rule", f"{message} ({exc.msg}, line {exc.lineno})") from None


def _rule_errors(exc: ApiError) -> dict[str, str]:
    """Problems about the rule point into it (`rule.all.1.op`); show them at the JSON box."""
    found = exc.field_errors()
    rule = [f"{k}: {v}" for k, v in found.items() if k.startswith("rule")]
    other = {k: v for k, v in found.items() if not k.startswith("rule")}
    if rule:
        other["rule"] = "; ".join(rule)
    return other


@router.post("/segments/save", include_in_schema=False)
async def save_segment(console: ActionDep) -> Response:
    console.require("admin")
    _ = console._
    form = await console.request.form()
    values = {k: v for k, v in form.items() if isinstance(v, str)}
    existing = text(form, "existing")
    segment = {"code": existing} if existing else None
    preview_only = text(form, "do") == "preview"
    try:
        rule = _parse_rule(required(form, "rule", _("Write a rule.")), _("The rule is not JSON"))
        if preview_only:
            reply = await console.api.post("segmenter", "/v1/segments:preview", {"rule": rule})
            return await _editor(console, segment=segment, values=values, preview=reply.body)
        name = required(form, "name", _("Give the segment a name."))
        body = {"name": name, "description": text(form, "description") or None, "rule": rule}
        if existing:
            await console.api.call("segmenter", "PUT", f"/v1/segments/{quote(existing)}", json=body)
            code = existing
        else:
            code = required(form, "code", _("Give the segment a code."))
            if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", code):
                raise FormError("code", _("Lowercase letters, digits, - and _ only."))
            await console.api.post(
                "segmenter",
                "/v1/segments",
                {"code": code, **body},
                idempotency_key=text(form, "idem") or None,
            )
    except FormError as exc:
        return await _editor(
            console, segment=segment, values=values, status=422, errors={exc.field: exc.message}
        )
    except ApiError as exc:
        if exc.status == 401 or (exc.status >= 500 and exc.code != "service_unavailable"):
            raise
        return await _editor(
            console,
            segment=segment,
            values=values,
            status=min(exc.status, 503),
            error=exc.detail,
            errors=_rule_errors(exc),
        )
    console.session.say("ok", _("Segment %(code)s saved.", code=code))
    return console.redirect(f"/segments/{quote(code)}")


@router.get("/segments/{code}", include_in_schema=False)
async def segment_detail(console: PageDep, code: str, cursor: str = "") -> Response:
    console.require("members:read")
    segment = await console.api.get("segmenter", f"/v1/segments/{quote(code)}")
    members = await console.api.get(
        "segmenter", f"/v1/segments/{quote(code)}/members", limit=50, cursor=cursor
    )
    return console.render(
        "segments/detail.html",
        segment=segment,
        members=members,
        rule_json=json.dumps(segment.get("rule"), indent=2, ensure_ascii=False),
    )


@router.get("/segments/{code}/members.csv", include_in_schema=False)
async def segment_csv(console: PageDep, code: str) -> Response:
    console.require("members:read")
    api = console.api
    path = f"/v1/segments/{quote(code)}/members"
    first = await api.get("segmenter", path, limit=500)  # a 404 answers before streaming
    columns = ["member_id", "entered_at", "lifecycle_stage", "buyer_weight", "churn_risk", "tier"]

    async def rows() -> AsyncIterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(columns)
        page, sent = first, 0
        while True:
            for item in page.get("items", []):
                if isinstance(item, str):
                    item = {"member_id": item}
                writer.writerow([item.get(c, "") for c in columns])
                sent += 1
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            cursor = page.get("next_cursor")
            if not cursor or sent >= CSV_LIMIT:
                return
            page = await api.get("segmenter", path, limit=500, cursor=cursor)

    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", code)
    return StreamingResponse(
        rows(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="segment-{safe}.csv"'},
    )


@router.post("/api/segments/preview", include_in_schema=False)
async def preview_api(request: Request) -> Response:
    """The live count of the rule builder: JSON in, the segmenter's preview (or problem) out."""
    console = await _console(request)
    await check_csrf(request, console.session)
    console.require("admin")
    try:
        payload = json.loads(await request.body())
    except ValueError:
        payload = None
    if not isinstance(payload, dict) or "rule" not in payload:
        return problem_response(422, "validation_error", 'send {"rule": ...}')
    reply = await console.api.post("segmenter", "/v1/segments:preview", {"rule": payload["rule"]})
    return JSONResponse(reply.body)
