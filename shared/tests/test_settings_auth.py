"""API-key parsing and authentication, and per-service settings from the environment."""

from __future__ import annotations

import pytest
from loyalty_shared.auth import ApiKeys, Principal, key_id, parse_api_keys
from loyalty_shared.errors import ProblemError
from loyalty_shared.settings import ALL_SCOPES, DEV_API_KEYS, ServiceSettings


def test_parse_api_keys_reads_keys_and_their_scopes():
    assert parse_api_keys("k=members:read,members:write;k2=admin") == {
        "k": frozenset({"members:read", "members:write"}),
        "k2": frozenset({"admin"}),
    }


def test_parse_api_keys_tolerates_spaces_and_empty_parts():
    assert parse_api_keys(" k = members:read , admin ;; k2=events:write; ") == {
        "k": frozenset({"members:read", "admin"}),
        "k2": frozenset({"events:write"}),
    }
    assert parse_api_keys("") == {}


def test_the_dev_key_has_every_scope():
    assert parse_api_keys(DEV_API_KEYS) == {"dev-key": frozenset(ALL_SCOPES)}


def test_parse_api_keys_rejects_an_unknown_scope():
    with pytest.raises(ValueError, match="superuser"):
        parse_api_keys("k=members:read,superuser")


def test_authenticate_a_known_bearer_key():
    keys = ApiKeys("k=members:read,members:write;k2=admin")

    principal = keys.authenticate("Bearer k")
    assert principal == Principal(
        key_id=key_id("k"), scopes=frozenset({"members:read", "members:write"})
    )
    assert keys.authenticate("bearer k2").scopes == frozenset({"admin"})
    # the key id is a short hash: it never shows the key itself
    assert principal.key_id != "k"
    assert len(principal.key_id) == 16


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer unknown",
        "Bearer k2x",
        "Basic k",
        "k",
    ],
)
def test_authenticate_refuses_a_missing_or_unknown_key(authorization):
    keys = ApiKeys("k=members:read;k2=admin")

    with pytest.raises(ProblemError) as caught:
        keys.authenticate(authorization)
    assert caught.value.status == 401
    assert caught.value.code == "unauthorized"


def test_no_configured_keys_means_nobody_is_let_in():
    with pytest.raises(ProblemError) as caught:
        ApiKeys("").authenticate("Bearer anything")
    assert caught.value.status == 401


def test_for_service_reads_the_services_own_database_url(monkeypatch):
    monkeypatch.setenv("POINTS_DATABASE_URL", "postgresql://points@db/points")
    monkeypatch.setenv("MEMBER_DATABASE_URL", "postgresql://member@db/member")
    monkeypatch.delenv("LOYALTY_PORT_BASE", raising=False)

    settings = ServiceSettings.for_service("points")
    assert settings.database_url == "postgresql://points@db/points"
    assert settings.service == "points"
    assert settings.port == 8002


def test_for_service_port_follows_the_port_base(monkeypatch):
    monkeypatch.setenv("LOYALTY_PORT_BASE", "9100")
    monkeypatch.delenv("POINTS_DATABASE_URL", raising=False)
    monkeypatch.delenv("LOYALTY_DATABASE_URL", raising=False)

    settings = ServiceSettings.for_service("points")
    assert settings.port_base == 9100
    assert settings.port == 9102
    assert settings.database_url is None
    assert ServiceSettings.for_service("points", port_base=7000).port == 7002


def test_explicit_overrides_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("POINTS_DATABASE_URL", "postgresql://points@db/points")

    settings = ServiceSettings.for_service("points", database_url="postgresql://other@db/x")
    assert settings.database_url == "postgresql://other@db/x"


SECRET = "s3cr3t-key-0123456789"


def test_api_keys_hold_no_key_in_plaintext():
    keys = ApiKeys(f"{SECRET}=members:read;other-key=admin")

    dumped = repr(keys) + repr(vars(keys)) + str(keys)
    assert SECRET not in dumped and "other-key" not in dumped
    for stored in keys._keys:
        assert SECRET not in repr(vars(stored)) and SECRET.encode() not in stored.digest
    assert keys.authenticate(f"Bearer {SECRET}") == Principal(
        key_id=key_id(SECRET), scopes=frozenset({"members:read"})
    )


@pytest.mark.parametrize(
    "presented",
    [
        "s3cr3t-key-012345678X",  # same length, last character wrong
        "X3cr3t-key-0123456789",  # same length, first character wrong
        "s3cr3t-key-",  # a prefix
        f"{SECRET}0",  # the key and more
        SECRET.upper(),
    ],
)
def test_a_near_miss_is_not_the_key(presented):
    keys = ApiKeys(f"{SECRET}=members:read")

    with pytest.raises(ProblemError) as caught:
        keys.authenticate(f"Bearer {presented}")
    assert caught.value.status == 401 and caught.value.code == "unauthorized"


def test_every_stored_key_is_compared_whichever_matches(monkeypatch):
    import hmac

    from loyalty_shared import auth

    compared: list[bytes] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(a)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    keys = ApiKeys("first=admin;second=members:read;third=events:write")
    assert keys.authenticate("Bearer first").scopes == frozenset({"admin"})
    assert len(compared) == 3  # no early exit on the first key's match
    compared.clear()
    with pytest.raises(ProblemError):
        keys.authenticate("Bearer fourth")
    assert len(compared) == 3


def test_a_key_may_have_no_scope_at_all():
    assert parse_api_keys("noscope=;k=admin") == {
        "noscope": frozenset(),
        "k": frozenset({"admin"}),
    }
    assert ApiKeys("noscope=").authenticate("Bearer noscope").scopes == frozenset()
