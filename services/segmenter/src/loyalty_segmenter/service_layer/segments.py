"""Segment use cases: define, change, preview, list, and page through members."""

from __future__ import annotations

from typing import Any

from loyalty_shared.errors import Conflict, NotFound, ProblemError
from loyalty_shared.paging import cursor_after, encode_cursor
from loyalty_shared.service import Runtime
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ..adapters.rule_sql import eligible
from ..adapters.tables import profiles, segment_members, segments
from ..domain.rules import Rule, RuleError, is_time_relative, parse_rule, to_json, uses_rfm_scores
from .segment_membership import refresh_segment

SAMPLE_SIZE = 20


def validated_rule(raw: Any) -> Rule:
    """Parse a rule from a request body; 422 validation_error naming each problem."""
    try:
        return parse_rule(raw, ["body", "rule"])
    except RuleError as exc:
        raise ProblemError(
            422, "validation_error", f"the rule is not valid: {exc}", errors=exc.errors
        ) from exc


def _after(cursor: str | None) -> str | None:
    """The code or member_id a page continues after: a cursor these lists handed out (the
    shared codec), else 422."""
    after = cursor_after(cursor, 1)
    return after[0] if after else None


async def _members_count(conn: AsyncConnection, code: str) -> int:
    return int(
        await conn.scalar(
            select(func.count())
            .select_from(segment_members)
            .where(segment_members.c.segment_code == code)
        )
        or 0
    )


def _view(row: Any, members_count: int) -> dict[str, Any]:
    return {
        "code": row.code,
        "name": row.name,
        "description": row.description,
        "rule": row.rule,
        "time_relative": row.time_relative,
        "uses_rfm_scores": row.uses_rfm,
        "members_count": members_count,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


async def create_segment(
    runtime: Runtime, *, code: str, name: str, description: str | None, raw_rule: Any
) -> dict[str, Any]:
    rule = validated_rule(raw_rule)
    now = runtime.clock.now()
    try:
        async with runtime.transaction() as conn:
            await conn.execute(
                segments.insert().values(
                    code=code,
                    name=name,
                    description=description,
                    rule=to_json(rule),
                    time_relative=is_time_relative(rule),
                    uses_rfm=uses_rfm_scores(rule),
                    created_at=now,
                    updated_at=now,
                )
            )
            await refresh_segment(conn, code, rule, now)
            return await _load_view(conn, code)
    except IntegrityError as exc:
        raise Conflict("segment_exists", f"a segment with the code '{code}' exists") from exc


async def replace_segment(
    runtime: Runtime, code: str, *, name: str, description: str | None, raw_rule: Any
) -> dict[str, Any]:
    rule = validated_rule(raw_rule)
    now = runtime.clock.now()
    async with runtime.transaction() as conn:
        result = await conn.execute(
            segments.update()
            .where(segments.c.code == code)
            .values(
                name=name,
                description=description,
                rule=to_json(rule),
                time_relative=is_time_relative(rule),
                uses_rfm=uses_rfm_scores(rule),
                updated_at=now,
            )
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            raise NotFound(f"no segment '{code}'")
        await refresh_segment(conn, code, rule, now)
        return await _load_view(conn, code)


async def _load_view(conn: AsyncConnection, code: str) -> dict[str, Any]:
    row = (await conn.execute(select(segments).where(segments.c.code == code))).first()
    if row is None:
        raise NotFound(f"no segment '{code}'")
    return _view(row, await _members_count(conn, code))


async def get_segment(runtime: Runtime, code: str) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
        return await _load_view(conn, code)


async def list_segments(
    runtime: Runtime, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    after = _after(cursor)
    query = select(segments).order_by(segments.c.code).limit(limit + 1)
    if after is not None:
        query = query.where(segments.c.code > after)
    async with runtime.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
        counts = {
            row.segment_code: row.n
            for row in await conn.execute(
                text(
                    "SELECT segment_code, count(*) AS n FROM segment_members "
                    "WHERE segment_code = ANY(CAST(:codes AS text[])) GROUP BY segment_code"
                ),
                {"codes": [r.code for r in rows[:limit]]},
            )
        }
    items = [_view(row, int(counts.get(row.code, 0))) for row in rows[:limit]]
    next_cursor = encode_cursor(rows[limit - 1].code) if len(rows) > limit else None
    return items, next_cursor


async def preview(runtime: Runtime, raw_rule: Any) -> dict[str, Any]:
    rule = validated_rule(raw_rule)
    as_of = runtime.clock.now()
    condition = eligible(rule, as_of)
    async with runtime.engine.connect() as conn:
        count = await conn.scalar(select(func.count()).select_from(profiles).where(condition))
        sample = await conn.scalars(
            select(profiles.c.member_id)
            .where(condition)
            .order_by(profiles.c.member_id)
            .limit(SAMPLE_SIZE)
        )
        return {"count": int(count or 0), "sample": list(sample), "as_of": as_of}


async def members_page(
    runtime: Runtime, code: str, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    after = _after(cursor)
    query = (
        select(
            segment_members.c.member_id,
            segment_members.c.entered_at,
            profiles.c.lifecycle_stage,
            profiles.c.buyer_weight,
            profiles.c.churn_risk,
            profiles.c.tier,
        )
        .join(profiles, profiles.c.member_id == segment_members.c.member_id)
        .where(segment_members.c.segment_code == code)
        .order_by(segment_members.c.member_id)
        .limit(limit + 1)
    )
    if after is not None:
        query = query.where(segment_members.c.member_id > after)
    async with runtime.engine.connect() as conn:
        exists = await conn.scalar(select(segments.c.code).where(segments.c.code == code))
        if exists is None:
            raise NotFound(f"no segment '{code}'")
        rows = (await conn.execute(query)).all()
    items = [dict(row._mapping) for row in rows[:limit]]
    next_cursor = encode_cursor(rows[limit - 1].member_id) if len(rows) > limit else None
    return items, next_cursor
