"""Real providers against real servers: email over SMTP received by aiosmtpd; SMS through an
HTTP webhook that fails, with failover to the fallback gateway."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from email import message_from_bytes, policy
from typing import Any

import pytest_asyncio
from aiosmtpd.controller import Controller
from loyalty_notifier.adapters.providers import (
    OutgoingMessage,
    ProviderError,
    SmtpProvider,
    WebhookProvider,
)
from loyalty_notifier.config import SmtpProviderConfig, WebhookProviderConfig
from loyalty_notifier.testing import T0, Harness, event, new_member
from loyalty_shared.events.members import MemberTierChanged
from loyalty_shared.events.orders import OrderShipped
from loyalty_shared.kafka.broker import free_port


class Mailbox:
    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 OK"


@pytest_asyncio.fixture(scope="module")
async def smtp_server() -> AsyncIterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    await asyncio.to_thread(controller.start)
    yield mailbox, port
    await asyncio.to_thread(controller.stop)


class Gateway:
    """A tiny HTTP server that answers with the statuses it is told to, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.requests: list[dict[str, Any]] = []
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/send"

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {
            k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
        }
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append({"line": lines[0], "headers": headers, "json": json.loads(body)})
        status = self.statuses.pop(0) if self.statuses else 200
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}".encode()
        )
        await writer.drain()
        writer.close()


def tier_changed(member_id: str):
    return event(
        "member.tier_changed",
        MemberTierChanged(
            member_id=member_id,
            old_tier="bronze",
            new_tier="silver",
            reason="upgrade",
            points_multiplier=1.2,
            occurred_at=T0,
        ),
        member_id,
    )


async def test_email_goes_over_smtp_and_arrives(notifier: Harness, smtp_server):
    mailbox, port = smtp_server
    notifier.use(
        {
            "email": [
                SmtpProvider(
                    SmtpProviderConfig(
                        name="smtp-primary", host="127.0.0.1", port=port, sender="shop@loyalty.test"
                    )
                )
            ]
        }
    )
    member = notifier.members.add(
        new_member(), email="ada@example.com", phone=None, wechat=None, push=None, locale="en"
    )
    await notifier.deliver(tier_changed(member))
    await notifier.run_job("dispatch", T0)

    email = (await notifier.deliveries(member))[("member.tier_changed", "email")]
    assert (email["status"], email["provider"], email["attempts"]) == ("sent", "smtp-primary", 1)
    (envelope,) = [e for e in mailbox.envelopes if "ada@example.com" in e.rcpt_tos]
    assert envelope.mail_from == "shop@loyalty.test"
    received = message_from_bytes(envelope.content, policy=policy.default)
    assert received["Subject"] == "Your membership tier changed"
    assert received["X-Loyalty-Delivery"] == email["delivery_id"]
    text = received.get_content()
    assert "Hello Ada," in text and "You are now a silver member and earn 1.2x points" in text


async def test_an_smtp_server_that_is_down_is_retried_then_fails_over(
    notifier: Harness, smtp_server
):
    mailbox, port = smtp_server
    nobody_listens = free_port()
    down = SmtpProvider(
        SmtpProviderConfig(
            name="smtp-down", host="127.0.0.1", port=nobody_listens, timeout_seconds=2
        )
    )
    up = SmtpProvider(SmtpProviderConfig(name="smtp-fallback", host="127.0.0.1", port=port))
    notifier.use({"email": [down, up]})
    member = notifier.members.add(
        new_member(), email="bob@example.com", phone=None, wechat=None, push=None
    )
    await notifier.deliver(tier_changed(member))
    await notifier.run_job("dispatch", T0)
    email = (await notifier.deliveries(member))[("member.tier_changed", "email")]
    assert (email["status"], email["provider"], email["attempts"]) == ("queued", "smtp-down", 1)
    await notifier.run_job("dispatch", T0 + timedelta(seconds=1))
    email = (await notifier.deliveries(member))[("member.tier_changed", "email")]
    assert (email["status"], email["provider"], email["attempts"]) == ("sent", "smtp-fallback", 3)
    assert [e for e in mailbox.envelopes if "bob@example.com" in e.rcpt_tos]


async def test_sms_webhook_retries_then_fails_over_to_the_fallback_gateway(notifier: Harness):
    primary, fallback = Gateway([503, 500]), Gateway()
    primary_url, fallback_url = await primary.start(), await fallback.start()
    try:
        notifier.use(
            {
                "sms": [
                    WebhookProvider(
                        WebhookProviderConfig(
                            name="sms-primary",
                            url=primary_url,
                            headers={"Authorization": "Bearer gw-secret"},
                        )
                    ),
                    WebhookProvider(WebhookProviderConfig(name="sms-fallback", url=fallback_url)),
                ]
            }
        )
        member = notifier.members.add(new_member(), email=None, wechat=None, push=None)
        shipped = event(
            "order.shipped",
            OrderShipped(
                order_id="o-webhook",
                channel="online",
                external_id="EXT-77",
                member_id=member,
                occurred_at=T0,
            ),
            member,
        )
        await notifier.deliver(shipped)
        await notifier.run_job("dispatch", T0)  # 503: retry later
        await notifier.run_job("dispatch", T0 + timedelta(seconds=1))  # 500: hand over
        sms = (await notifier.deliveries(member))[("order.shipped", "sms")]
        assert (sms["status"], sms["provider"], sms["attempts"]) == ("sent", "sms-fallback", 3)
        assert len(primary.requests) == 2 and len(fallback.requests) == 1
        sent = fallback.requests[0]
        assert sent["line"] == "POST /send HTTP/1.1"
        assert sent["json"]["to"] == "+8613800138000" and sent["json"]["channel"] == "sms"
        assert "EXT-77" in sent["json"]["body"]
        assert sent["headers"]["idempotency-key"] == sms["delivery_id"]
        assert primary.requests[0]["headers"]["authorization"] == "Bearer gw-secret"
    finally:
        await primary.stop()
        await fallback.stop()


async def test_webhook_errors_are_classified():
    gateway = Gateway([400, 429])
    url = await gateway.start()
    provider = WebhookProvider(WebhookProviderConfig(name="push", url=url))
    message = OutgoingMessage("d1", "m1", "order.shipped", "push", "token", "t", "b")
    try:
        for permanent in (True, False):  # a 400 will not get better; a 429 may
            try:
                await provider.send(message)
            except ProviderError as exc:
                assert exc.permanent is permanent
            else:
                raise AssertionError("expected a ProviderError")
        await provider.send(message)  # then 200
    finally:
        await gateway.stop()
