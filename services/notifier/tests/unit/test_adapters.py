"""Adapters without a network: settings from the environment, provider errors, contact data."""

from __future__ import annotations

import httpx
import pytest
from loyalty_notifier.adapters.member_directory import DirectoryUnavailable, MemberDirectory
from loyalty_notifier.adapters.providers import (
    ConsoleProvider,
    OutgoingMessage,
    ProviderError,
    SmtpProvider,
    WebhookProvider,
    build_providers,
)
from loyalty_notifier.config import NotifierSettings


def test_providers_come_from_json_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "NOTIFIER_PROVIDERS",
        '{"email": [{"kind": "smtp", "name": "ses", "host": "smtp.example.com", "port": 587,'
        ' "username": "u", "password": "p", "start_tls": true}],'
        ' "sms": [{"kind": "webhook", "name": "sms-a", "url": "https://a.example/send"},'
        ' {"kind": "webhook", "name": "sms-b", "url": "https://b.example/send"}]}',
    )
    providers = build_providers(NotifierSettings().providers)
    assert [type(p) for p in providers["email"]] == [SmtpProvider]
    assert [p.name for p in providers["sms"]] == ["sms-a", "sms-b"]
    assert all(isinstance(p, WebhookProvider) for p in providers["sms"])
    assert [p.name for p in providers["push"]] == ["console-push"]  # left out: the console


def test_the_default_is_a_console_provider_per_channel() -> None:
    providers = build_providers(NotifierSettings().providers)
    assert sorted(providers) == ["email", "push", "sms", "wechat"]
    assert all(isinstance(p[0], ConsoleProvider) for p in providers.values())


def test_member_service_url_and_key_default_from_platform_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOYALTY_PORT_BASE", "9000")
    monkeypatch.setenv("LOYALTY_API_KEYS", "pos=events:write;ops=members:read,admin")
    settings = NotifierSettings()
    assert settings.resolved_member_url() == "http://127.0.0.1:9001"
    assert settings.resolved_member_api_key() == "ops"


def test_provider_errors_never_carry_addresses() -> None:
    error = ProviderError("550 5.1.1 <ada@example.com>: rejected; sms to +86 138 0013 8000 failed")
    assert "ada@example.com" not in error.detail and "138" not in error.detail
    assert error.detail.startswith("550 5.1.1 <<redacted>>")


async def test_console_provider_logs_no_address_or_text(capsys: pytest.CaptureFixture[str]):
    from loyalty_shared.observability import configure_logging

    configure_logging("INFO")
    message = OutgoingMessage("d1", "m1", "order.shipped", "sms", "+8613800138000", None, "Hi Ada")
    await ConsoleProvider("console-sms").send(message)
    out = capsys.readouterr().out
    assert "notification_console" in out and "d1" in out
    assert "+8613800138000" not in out and "Ada" not in out


async def test_the_directory_caches_and_reports_outages() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path.endswith("/identities"):
            return httpx.Response(200, json={"items": [{"kind": "push_token", "value": "tok"}]})
        if "down" in request.url.path:
            return httpx.Response(502)
        return httpx.Response(
            200,
            json={"member_id": "m1", "phone": "+8613800138000", "email": None, "name": "Ada"},
        )

    directory = MemberDirectory(
        "http://member.test", "k", ttl=60, transport=httpx.MockTransport(handler)
    )
    found = await directory.contacts(["m1", "down"])
    contact = found["m1"]
    assert not isinstance(contact, Exception)
    assert contact.addresses == {"sms": "+8613800138000", "push": "tok"}
    assert isinstance(found["down"], DirectoryUnavailable)
    await directory.contacts(["m1"])
    assert calls.count("/v1/members/m1") == 1  # cached
    directory.forget("m1")
    await directory.contacts(["m1"])
    assert calls.count("/v1/members/m1") == 2
