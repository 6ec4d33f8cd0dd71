"""The dispatcher: claims due deliveries, checks them once more, renders and sends them.

A run claims a chunk of queued deliveries whose time has come (`FOR UPDATE SKIP LOCKED`, then a
lease in `claimed_until`, so replicas never send the same one and a crashed run's claims come
back), and commits. Outside any transaction it fetches contact data and sends, concurrently.
Then it writes every outcome and its `notification.*` event in one transaction. A failed send
stays queued with its next attempt time (exponential backoff); a provider out of attempts hands
over to the next one at once; when none is left the delivery fails.

Marketing messages are checked against the frequency cap just before sending, under a lock per
member: an event is counted the first time one of its channels goes out, and a reservation for
an event that failed on every channel is given back."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from loyalty_shared.ids import monotonic_ulid
from loyalty_shared.kafka import add_to_outbox
from loyalty_shared.service import Runtime
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ..adapters.member_directory import Contact
from ..adapters.providers import OutgoingMessage, ProviderError
from ..adapters.store import load_preferences
from ..domain.policy import (
    DEFAULT_TIMEZONE,
    Preferences,
    SendState,
    after_failure,
    counts_toward_cap,
    decide,
)
from ..domain.templates import (
    InvalidTemplate,
    Rendered,
    message_context,
    render_off_loop,
    resolve,
)
from .context import Notifier
from .deliveries import outcome_event

LEASE = timedelta(minutes=5)
DIRECTORY_RETRY = timedelta(seconds=30)
MAX_CHUNKS = 50

_CLAIM = text(
    "UPDATE deliveries SET claimed_until = :lease WHERE delivery_id IN ("
    " SELECT delivery_id FROM deliveries WHERE status = 'queued' AND next_attempt_at <= :as_of"
    " AND (claimed_until IS NULL OR claimed_until <= :as_of)"
    " ORDER BY next_attempt_at, delivery_id LIMIT :n FOR UPDATE SKIP LOCKED) "
    "RETURNING delivery_id, member_id, event_id, event_type, channel, category, status, "
    "reason, attempts, provider, provider_index, provider_attempts, locale, context"
)


@dataclass
class Outcome:
    """What became of one claimed delivery."""

    row: dict[str, Any]
    status: str
    reason: str | None = None
    provider: str | None = None
    state: SendState = field(default_factory=SendState)
    next_attempt_at: datetime | None = None
    not_before: datetime | None = None
    rendered: Rendered | None = None
    timezone: str = DEFAULT_TIMEZONE

    @property
    def delivery_id(self) -> str:
        return str(self.row["delivery_id"])


async def dispatch(notifier: Notifier, runtime: Runtime, as_of: datetime) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    size = notifier.settings.dispatch_batch_size
    for _ in range(MAX_CHUNKS):
        async with runtime.transaction() as conn:
            params = {"as_of": as_of, "lease": as_of + LEASE, "n": size}
            claimed = [dict(r._mapping) for r in await conn.execute(_CLAIM, params)]
        if not claimed:
            break
        outcomes = await _process(notifier, runtime, claimed, as_of)
        await _record(runtime, outcomes, as_of)
        counts.update(o.status for o in outcomes)
        if len(claimed) < size:
            break
    return {
        status: counts.get(status, 0)
        for status in ("sent", "queued", "deferred", "failed", "suppressed")
    }


async def _process(
    notifier: Notifier, runtime: Runtime, claimed: list[dict[str, Any]], as_of: datetime
) -> list[Outcome]:
    members = sorted({row["member_id"] for row in claimed})
    async with runtime.engine.connect() as conn:
        stored = await load_preferences(conn, members)
        custom = await notifier.templates.get(conn)
    asked = [m for m in members if not (m in stored and stored[m].erased_at)]
    contacts = await notifier.directory.contacts(asked)

    outcomes: list[Outcome] = []
    ready: list[tuple[Outcome, OutgoingMessage | None]] = []
    for row in sorted(claimed, key=lambda r: r["delivery_id"]):
        state = SendState(row["provider_index"], row["provider_attempts"], row["attempts"])
        member_id = row["member_id"]
        contact = contacts.get(member_id)
        if isinstance(contact, Exception):
            # The member service is away: nobody's fault; try again soon, attempts unchanged.
            outcomes.append(
                Outcome(
                    row,
                    "queued",
                    "member_service_unavailable",
                    row["provider"],
                    state,
                    next_attempt_at=as_of + DIRECTORY_RETRY,
                )
            )
            continue
        known = stored.get(member_id)
        preferences: Preferences = (
            known.to_domain(
                notifier.default_quiet_hours,
                timezone=contact.timezone if contact else None,
                locale=contact.locale if contact else None,
            )
            if known
            else notifier.default_preferences(member_id)
        )
        if known is None and contact is not None and contact.found:
            # The notifier has not seen this member's sign-up yet: the member service knows.
            preferences.timezone = contact.timezone or preferences.timezone
            preferences.locale = contact.locale or preferences.locale
            preferences.consents = dict(contact.consents)
            preferences.known = True
        outcome = await _check(notifier, row, state, preferences, contact, custom, as_of)
        outcome.timezone = preferences.timezone
        outcomes.append(outcome)
        if outcome.status == "sending":
            address = contact.address(row["channel"]) if contact else None
            ready.append((outcome, _message(row, outcome, address)))

    allowed = await _apply_cap(notifier, runtime, [o for o, _ in ready], as_of)
    semaphore = asyncio.Semaphore(notifier.settings.dispatch_concurrency)

    async def send(outcome: Outcome, message: OutgoingMessage | None) -> None:
        if outcome.delivery_id not in allowed:
            outcome.status, outcome.reason = "suppressed", "frequency_cap"
            return
        async with semaphore:
            await _send(notifier, outcome, message, as_of)

    await asyncio.gather(*(send(o, m) for o, m in ready))
    return outcomes


async def _check(
    notifier: Notifier,
    row: dict[str, Any],
    state: SendState,
    preferences: Preferences,
    contact: Contact | None,
    custom: dict[Any, Any],
    as_of: datetime,
) -> Outcome:
    """Everything that decides a delivery before it is sent, in the order that explains best.
    The template renders in a worker thread under the rendering limits; one that fails fails
    this delivery, with a reason that says what went wrong and where in the template but never
    quotes the message's data (an error's message may: a member's name, say)."""
    channel = row["channel"]
    if contact is not None and contact.erased:
        preferences.erased = True
    decision = decide(channel, row["category"], preferences, as_of)
    if decision.status == "suppressed":
        return Outcome(row, "suppressed", decision.reason, None, state)
    if decision.status == "deferred":
        return Outcome(
            row, "deferred", decision.reason, None, state, not_before=decision.not_before
        )
    if contact is None or not contact.found:
        return Outcome(row, "suppressed", "unknown_member", None, state)
    if channel != "inbox":
        if not contact.address(channel):
            return Outcome(row, "suppressed", "no_address", None, state)
        if not notifier.providers.get(channel):
            return Outcome(row, "suppressed", "no_provider", None, state)
    template = resolve(custom, row["event_type"], channel, preferences.locale)
    if template is None:
        return Outcome(row, "suppressed", "no_template", None, state)
    context = message_context(
        row["context"],
        contact.for_templates(),
        timezone=preferences.timezone,
        locale=template.locale,
        message_type=row["event_type"],
        channel=channel,
    )
    try:
        rendered = await render_off_loop(template, context)
    except InvalidTemplate as exc:
        return Outcome(row, "failed", exc.public[:500], None, state)
    row["locale"] = template.locale
    return Outcome(row, "sending", None, None, state, rendered=rendered)


def _message(row: dict[str, Any], outcome: Outcome, address: str | None) -> OutgoingMessage | None:
    if row["channel"] == "inbox" or address is None or outcome.rendered is None:
        return None
    return OutgoingMessage(
        delivery_id=row["delivery_id"],
        member_id=row["member_id"],
        event_type=row["event_type"],
        channel=row["channel"],
        to=address,
        subject=outcome.rendered.subject,
        body=outcome.rendered.body,
    )


async def _apply_cap(
    notifier: Notifier,
    runtime: Runtime,
    candidates: list[Outcome],
    as_of: datetime,
) -> set[str]:
    """Reserve a place under the cap for each marketing event about to go out; answer the
    deliveries that may be sent."""
    allowed = {o.delivery_id for o in candidates}
    capped = [o for o in candidates if counts_toward_cap(o.row["channel"], o.row["category"])]
    if not capped:
        return allowed
    cap = notifier.settings.cap
    by_member: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in capped:
        by_member[outcome.row["member_id"]].append(outcome)
    async with runtime.transaction() as conn:
        for member_id in sorted(by_member):
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(hashtext('loyalty-notifier-cap:' || :m))"),
                {"m": member_id},
            )
        rows = await conn.execute(
            text(
                "SELECT member_id, event_id, counted_at FROM cap_counts "
                "WHERE member_id = ANY(CAST(:m AS text[])) AND counted_at >= :since"
            ),
            {"m": sorted(by_member), "since": as_of - timedelta(days=9)},
        )
        history: dict[str, list[datetime]] = defaultdict(list)
        for r in rows:
            history[r.member_id].append(r.counted_at)
        already = {
            (r.member_id, r.event_id)
            for r in await conn.execute(
                text(
                    "SELECT member_id, event_id FROM cap_counts "
                    "WHERE member_id = ANY(CAST(:m AS text[])) "
                    "AND event_id = ANY(CAST(:e AS text[]))"
                ),
                {"m": sorted(by_member), "e": sorted({o.row["event_id"] for o in capped})},
            )
        }
        counted: list[tuple[str, str]] = []
        for member_id, outcomes in by_member.items():
            for outcome in outcomes:
                key = (member_id, outcome.row["event_id"])
                if key in already:
                    continue  # this event counted once already, on another channel
                if cap.allows(history[member_id], as_of, outcome.timezone):
                    history[member_id].append(as_of)
                    already.add(key)
                    counted.append(key)
                else:
                    allowed.discard(outcome.delivery_id)
        if counted:
            await conn.execute(
                text(
                    "INSERT INTO cap_counts (member_id, event_id, counted_at) "
                    "SELECT m, e, :at FROM unnest(CAST(:m AS text[]), CAST(:e AS text[])) "
                    "AS u(m, e) "
                    "ON CONFLICT DO NOTHING"
                ),
                {"m": [k[0] for k in counted], "e": [k[1] for k in counted], "at": as_of},
            )
    return allowed


async def _send(
    notifier: Notifier, outcome: Outcome, message: OutgoingMessage | None, as_of: datetime
) -> None:
    """Try the channel's providers from where the delivery left off; inbox messages are stored."""
    state = outcome.state
    if message is None:  # the inbox: stored when the outcome is recorded
        outcome.status, outcome.provider = "sent", "inbox"
        outcome.state = SendState(0, state.provider_attempts + 1, state.attempts + 1)
        return
    chain = notifier.providers.get(message.channel, [])
    retry = notifier.settings.retry
    while True:
        if state.provider_index >= len(chain):
            outcome.status, outcome.reason, outcome.state = "failed", "no_provider_left", state
            return
        provider = chain[state.provider_index]
        try:
            await provider.send(message)
        except Exception as exc:
            error = exc if isinstance(exc, ProviderError) else ProviderError(repr(exc)[:200])
            after = after_failure(state, len(chain), retry, as_of, permanent=error.permanent)
            outcome.provider = provider.name
            outcome.reason = f"provider_error: {error.detail}"[:500]
            outcome.state = after.state
            if after.give_up:
                outcome.status = "failed"
                return
            if after.retry_at is not None:
                outcome.status, outcome.next_attempt_at = "queued", after.retry_at
                return
            state = after.state  # the next provider takes over now
            continue
        outcome.status, outcome.provider, outcome.reason = "sent", provider.name, None
        outcome.state = SendState(
            state.provider_index, state.provider_attempts + 1, state.attempts + 1
        )
        return


async def _record(runtime: Runtime, outcomes: list[Outcome], as_of: datetime) -> None:
    """Write every outcome, the inbox messages and the notification.* events together."""
    async with runtime.transaction() as conn:
        updated = await _update(conn, outcomes, as_of)
        done = [o for o in outcomes if o.delivery_id in updated]
        inbox = [o for o in done if o.status == "sent" and o.row["channel"] == "inbox"]
        if inbox:
            await conn.execute(
                text(
                    "INSERT INTO inbox_messages (message_id, member_id, delivery_id, event_id, "
                    "event_type, category, title, body, created_at) SELECT u.*, "
                    "CAST(:at AS timestamptz) FROM unnest(CAST(:ids AS text[]), "
                    "CAST(:members AS text[]), CAST(:deliveries AS text[]), "
                    "CAST(:events AS text[]), CAST(:types AS text[]), CAST(:cats AS text[]), "
                    "CAST(:titles AS text[]), CAST(:bodies AS text[])) AS u "
                    "ON CONFLICT (delivery_id) DO NOTHING"
                ),
                {
                    "ids": [monotonic_ulid() for _ in inbox],
                    "members": [o.row["member_id"] for o in inbox],
                    "deliveries": [o.delivery_id for o in inbox],
                    "events": [o.row["event_id"] for o in inbox],
                    "types": [o.row["event_type"] for o in inbox],
                    "cats": [o.row["category"] for o in inbox],
                    "titles": [o.rendered.subject if o.rendered else None for o in inbox],
                    "bodies": [o.rendered.body if o.rendered else "" for o in inbox],
                    "at": as_of,
                },
            )
        failed = [
            o
            for o in done
            if o.status == "failed" and counts_toward_cap(o.row["channel"], o.row["category"])
        ]
        if failed:
            await _give_back(conn, failed)
        events = [
            outcome_event(_as_row(o), as_of)
            for o in done
            if o.status in ("sent", "failed", "suppressed")
        ]
        await add_to_outbox(conn, events)


def _as_row(o: Outcome) -> dict[str, Any]:
    return {
        **o.row,
        "status": o.status,
        "reason": o.reason,
        "provider": o.provider,
        "attempts": o.state.attempts,
    }


async def _update(conn: AsyncConnection, outcomes: list[Outcome], as_of: datetime) -> set[str]:
    """One statement for all outcomes; a delivery suppressed meanwhile (erasure) is left be."""
    if not outcomes:
        return set()
    rows = await conn.execute(
        text(
            "UPDATE deliveries d SET status = u.status, reason = u.reason, attempts = u.attempts, "
            "provider = coalesce(u.provider, d.provider), provider_index = u.pindex, "
            "provider_attempts = u.pattempts, locale = u.locale, "
            "next_attempt_at = coalesce(u.next_at, d.next_attempt_at), not_before = u.not_before, "
            "sent_at = CASE WHEN u.status = 'sent' THEN CAST(:at AS timestamptz) END, "
            "claimed_until = NULL, updated_at = :at "
            "FROM unnest(CAST(:ids AS text[]), CAST(:statuses AS text[]), "
            "CAST(:reasons AS text[]), CAST(:attempts AS int[]), CAST(:providers AS text[]), "
            "CAST(:pindexes AS int[]), CAST(:pattempts AS int[]), CAST(:locales AS text[]), "
            "CAST(:next_ats AS timestamptz[]), CAST(:not_befores AS timestamptz[])) "
            "AS u(id, status, reason, attempts, provider, pindex, pattempts, locale, next_at, "
            "not_before) WHERE d.delivery_id = u.id AND d.status = 'queued' "
            "RETURNING d.delivery_id"
        ),
        {
            "ids": [o.delivery_id for o in outcomes],
            "statuses": [o.status for o in outcomes],
            "reasons": [o.reason for o in outcomes],
            "attempts": [o.state.attempts for o in outcomes],
            "providers": [o.provider for o in outcomes],
            "pindexes": [o.state.provider_index for o in outcomes],
            "pattempts": [o.state.provider_attempts for o in outcomes],
            "locales": [o.row.get("locale") for o in outcomes],
            "next_ats": [o.next_attempt_at or o.not_before for o in outcomes],
            "not_befores": [o.not_before for o in outcomes],
            "at": as_of,
        },
    )
    return {r[0] for r in rows}


async def _give_back(conn: AsyncConnection, failed: list[Outcome]) -> None:
    """A marketing event that reached the member on no channel does not count toward the cap."""
    await conn.execute(
        text(
            "DELETE FROM cap_counts c USING unnest(CAST(:m AS text[]), CAST(:e AS text[])) "
            "AS u(m, e) WHERE c.member_id = u.m AND c.event_id = u.e AND NOT EXISTS ("
            " SELECT 1 FROM deliveries d WHERE d.event_id = u.e AND d.member_id = u.m"
            " AND d.channel <> 'inbox' AND d.status IN ('sent', 'queued'))"
        ),
        {
            "m": [o.row["member_id"] for o in failed],
            "e": [o.row["event_id"] for o in failed],
        },
    )
