"""Use cases on templates and campaigns: create (validated), read, change status, results."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from loyalty_shared.errors import Conflict, NotFound, ProblemError
from loyalty_shared.paging import cursor_after, encode_cursor
from loyalty_shared.service import Runtime
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError

from ..adapters.store import campaign_from_row, template_from_row
from ..adapters.tables import campaigns, coupon_templates
from ..domain.campaigns import trigger_problems
from ..domain.templates import CouponTemplate, template_problems


def invalid(problems: list[tuple[str, str]], detail: str) -> ProblemError:
    """A 422 validation_error naming each field, like the ones FastAPI's validation gives."""
    return ProblemError(
        422,
        "validation_error",
        detail + ": " + "; ".join(f"{f}: {m}" for f, m in problems[:5]),
        errors=[
            {"loc": ["body", *f.split(".")], "msg": m, "type": "value_error"} for f, m in problems
        ],
    )


def template_view(t: CouponTemplate, issued_count: int) -> dict[str, Any]:
    body = asdict(t)
    body["categories"] = list(t.categories)
    body["issued_count"] = issued_count
    body["stock_left"] = None if t.stock is None else t.stock - issued_count
    return body


async def create_template(runtime: Runtime, template: CouponTemplate) -> dict[str, Any]:
    problems = template_problems(template)
    if problems:
        raise invalid([(p.field, p.msg) for p in problems], "the template is not valid")
    now = runtime.clock.now()
    row = asdict(template)
    row["categories"] = list(template.categories)
    try:
        async with runtime.transaction() as conn:
            await conn.execute(
                coupon_templates.insert().values(**row, issued_count=0, created_at=now)
            )
    except IntegrityError as exc:
        raise Conflict("template_exists", f"a template '{template.code}' exists already") from exc
    return template_view(template, 0)


async def get_template(runtime: Runtime, code: str) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
        row = (
            await conn.execute(select(coupon_templates).where(coupon_templates.c.code == code))
        ).first()
    if row is None:
        raise NotFound(f"no coupon template '{code}'")
    return template_view(template_from_row(row), row.issued_count)


async def list_templates(
    runtime: Runtime, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    query = select(coupon_templates).order_by(coupon_templates.c.code).limit(limit + 1)
    if after := cursor_after(cursor, 1):  # the last code of the page before
        query = query.where(coupon_templates.c.code > after[0])
    async with runtime.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    items = [template_view(template_from_row(r), r.issued_count) for r in rows[:limit]]
    return items, (encode_cursor(rows[limit - 1].code) if len(rows) > limit else None)


def campaign_view(row: Any) -> dict[str, Any]:
    c = campaign_from_row(row)
    return {
        "code": c.code,
        "name": row.name,
        "template_codes": list(c.template_codes),
        "trigger": {"type": c.trigger_type, **c.trigger},
        "starts_at": c.starts_at,
        "ends_at": c.ends_at,
        "budget": c.budget,
        "issued_count": c.issued_count,
        "budget_left": None if c.budget is None else c.budget - c.issued_count,
        "holdout_percent": c.holdout_percent,
        "status": c.status,
        "created_at": row.created_at,
    }


async def create_campaign(runtime: Runtime, spec: dict[str, Any]) -> dict[str, Any]:
    trigger = dict(spec["trigger"])
    problems = [(f"trigger.{f}", m) for f, m in trigger_problems(trigger)]
    if spec.get("starts_at") and spec.get("ends_at") and spec["ends_at"] <= spec["starts_at"]:
        problems.append(("ends_at", "the campaign must end after it starts"))
    if problems:
        raise invalid(problems, "the campaign is not valid")
    template_codes = list(dict.fromkeys(spec["template_codes"]))
    now = runtime.clock.now()
    try:
        async with runtime.transaction() as conn:
            known = set(
                (
                    await conn.scalars(
                        select(coupon_templates.c.code).where(
                            coupon_templates.c.code.in_(template_codes)
                        )
                    )
                ).all()
            )
            unknown = [c for c in template_codes if c not in known]
            if unknown:
                raise invalid(
                    [("template_codes", f"no template '{c}'") for c in unknown],
                    "the campaign is not valid",
                )
            kind = trigger.pop("type")
            row = (
                await conn.execute(
                    campaigns.insert()
                    .values(
                        code=spec["code"],
                        name=spec.get("name") or spec["code"],
                        template_codes=template_codes,
                        trigger_type=kind,
                        trigger=trigger,
                        starts_at=spec.get("starts_at"),
                        ends_at=spec.get("ends_at"),
                        budget=spec.get("budget"),
                        issued_count=0,
                        holdout_percent=spec.get("holdout_percent") or 0,
                        status="active",
                        created_at=now,
                    )
                    .returning(*campaigns.c)
                )
            ).one()
    except IntegrityError as exc:
        raise Conflict("campaign_exists", f"a campaign '{spec['code']}' exists already") from exc
    return campaign_view(row)


async def get_campaign(runtime: Runtime, code: str) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
        row = (await conn.execute(select(campaigns).where(campaigns.c.code == code))).first()
        if row is None:
            raise NotFound(f"no campaign '{code}'")
        view = campaign_view(row)
        results = (
            await conn.execute(
                text(
                    "SELECT count(*) FILTER (WHERE outcome = 'issued') AS members_issued, "
                    "count(*) FILTER (WHERE outcome = 'holdout') AS members_holdout, "
                    "count(*) FILTER (WHERE outcome = 'not_issued') AS members_not_issued "
                    "FROM campaign_grants WHERE campaign_code = :c"
                ),
                {"c": code},
            )
        ).one()
        redeemed = await conn.scalar(
            text("SELECT count(*) FROM coupons WHERE campaign_code = :c AND status = 'redeemed'"),
            {"c": code},
        )
    view["results"] = {**results._asdict(), "coupons_redeemed": redeemed}
    return view


async def list_campaigns(
    runtime: Runtime, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    query = select(campaigns).order_by(campaigns.c.code).limit(limit + 1)
    if after := cursor_after(cursor, 1):  # the last code of the page before
        query = query.where(campaigns.c.code > after[0])
    async with runtime.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [campaign_view(r) for r in rows[:limit]], (
        encode_cursor(rows[limit - 1].code) if len(rows) > limit else None
    )


async def set_campaign_status(runtime: Runtime, code: str, status: str) -> dict[str, Any]:
    async with runtime.transaction() as conn:
        row = (
            await conn.execute(
                update(campaigns)
                .where(campaigns.c.code == code)
                .values(status=status)
                .returning(*campaigns.c)
            )
        ).first()
    if row is None:
        raise NotFound(f"no campaign '{code}'")
    return campaign_view(row)
