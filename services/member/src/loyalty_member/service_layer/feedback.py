"""Feedback: survey answers and complaint tickets. Their free text (comments, subjects,
descriptions, notes) stays in this service; the events carry scores, stages and times only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from loyalty_shared.errors import Conflict, NotFound, Unprocessable
from loyalty_shared.events.members import (
    MemberComplaintOpened,
    MemberComplaintStatusChanged,
    MemberSurveyAnswered,
)
from loyalty_shared.paging import cursor_after, encode_cursor, invalid_cursor
from loyalty_shared.service import Runtime
from sqlalchemy import and_, not_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection
from ulid import ULID

from ..adapters.tables import complaint_status_changes, complaints, orders, survey_answers
from ..domain.feedback import (
    OPENED,
    InvalidStatusTransition,
    check_transition,
    is_overdue,
    next_statuses,
    recommend_level,
    response_deadline,
)
from .checkins import invalid, live_member, occurred_at_or_now
from .events import emit

# ---------------------------------------------------------------------------------------------
# Surveys
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerSurvey:
    member_id: str
    score: int | None = None
    recommend: int | None = None
    comment: str | None = None
    order_id: str | None = None
    ticket_id: str | None = None
    occurred_at: datetime | None = None


async def _check_order(conn: AsyncConnection, order_id: str | None, member_id: str) -> None:
    if order_id is None:
        return
    owner = await conn.scalar(select(orders.c.member_id).where(orders.c.order_id == order_id))
    if owner != member_id:
        raise Unprocessable(
            "unknown_order", f"the member has no order '{order_id}'", order_id=order_id
        )


async def _check_ticket(conn: AsyncConnection, ticket_id: str | None, member_id: str) -> None:
    if ticket_id is None:
        return
    owner = await conn.scalar(
        select(complaints.c.member_id).where(complaints.c.ticket_id == ticket_id)
    )
    if owner != member_id:
        raise Unprocessable(
            "unknown_complaint",
            f"the member has no complaint ticket '{ticket_id}'",
            ticket_id=ticket_id,
        )


def survey_view(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "recommend_level": recommend_level(row["recommend"])}


async def answer_survey(runtime: Runtime, cmd: AnswerSurvey) -> dict[str, Any]:
    """Store one survey answer and emit `member.survey_answered` (without the comment).
    A member answers once about one order and once about one complaint ticket
    (409 `survey_already_answered`)."""
    now = runtime.clock.now()
    occurred_at = occurred_at_or_now(cmd.occurred_at, now)
    async with runtime.transaction() as conn:
        await live_member(conn, cmd.member_id, lock=True)
        await _check_order(conn, cmd.order_id, cmd.member_id)
        await _check_ticket(conn, cmd.ticket_id, cmd.member_id)
        row = {
            "survey_id": str(ULID.from_datetime(now)),
            "member_id": cmd.member_id,
            "score": cmd.score,
            "recommend": cmd.recommend,
            "comment": cmd.comment,
            "order_id": cmd.order_id,
            "ticket_id": cmd.ticket_id,
            "occurred_at": occurred_at,
            "created_at": now,
        }
        row["seq"] = await conn.scalar(
            pg_insert(survey_answers)
            .values(**row)
            .on_conflict_do_nothing()
            .returning(survey_answers.c.seq)
        )
        if row["seq"] is None:  # only the one-answer-per-order/ticket indexes can conflict
            raise Conflict(
                "survey_already_answered",
                "the member answered a survey about this order or complaint ticket already",
                order_id=cmd.order_id,
                ticket_id=cmd.ticket_id,
            )
        await emit(
            conn,
            "member.survey_answered",
            MemberSurveyAnswered(
                member_id=cmd.member_id,
                survey_id=row["survey_id"],
                score=cmd.score,
                recommend=cmd.recommend,
                recommend_level=recommend_level(cmd.recommend),
                order_id=cmd.order_id,
                ticket_id=cmd.ticket_id,
                has_comment=bool(cmd.comment),
                occurred_at=occurred_at,
            ),
            subject=cmd.member_id,
            time=occurred_at,
        )
        return survey_view(row)


async def list_surveys(
    runtime: Runtime, member_id: str, *, limit: int, cursor: str | None
) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
        await live_member(conn, member_id, erased_ok=True)
        query = select(survey_answers).where(survey_answers.c.member_id == member_id)
        if (before := _position(cursor)) is not None:
            query = query.where(survey_answers.c.seq < before)
        query = query.order_by(survey_answers.c.seq.desc()).limit(limit + 1)
        rows = [survey_view(dict(r._mapping)) for r in await conn.execute(query)]
    return _page(rows, limit)


# ---------------------------------------------------------------------------------------------
# Complaint tickets
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenComplaint:
    member_id: str
    subject: str
    description: str
    order_id: str | None = None
    channel: str | None = None
    category: str = "other"
    occurred_at: datetime | None = None


@dataclass(frozen=True)
class ChangeComplaintStatus:
    ticket_id: str
    status: str
    note: str | None = None
    occurred_at: datetime | None = None


def ticket_view(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    responded_at = row["responded_at"]
    return {
        **row,
        "overdue": is_overdue(row["status"], row["response_due_at"], now),
        "responded_in_time": (
            None if responded_at is None else responded_at <= row["response_due_at"]
        ),
        "next_statuses": next_statuses(row["status"]),
    }


async def _history(conn: AsyncConnection, ticket_id: str) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(
            complaint_status_changes.c.from_status,
            complaint_status_changes.c.to_status,
            complaint_status_changes.c.note,
            complaint_status_changes.c.occurred_at,
        )
        .where(complaint_status_changes.c.ticket_id == ticket_id)
        .order_by(complaint_status_changes.c.seq)
    )
    return [dict(r._mapping) for r in rows]


async def open_complaint(runtime: Runtime, cmd: OpenComplaint) -> dict[str, Any]:
    """Open a ticket in `received`, due one working day later in the member's timezone;
    emit `member.complaint_opened` (without subject or description)."""
    now = runtime.clock.now()
    received_at = occurred_at_or_now(cmd.occurred_at, now)
    async with runtime.transaction() as conn:
        member = await live_member(conn, cmd.member_id, lock=True)
        await _check_order(conn, cmd.order_id, cmd.member_id)
        timezone = member["timezone"]
        row = {
            "ticket_id": str(ULID.from_datetime(now)),
            "member_id": cmd.member_id,
            "subject": cmd.subject,
            "description": cmd.description,
            "category": cmd.category,
            "channel": cmd.channel,
            "order_id": cmd.order_id,
            "status": OPENED,
            "timezone": timezone,
            "received_at": received_at,
            "response_due_at": response_deadline(received_at, timezone),
            "responded_at": None,
            "status_changed_at": received_at,
            "created_at": now,
            "updated_at": now,
        }
        row["seq"] = await conn.scalar(
            complaints.insert().values(**row).returning(complaints.c.seq)
        )
        await conn.execute(
            complaint_status_changes.insert().values(
                ticket_id=row["ticket_id"],
                from_status=None,
                to_status=OPENED,
                note=None,
                occurred_at=received_at,
                created_at=now,
            )
        )
        await emit(
            conn,
            "member.complaint_opened",
            MemberComplaintOpened(
                member_id=cmd.member_id,
                ticket_id=row["ticket_id"],
                category=cmd.category,  # type: ignore[arg-type]  # checked by the request model
                channel=cmd.channel,
                order_id=cmd.order_id,
                timezone=timezone,
                response_due_at=row["response_due_at"],
                occurred_at=received_at,
            ),
            subject=cmd.member_id,
            time=received_at,
        )
        return {**ticket_view(row, now), "history": await _history(conn, row["ticket_id"])}


async def change_complaint_status(runtime: Runtime, cmd: ChangeComplaintStatus) -> dict[str, Any]:
    """Move a ticket forward (stages may be skipped; closed is final): 409
    `invalid_status_transition` otherwise. The first move out of `received` is the response
    the deadline asks for. Emits `member.complaint_status_changed` (without the note)."""
    now = runtime.clock.now()
    occurred_at = occurred_at_or_now(cmd.occurred_at, now)
    async with runtime.transaction() as conn:
        found = (
            await conn.execute(
                select(complaints).where(complaints.c.ticket_id == cmd.ticket_id).with_for_update()
            )
        ).first()
        if found is None:
            raise NotFound(f"no complaint ticket '{cmd.ticket_id}'")
        ticket = dict(found._mapping)
        current = ticket["status"]
        try:
            check_transition(current, cmd.status)
        except InvalidStatusTransition as exc:
            raise Conflict(
                "invalid_status_transition",
                str(exc),
                current_status=current,
                allowed=next_statuses(current),
            ) from exc
        if occurred_at < ticket["status_changed_at"]:
            last = ticket["status_changed_at"].isoformat()
            raise invalid(["body", "occurred_at"], f"lies before the ticket's last change ({last})")
        first_response = current == OPENED
        changes: dict[str, Any] = {
            "status": cmd.status,
            "status_changed_at": occurred_at,
            "updated_at": now,
        }
        if first_response:
            changes["responded_at"] = occurred_at
        row = (
            await conn.execute(
                update(complaints)
                .where(complaints.c.ticket_id == cmd.ticket_id)
                .values(**changes)
                .returning(*complaints.c)
            )
        ).one()
        await conn.execute(
            complaint_status_changes.insert().values(
                ticket_id=cmd.ticket_id,
                from_status=current,
                to_status=cmd.status,
                note=cmd.note,
                occurred_at=occurred_at,
                created_at=now,
            )
        )
        await emit(
            conn,
            "member.complaint_status_changed",
            MemberComplaintStatusChanged(
                member_id=ticket["member_id"],
                ticket_id=cmd.ticket_id,
                old_status=current,  # type: ignore[arg-type]  # a stored stage
                new_status=cmd.status,  # type: ignore[arg-type]  # checked above
                first_response=first_response,
                responded_in_time=(
                    occurred_at <= ticket["response_due_at"] if first_response else None
                ),
                response_due_at=ticket["response_due_at"],
                occurred_at=occurred_at,
            ),
            subject=ticket["member_id"],
            time=occurred_at,
        )
        return {
            **ticket_view(dict(row._mapping), now),
            "history": await _history(conn, cmd.ticket_id),
        }


async def get_complaint(runtime: Runtime, ticket_id: str) -> dict[str, Any]:
    now = runtime.clock.now()
    async with runtime.engine.connect() as conn:
        row = (
            await conn.execute(select(complaints).where(complaints.c.ticket_id == ticket_id))
        ).first()
        if row is None:
            raise NotFound(f"no complaint ticket '{ticket_id}'")
        return {**ticket_view(dict(row._mapping), now), "history": await _history(conn, ticket_id)}


async def list_complaints(
    runtime: Runtime,
    *,
    overdue: bool | None,
    status: str | None,
    member_id: str | None,
    limit: int,
    cursor: str | None,
) -> dict[str, Any]:
    """Tickets, newest first. `overdue=true`: still `received` after the deadline (the clock's
    now); `overdue=false`: all others."""
    now = runtime.clock.now()
    query = select(complaints)
    late = and_(complaints.c.status == OPENED, complaints.c.response_due_at < now)
    if overdue is not None:
        query = query.where(late if overdue else not_(late))
    if status is not None:
        query = query.where(complaints.c.status == status)
    if member_id is not None:
        query = query.where(complaints.c.member_id == member_id)
    if (before := _position(cursor)) is not None:
        query = query.where(complaints.c.seq < before)
    query = query.order_by(complaints.c.seq.desc()).limit(limit + 1)
    async with runtime.engine.connect() as conn:
        rows = [ticket_view(dict(r._mapping), now) for r in await conn.execute(query)]
    return _page(rows, limit)


# ---------------------------------------------------------------------------------------------
# Erasure
# ---------------------------------------------------------------------------------------------


async def erase_feedback_text(conn: AsyncConnection, member_id: str) -> None:
    """Scrub the free text a member left (survey comments, complaint subjects, descriptions
    and notes), keeping scores, stages and times. Call in the erasure's transaction."""
    await conn.execute(
        update(survey_answers).where(survey_answers.c.member_id == member_id).values(comment=None)
    )
    tickets = select(complaints.c.ticket_id).where(complaints.c.member_id == member_id)
    await conn.execute(
        update(complaint_status_changes)
        .where(complaint_status_changes.c.ticket_id.in_(tickets))
        .values(note=None)
    )
    await conn.execute(
        update(complaints)
        .where(complaints.c.member_id == member_id)
        .values(subject="(erased)", description="(erased)")
    )


def _position(cursor: str | None) -> int | None:
    """Lists are ordered by insertion (`seq`), newest first; a cursor is the last seq seen
    (the shared codec: a cursor the list did not hand out is a 422)."""
    after = cursor_after(cursor, 1)
    if after is None:
        return None
    if not after[0].isdigit() or len(after[0]) > 18:
        raise invalid_cursor()
    return int(after[0])


def _page(rows: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    more = len(rows) > limit
    rows = rows[:limit]
    last = encode_cursor(str(rows[-1]["seq"])) if more and rows else None
    return {"items": rows, "next_cursor": last}


__all__ = [
    "AnswerSurvey",
    "ChangeComplaintStatus",
    "OpenComplaint",
    "answer_survey",
    "change_complaint_status",
    "erase_feedback_text",
    "get_complaint",
    "list_complaints",
    "list_surveys",
    "open_complaint",
]
